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

from .. import _pdl
from .._pdl import wait_prev

# channels stored per program of add_ln_lerp when a call has few rows (decode); untuned
DECODE_SLICE = 512


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


@triton.jit
def _add_ln_row(x_ptr, res_ptr, w, b, newres_ptr, row_x, row_r, offs, mask, smask, C, eps,
                HAS_ADD: tl.constexpr, STORE: tl.constexpr, CM: tl.constexpr):
    """LayerNorm of one row of (x + residual) as stored in residual's dtype; fp32 result. CM: the
    loads' cache modifier (".cg" where another program of the same launch wrote x / residual)."""
    h = tl.load(res_ptr + row_r + offs, mask=mask, other=0.0, cache_modifier=CM).to(tl.float32)
    if HAS_ADD:
        h += tl.load(x_ptr + row_x + offs, mask=mask, other=0.0, cache_modifier=CM).to(tl.float32)
        h_st = h.to(newres_ptr.dtype.element_ty)
        if STORE:
            tl.store(newres_ptr + row_r + offs, h_st, mask=smask)
        h = h_st.to(tl.float32)
    mean = tl.sum(h, axis=0) / C
    d = tl.where(mask, h - mean, 0.0)
    var = tl.sum(d * d, axis=0) / C
    return d * (1.0 / tl.sqrt(var + eps)) * w + b


@triton.jit
def add_ln_lerp_fwd_kernel(x_ptr, res_ptr, w_ptr, b_ptr, prev_ptr, slots_ptr, mix_ptr, out_ptr,
                           newres_ptr, T, C, BTC, stride_xb, stride_xt, stride_rb, stride_rt,
                           stride_pb, stride_m, eps,
                           HAS_ADD: tl.constexpr, HAS_SLOTS: tl.constexpr, M: tl.constexpr,
                           BLOCK_C: tl.constexpr, USE_PDL: tl.constexpr = False,
                           SLICE: tl.constexpr = 16384):
    """Grid (B*T, cdiv(C, SLICE)): one token row, channels [SLICE*pid1, SLICE*(pid1+1)) stored. Row t recomputes row t-1's norm for its shift (no cross-
    program dependency); only row t = 0 touches x_prev: it reads the old value and then writes
    the norm of row T-1, so the in-place state update has no race. USE_PDL: launched early
    behind the previous kernel (``rwkvrt.ops._pdl``); waits for it before any access."""
    wait_prev(USE_PDL)
    row = tl.program_id(0)
    b = (row // T).to(tl.int64)
    t = row % T
    offs = tl.arange(0, BLOCK_C)
    mask = offs < C
    # this program stores channels [lo, lo + SLICE) only (stats always use the whole row)
    lo = tl.program_id(1) * SLICE
    smask = mask & (offs >= lo) & (offs < lo + SLICE)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    bb = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    ty = out_ptr.dtype.element_ty
    row_x = b * stride_xb + t * stride_xt
    row_r = b * stride_rb + t * stride_rt
    # the normed input, rounded to the activation dtype as the unfused ops would store it
    xn = _add_ln_row(x_ptr, res_ptr, w, bb, newres_ptr, row_x, row_r, offs, mask, smask, C, eps,
                     HAS_ADD, True, "").to(ty).to(tl.float32)
    if HAS_SLOTS:
        slot = tl.load(slots_ptr + b).to(tl.int64)
    else:
        slot = b
    if t > 0:
        shifted = _add_ln_row(x_ptr, res_ptr, w, bb, newres_ptr, row_x - stride_xt, row_r - stride_rt,
                              offs, mask, smask, C, eps, HAS_ADD, False, "").to(ty).to(tl.float32)
    else:
        # only this program's slice of x_prev is read and then written: no race between programs
        shifted = tl.load(prev_ptr + slot * stride_pb + offs, mask=smask, other=0.0).to(ty).to(tl.float32)
        last = xn
        if T > 1:
            last = _add_ln_row(x_ptr, res_ptr, w, bb, newres_ptr, row_x + (T - 1) * stride_xt,
                               row_r + (T - 1) * stride_rt, offs, mask, smask, C, eps, HAS_ADD, False, "")
            last = last.to(ty).to(tl.float32)
        tl.store(prev_ptr + slot * stride_pb + offs, last.to(prev_ptr.dtype.element_ty), mask=smask)
    xx = shifted - xn
    out_row = out_ptr + row.to(tl.int64) * C
    for i in tl.static_range(M):
        mix = tl.load(mix_ptr + i * stride_m + offs, mask=smask, other=0.0).to(tl.float32)
        tl.store(out_row + i * BTC + offs, (xn + xx * mix).to(ty), mask=smask)


def add_ln_lerp_triton(x, residual, weight, bias, x_prev, mix, *, eps: float = 1e-5, slots=None, pdl=None):
    """(xs [M,B,T,C] new, new_residual [B,T,C]); x_prev rows updated in place. See the package doc."""
    B, T, C = residual.shape
    mix = mix.reshape(-1, C)
    M = mix.shape[0]
    act = residual.dtype if x is None else x.dtype
    units = [t if t.stride(-1) == 1 else t.contiguous() for t in (residual, mix)]
    residual, mix = units
    assert x_prev.stride(-1) == 1 and x_prev.dim() == 2, "x_prev must be a [S, C] pool, unit stride along C"
    out = torch.empty((M, B, T, C), device=residual.device, dtype=act)
    if x is None:
        x_in, new_res = residual, residual
    else:
        assert x.shape == residual.shape, "x and residual must have the same shape"
        x_in = x if x.stride(-1) == 1 else x.contiguous()
        new_res = torch.empty((B, T, C), device=residual.device, dtype=residual.dtype)
    if B * T == 0:
        return out, new_res
    # new_res is written with residual's strides: give it the same layout when it is new
    if x is not None and residual.stride() != new_res.stride():
        residual = residual.contiguous()
    BLOCK_C = triton.next_power_of_2(C)
    assert BLOCK_C <= 16384, "rows longer than 16384 channels are not supported"
    num_warps = 4 if BLOCK_C <= 1024 else (8 if BLOCK_C <= 4096 else 16)
    if slots is not None:
        slots = slots.to(device=residual.device, dtype=torch.int64)
    pdl = _pdl.resolve(pdl, residual.device, "ln")
    # few rows (decode): split each row's stores over several programs (each recomputes the
    # row statistics from L2) so one SM does not serialise the whole row's output
    slice_c = BLOCK_C if B * T >= 64 else min(BLOCK_C, DECODE_SLICE)
    add_ln_lerp_fwd_kernel[(B * T, triton.cdiv(C, slice_c))](
        x_in, residual, weight.contiguous(), bias.contiguous(), x_prev,
        slots if slots is not None else x_prev, mix, out, new_res,
        T, C, B * T * C, x_in.stride(0), x_in.stride(1), residual.stride(0), residual.stride(1),
        x_prev.stride(0), mix.stride(0), float(eps),
        HAS_ADD=x is not None, HAS_SLOTS=slots is not None, M=M, BLOCK_C=BLOCK_C, num_warps=num_warps,
        USE_PDL=pdl, SLICE=slice_c, launch_pdl=pdl)
    return out, new_res
