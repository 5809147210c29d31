"""The backend choice every op folder's ``resolve`` makes (one place, one set of messages)."""
from __future__ import annotations

import logging
from typing import Callable, TypeVar

from ..errors import BackendError

log = logging.getLogger(__name__)
T = TypeVar("T")


def choose(what: str, device: str, backend: str, reference: T, load_triton: Callable[[], T]) -> T:
    """``reference`` for backend reference/torch, or auto off CUDA; ``load_triton()`` for triton, or auto
    on CUDA. An explicit "triton" that cannot be imported raises BackendError with the install hint;
    auto falls back to the reference with a warning. ``what`` names the op in messages."""
    if backend in ("reference", "torch") or (backend == "auto" and not device.startswith("cuda")):
        return reference
    if backend in ("triton", "auto"):
        try:
            return load_triton()
        except ImportError as e:
            if backend == "triton":
                raise BackendError(f"the triton backend for {what} is not available",
                                   got=str(e), fix="pip install 'rwkvrt[gpu]' on a CUDA machine") from None
            log.warning("triton is not importable (%s): %s uses the plain-torch reference", e, what)
            return reference
    raise BackendError(f"unknown {what} backend", expected="auto, reference, torch or triton",
                       got=repr(backend), fix="pick one of those")
