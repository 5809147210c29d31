"""The recurrent state of an RWKV-7 model for a batch of independent sequences.

Per layer: the last input of time-mix (``att_x``), the WKV matrices (``wkv``,
always float32) and the last input of channel-mix (``ffn_x``). Its size does not
depend on how many tokens have been read.

For code written against the official ``rwkv`` package, a State also behaves like
its flat list: ``state[3*i+0]`` is layer i's att_x, ``state[3*i+1]`` its WKV
matrices [H, N, N] and ``state[3*i+2]`` its ffn_x (views into batch row 0 when the
batch size is 1, else [B, ...] views). Writes through these views change the state.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .models.config import RWKV7Config


@dataclass
class State:
    """att_x, ffn_x: [L, B, C] activation dtype; wkv: [L, B, H, N, N] float32, layout [.., value, key]."""

    att_x: torch.Tensor
    wkv: torch.Tensor
    ffn_x: torch.Tensor

    @classmethod
    def zeros(cls, cfg: RWKV7Config, batch: int = 1, *, device="cpu", dtype=torch.float32) -> "State":
        L, C, H, N = cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.head_size
        return cls(att_x=torch.zeros(L, batch, C, device=device, dtype=dtype),
                   wkv=torch.zeros(L, batch, H, N, N, device=device, dtype=torch.float32),
                   ffn_x=torch.zeros(L, batch, C, device=device, dtype=dtype))

    @property
    def batch_size(self) -> int:
        return self.att_x.shape[1]

    @property
    def n_layer(self) -> int:
        return self.att_x.shape[0]

    @property
    def device(self) -> torch.device:
        return self.wkv.device

    @property
    def dtype(self) -> torch.dtype:
        """The activation dtype (the WKV part is always float32)."""
        return self.att_x.dtype

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(att_x, wkv, ffn_x), each with the batch on axis 1."""
        return self.att_x, self.wkv, self.ffn_x

    def clone(self) -> "State":
        return State(self.att_x.clone(), self.wkv.clone(), self.ffn_x.clone())

    def to(self, device=None, dtype: torch.dtype | None = None) -> "State":
        """A copy on ``device`` with token-shift vectors in ``dtype``; WKV stays float32."""
        return State(self.att_x.to(device=device, dtype=dtype, copy=True),
                     self.wkv.to(device=device, dtype=torch.float32, copy=True),
                     self.ffn_x.to(device=device, dtype=dtype, copy=True))

    def select(self, rows) -> "State":
        """A new State holding batch rows ``rows`` (list or tensor of indices), copied."""
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.device)
        return State(self.att_x[:, idx].clone(), self.wkv[:, idx].clone(), self.ffn_x[:, idx].clone())

    @staticmethod
    def cat(states: list["State"]) -> "State":
        """Stack several states along the batch axis (copies)."""
        return State(torch.cat([s.att_x for s in states], 1), torch.cat([s.wkv for s in states], 1),
                     torch.cat([s.ffn_x for s in states], 1))

    def copy_(self, other: "State") -> "State":
        self.att_x.copy_(other.att_x)
        self.wkv.copy_(other.wkv)
        self.ffn_x.copy_(other.ffn_x)
        return self

    def _part(self, j: int) -> torch.Tensor:
        if not -3 * self.n_layer <= j < 3 * self.n_layer:
            raise IndexError(f"state index {j} out of range for {self.n_layer} layers (0..{3 * self.n_layer - 1})")
        layer, kind = divmod(j % (3 * self.n_layer), 3)
        t = self.tensors()[kind][layer]
        return t[0] if self.batch_size == 1 else t

    def __len__(self) -> int:
        return 3 * self.n_layer

    def __getitem__(self, j: int) -> torch.Tensor:
        return self._part(j)

    def __setitem__(self, j: int, value: torch.Tensor) -> None:
        self._part(j).copy_(value)

    def __iter__(self):
        return (self._part(j) for j in range(len(self)))

    def as_list(self) -> list[torch.Tensor]:
        """The official package's flat list (copies), e.g. to hand a state back to it."""
        return [t.clone() for t in self]

    @classmethod
    def from_list(cls, parts: list[torch.Tensor], cfg: RWKV7Config, *, device="cpu", dtype=torch.float32) -> "State":
        """Build from the official package's flat list of 3*L tensors (batch 1)."""
        from .errors import StateError

        if len(parts) != 3 * cfg.n_layer:
            raise StateError("state list has the wrong length", expected=f"{3 * cfg.n_layer} tensors (3 per layer)",
                             got=str(len(parts)), fix="pass a state made for this model, or None")
        st = cls.zeros(cfg, 1, device=device, dtype=dtype)
        for j, t in enumerate(parts):
            dst = st._part(j)
            if tuple(t.shape) != tuple(dst.shape):
                raise StateError(f"state tensor {j} has the wrong shape", expected=str(tuple(dst.shape)),
                                 got=str(tuple(t.shape)), fix="pass a state made for this model, or None")
            dst.copy_(t)
        return st
