"""Slot ids of a state pool: which rows are in use."""
from __future__ import annotations

from ..errors import StateError


class SlotPool:
    """Hands out integer slot ids 0..capacity-1; lowest free id first (keeps batches compact)."""

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self._free = set(range(self.capacity))

    def alloc(self) -> int:
        if not self._free:
            raise StateError("no free state slot", expected=f"at most {self.capacity} live sequences",
                             got=f"{self.capacity} in use", fix="free a finished sequence's slot or raise max_batch")
        s = min(self._free)
        self._free.remove(s)
        return s

    def free(self, slot: int) -> None:
        self.check(slot)
        self._free.add(slot)

    def check(self, slot: int) -> None:
        """Raise StateError unless ``slot`` is an allocated id."""
        if not isinstance(slot, int) or not 0 <= slot < self.capacity or slot in self._free:
            raise StateError("not an allocated state slot",
                             expected=f"an id returned by alloc() (0..{self.capacity - 1})",
                             got=repr(slot), fix="alloc() a slot first and do not use it after free()")

    @property
    def in_use(self) -> int:
        return self.capacity - len(self._free)
