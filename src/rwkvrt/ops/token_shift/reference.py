"""Plain-torch token shift: the spec the Triton kernel is tested against."""
from __future__ import annotations

import torch


def _lerp(x: torch.Tensor, x_prev: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
    """x [B,T,C], x_prev [B,C], mix [M,C] -> [M,B,T,C] in x's dtype (fp32 math)."""
    xf = x.float()
    shifted = torch.cat([x_prev.float()[:, None, :], xf[:, :-1]], dim=1)
    out = xf[None] + (shifted - xf)[None] * mix.float()[:, None, None, :]
    return out.to(x.dtype)


def lerp6_reference(x: torch.Tensor, x_prev: torch.Tensor, mix: torch.Tensor):
    """See ``rwkvrt.ops.token_shift``: xs [6,B,T,C], new_prev [B,C] (a view of x)."""
    assert mix.dim() == 2 and mix.shape[1] == x.shape[-1], "mix must be [M, C]"
    return _lerp(x, x_prev, mix), x[:, -1]


def lerp1_reference(x: torch.Tensor, x_prev: torch.Tensor, mix: torch.Tensor):
    """See ``rwkvrt.ops.token_shift``: xk [B,T,C], new_prev [B,C] (a view of x)."""
    return _lerp(x, x_prev, mix.reshape(1, -1))[0], x[:, -1]
