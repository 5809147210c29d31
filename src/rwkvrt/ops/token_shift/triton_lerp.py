"""Token shift in one Triton launch: every lerp output of a token from one read of x.

Same functions and convention as ``rwkvrt.ops.token_shift`` (see its docstring).
One program per (token row, block of channels) loads x[b, t], the shifted row
(x[b, t-1] or x_prev[b]) and the M mix rows, and writes the M outputs; the
official code spends 1 + 2M element-wise launches on the same work.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def lerp_fwd_kernel(x_ptr, prev_ptr, mix_ptr, out_ptr,
                    T, C, BTC,
                    stride_xb, stride_xt, stride_pb, stride_m,
                    M: tl.constexpr, BLOCK_C: tl.constexpr):
    row = tl.program_id(0)
    cb = tl.program_id(1)
    b = row // T
    t = row % T
    offs = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = offs < C
    x_row = x_ptr + b.to(tl.int64) * stride_xb + t.to(tl.int64) * stride_xt
    x = tl.load(x_row + offs, mask=cmask, other=0.0).to(tl.float32)
    # shifted = x[b, t-1] for t > 0, else the state's x_prev[b] (a uniform branch)
    if t > 0:
        shifted = tl.load(x_row - stride_xt + offs, mask=cmask, other=0.0).to(tl.float32)
    else:
        shifted = tl.load(prev_ptr + b.to(tl.int64) * stride_pb + offs, mask=cmask,
                          other=0.0).to(tl.float32)
    xx = shifted - x
    out_row = out_ptr + row.to(tl.int64) * C
    for i in tl.static_range(M):
        mix = tl.load(mix_ptr + i * stride_m + offs, mask=cmask, other=0.0).to(tl.float32)
        y = x + xx * mix
        tl.store(out_row + i * BTC + offs, y.to(out_ptr.dtype.element_ty), mask=cmask)


def _lerp(x: torch.Tensor, x_prev: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
    """x [B,T,C], x_prev [B,C], mix [M,C] -> new [M,B,T,C] in x's dtype."""
    B, T, C = x.shape
    M = mix.shape[0]
    assert x_prev.shape == (B, C) and mix.shape == (M, C), "shape mismatch"
    if x.stride(-1) != 1:
        x = x.contiguous()
    if x_prev.stride(-1) != 1:
        x_prev = x_prev.contiguous()
    if mix.stride(-1) != 1:
        mix = mix.contiguous()
    out = torch.empty((M, B, T, C), device=x.device, dtype=x.dtype)
    if B * T == 0:
        return out
    BLOCK_C = min(triton.next_power_of_2(C), 512)
    grid = (B * T, triton.cdiv(C, BLOCK_C))
    lerp_fwd_kernel[grid](x, x_prev, mix, out, T, C, B * T * C,
                          x.stride(0), x.stride(1), x_prev.stride(0), mix.stride(0),
                          M=M, BLOCK_C=BLOCK_C, num_warps=4)
    return out


def lerp6_triton(x: torch.Tensor, x_prev: torch.Tensor, mix: torch.Tensor):
    """xs [6,B,T,C] (new), new_prev [B,C] (a view of x); see ``rwkvrt.ops.token_shift``."""
    return _lerp(x, x_prev, mix), x[:, -1]


def lerp1_triton(x: torch.Tensor, x_prev: torch.Tensor, mix: torch.Tensor):
    """xk [B,T,C] (new), new_prev [B,C] (a view of x); see ``rwkvrt.ops.token_shift``."""
    return _lerp(x, x_prev, mix.reshape(1, -1))[0], x[:, -1]
