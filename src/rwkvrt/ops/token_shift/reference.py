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


def add_ln_lerp_reference(x, residual, weight, bias, x_prev, mix, *, eps: float = 1e-5, slots=None, pdl=None):
    """See ``rwkvrt.ops.token_shift``: (xs [M,B,T,C], new_residual [B,T,C]); x_prev rows updated in place."""
    from ..norm.reference import add_layer_norm_reference, layer_norm_reference

    B = residual.shape[0]
    if x is None:
        new_res = residual
        xn = layer_norm_reference(residual, weight, bias, eps)
    else:
        xn, new_res = add_layer_norm_reference(x, residual, weight, bias, eps)
    rows = slots if slots is not None else torch.arange(B, device=x_prev.device)
    prev = x_prev.index_select(0, rows).to(xn.dtype)
    xs = _lerp(xn, prev, mix.reshape(-1, xn.shape[-1]))
    x_prev.index_copy_(0, rows, xn[:, -1].to(x_prev.dtype))
    return xs, new_res
