"""LayerNorm and residual-add + LayerNorm in Triton: one program per row, one launch.

Same functions and convention as ``rwkvrt.ops.norm`` (see its docstring). A row
(C <= 16384 channels) fits in registers, so the row is read once, the mean and
the variance come from two passes over registers (no E[x^2]-E[x]^2 cancellation),
and the outputs are written once.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def add_layer_norm_fwd_kernel(x_ptr, res_ptr, w_ptr, b_ptr, out_ptr, newres_ptr,
                              C, stride_x, stride_r, eps,
                              HAS_RESIDUAL: tl.constexpr, BLOCK_C: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_C)
    mask = offs < C
    h = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        h += tl.load(res_ptr + row * stride_r + offs, mask=mask, other=0.0).to(tl.float32)
        # round to the stored dtype first: normed must equal layer_norm(new_residual)
        h_st = h.to(newres_ptr.dtype.element_ty)
        tl.store(newres_ptr + row * C + offs, h_st, mask=mask)
        h = h_st.to(tl.float32)
    mean = tl.sum(h, axis=0) / C
    d = tl.where(mask, h - mean, 0.0)
    var = tl.sum(d * d, axis=0) / C
    rstd = 1.0 / tl.sqrt(var + eps)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = d * rstd * w + b
    tl.store(out_ptr + row * C + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


def _rows(t: torch.Tensor, C: int) -> torch.Tensor:
    """[..., C] -> [R, C] with unit stride along C (a view when possible)."""
    t2 = t.reshape(-1, C)
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def _launch(x, residual, weight, bias, eps):
    C = x.shape[-1]
    x2 = _rows(x, C)
    R = x2.shape[0]
    out = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    if residual is not None:
        assert residual.shape == x.shape, "residual must have x's shape"
        r2 = _rows(residual, C)
        new_res = torch.empty(x.shape, device=x.device, dtype=residual.dtype)
    else:
        r2 = new_res = x2
    if R == 0:
        return out, new_res
    BLOCK_C = triton.next_power_of_2(C)
    assert BLOCK_C <= 16384, "rows longer than 16384 channels are not supported"
    num_warps = 4 if BLOCK_C <= 1024 else (8 if BLOCK_C <= 4096 else 16)
    add_layer_norm_fwd_kernel[(R,)](x2, r2, weight.contiguous(), bias.contiguous(), out, new_res,
                                    C, x2.stride(0), r2.stride(0), float(eps),
                                    HAS_RESIDUAL=residual is not None, BLOCK_C=BLOCK_C,
                                    num_warps=num_warps)
    return out, new_res


def layer_norm_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                      eps: float = 1e-5) -> torch.Tensor:
    """See ``rwkvrt.ops.norm``: normed [..., C] in x's dtype (new tensor)."""
    return _launch(x, None, weight, bias, eps)[0]


def add_layer_norm_triton(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                          bias: torch.Tensor, eps: float = 1e-5):
    """See ``rwkvrt.ops.norm``: (normed in x's dtype, new_residual in residual's dtype), both new."""
    return _launch(x, residual, weight, bias, eps)
