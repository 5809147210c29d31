"""A decode step's whole FFN in one launch (see ``rwkvrt.ops.decode``: ``ffn_fused``).

    h = relu(lerp(LayerNorm(res + x)) @ W_key.T) ** 2 ;  out = h @ W_value.T

Program p owns R consecutive hidden rows [p*R, (p+1)*R): it makes the lerped input with
ln_gemv's prologue (``_ln_rows`` / ``_ln_lerp_tile``: every program computes the row
statistics itself), multiplies its R rows of W_key (K-tiles, tensor cores with the batch rows
padded to 16), squares the relus (rounded to the activation dtype, as the two-launch path
stores h), and multiplies the same R rows of W_value^T ([F, C], the layout ``ffn_sparse``
keeps): rows whose h is zero for every batch row are masked off, so their bytes are never
read. That removes the key -> value launch boundary and the h round trip.

The [1, C] result is a sum over programs, made deterministic without any program summing the
others' partials (session 7 measured that design, a last arrival per 128-column tile summing P
fp32 partials, at ~0.28 us per program of serial tail: 437 tok/s at 1.5B against 691 for the
two-launch FFN). Each program turns its fp32 partial into fixed point (``round(p * 2**32)``,
int64; exact for |p| >= 2**-8, 2**-33 off below) and adds it into one int64 accumulator row
with relaxed atomics (no return value: fire-and-forget reductions at L2). Integer addition is
associative, so the total is the same bits whatever order the programs land in. Then a CTA
barrier and one acq_rel ticket per program; the program that draws P - 1 swaps the
accumulator back to zero (``atomic_xchg``), converts it (one rounding, int64 -> fp32) and
writes the output, and puts the ticket back to 0. Nobody waits on anybody: no deadlock.
Range: |partial| and |sum| below 2**31 (an FFN output beyond that is not a model's).

Scratch (``FfnScratch``): the int64 accumulator row [C] (zero between launches) and the ticket.

Imports triton: only import this module on a machine that has it.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _pdl
from .._pdl import prefetch_rows, wait_prev
from .triton_gemv import _ln_lerp_tile, _ln_rows, ln_prologue_args

BLOCK_K = 64        # W_key columns per K-tile
BLOCK_C = 128       # W_value^T columns per value tile (61 registers at 8 warps, 64 rows; sm_90 ptxas)
NUM_WARPS = 8
STAGES = 3          # K-tiles in flight in the key loop
VSTAGES = 2         # value tiles in flight
ROWS: int | None = None   # hidden rows per program; None: ``plan``
FIXED_ONE: tl.constexpr = tl.constexpr(4294967296.0)   # 2**32: the fixed-point scale of the partials


@triton.jit
def ffn_fused_kernel(x_ptr, res_ptr, newres_ptr, lnw_ptr, lnb_ptr, prev_ptr, slots_ptr, mix_ptr, xn_ptr,
                     psrc_ptr, pdst_ptr, pslots_ptr, wk_ptr, wvt_ptr, acc_ptr, cnt_ptr, out_ptr,
                     sxn, spb, spd, eps,
                     C: tl.constexpr, C_PAD: tl.constexpr, F: tl.constexpr, R: tl.constexpr,
                     BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
                     IEEE: tl.constexpr, STAGES: tl.constexpr, VSTAGES: tl.constexpr, HAS_PENDING: tl.constexpr,
                     USE_PDL: tl.constexpr, PF_LINES: tl.constexpr, LINE_ELEMS: tl.constexpr):
    """Grid (F // R,), one batch row. See the module docstring."""
    pid = tl.program_id(0)
    P = tl.num_programs(0)
    rows = pid * R + tl.arange(0, R)
    if USE_PDL and PF_LINES > 0:
        prefetch_rows(wk_ptr, rows, C, F, PF_LINES, LINE_ELEMS)
    wait_prev(USE_PDL)
    ty = x_ptr.dtype.element_ty
    m = tl.arange(0, 1)
    mmask = m < 1
    mm = mmask[:, None]
    slot, mean, rstd = _ln_rows(x_ptr, res_ptr, newres_ptr, lnw_ptr, lnb_ptr, slots_ptr, xn_ptr, psrc_ptr, pdst_ptr,
                                pslots_ptr, m, mmask, 0, 0, 0, sxn, 0, spd, eps, pid == 0, C, C_PAD, HAS_PENDING)
    kk = tl.arange(0, BLOCK_K)
    wk_ptrs = wk_ptr + rows.to(tl.int64)[:, None] * C + kk[None, :]
    acc = tl.zeros([1, R, BLOCK_K], dtype=tl.float32)
    for k0 in tl.range(0, C, BLOCK_K, num_stages=STAGES):
        w = tl.load(wk_ptrs)
        xin = _ln_lerp_tile(k0 + kk, m, mm, slot, mean, rstd, x_ptr, res_ptr, newres_ptr, lnw_ptr, lnb_ptr,
                            prev_ptr, mix_ptr, 0, 0, spb)
        acc += w.to(tl.float32)[None, :, :] * xin[:, None, :]
        wk_ptrs += BLOCK_K
    pos = tl.maximum(tl.sum(acc, axis=2), 0.0)          # [1, R]
    h = (pos * pos).to(ty)                               # as the key GEMV stores h
    need = tl.max((h != 0).to(tl.int32), axis=0) > 0     # [R]
    # the row padded to a tensor-core tile: [16, R], rows 1.. zero
    h16 = tl.where((tl.arange(0, 16) == 0)[:, None], tl.broadcast_to(h, [16, R]), 0.0).to(ty)
    NT: tl.constexpr = C // BLOCK_C
    cb = tl.arange(0, BLOCK_C)
    for j in tl.range(0, NT, num_stages=VSTAGES):
        t = (pid + j) % NT                               # rotated: programs spread over the addresses
        cols = t * BLOCK_C + cb
        wv = tl.load(wvt_ptr + rows.to(tl.int64)[:, None] * C + cols[None, :], mask=need[:, None], other=0.0)
        if IEEE:
            part = tl.dot(h16, wv, input_precision="ieee")
        else:
            part = tl.dot(h16, wv)                       # [16, BLOCK_C] fp32, row 0 is the batch row
        part = tl.sum(tl.where((tl.arange(0, 16) == 0)[:, None], part, 0.0), axis=0)
        fixed = tl.floor(part * FIXED_ONE + 0.5).to(tl.int64)
        tl.atomic_add(acc_ptr + cols, fixed, sem="relaxed", scope="gpu")
    # every thread's adds are issued before the one release below
    tl.debug_barrier()
    if tl.atomic_add(cnt_ptr, 1, sem="acq_rel", scope="gpu") == P - 1:
        cc = tl.arange(0, C_PAD)
        tot = tl.atomic_xchg(acc_ptr + cc, tl.zeros([C_PAD], dtype=tl.int64), mask=cc < C, sem="relaxed", scope="gpu")
        tl.store(out_ptr + cc, (tot.to(tl.float32) * (1.0 / FIXED_ONE)).to(out_ptr.dtype.element_ty), mask=cc < C)
        tl.atomic_xchg(cnt_ptr, 0, sem="relaxed", scope="gpu")   # the next launch starts at 0


def plan(F: int, rows: int | None = None) -> int:
    """Hidden rows per program: ``rows``, else ROWS, else F / 128 (about one program per SM
    of an H100) as a power of 2 in [16, 64]."""
    r = rows or ROWS
    if r is None:
        r = 16
        while r < 64 and F // (2 * r) >= 128:
            r *= 2
    if F % r or r < 16 or r & (r - 1):
        raise ValueError(f"ffn_fused needs hidden rows per program (={r}) a power of 2 >= 16 dividing F={F}")
    return r


class FfnScratch:
    """The int64 fixed-point accumulator row [C] and the ticket (both zero between launches), for
    W_value^T [F, C] at ``plan(F, rows)`` hidden rows per program."""

    def __init__(self, F: int, C: int, device, rows: int | None = None):
        if C % BLOCK_C or C % BLOCK_K:
            raise ValueError(f"ffn_fused needs n_embd (={C}) to be a multiple of {max(BLOCK_C, BLOCK_K)}")
        self.F, self.C, self.rows = F, C, plan(F, rows)
        self.acc = torch.zeros(C, device=device, dtype=torch.int64)
        self.count = torch.zeros(1, device=device, dtype=torch.int32)


def ffn_fused_triton(x, res, ln_w, ln_b, x_prev, slots, mix, Wk, WvT, out, new_res, xn_out, pending, scratch, *,
                     eps: float = 1e-5, pdl: bool | None = None):
    """See ``rwkvrt.ops.decode``: (out, new_res, xn_out); one batch row."""
    M, C = x.shape
    F = Wk.shape[0]
    assert M == 1, "ffn_fused takes one batch row (the batch-1 decode step)"
    assert Wk.shape == (F, C) and WvT.shape == (F, C) and Wk.is_contiguous() and WvT.is_contiguous()
    assert out.shape == (M, C) and mix.numel() == C and x.dtype == Wk.dtype == WvT.dtype, "shape / dtype mismatch"
    assert (scratch.F, scratch.C) == (F, C) and scratch.acc.device == Wk.device, "scratch made for another shape"
    psrc, pdst, pslots = ln_prologue_args(x, res, ln_w, ln_b, x_prev, slots, mix, out, new_res, xn_out, pending)
    R = scratch.rows
    P = F // R
    pdl = _pdl.resolve(pdl, Wk.device, "gemv")
    ffn_fused_kernel[(P,)](
        x, res, new_res, ln_w, ln_b, x_prev, slots, mix, xn_out, psrc, pdst, pslots, Wk, WvT, scratch.acc,
        scratch.count, out, xn_out.stride(0), x_prev.stride(0), pdst.stride(0), float(eps),
        C=C, C_PAD=triton.next_power_of_2(C), F=F, R=R, BLOCK_K=BLOCK_K, BLOCK_C=BLOCK_C,
        IEEE=x.dtype == torch.float32, STAGES=STAGES, VSTAGES=VSTAGES,
        HAS_PENDING=pending is not None, USE_PDL=pdl,
        PF_LINES=_pdl.prefetch_lines(F, C * Wk.element_size()), LINE_ELEMS=_pdl.L2_LINE // Wk.element_size(),
        num_warps=NUM_WARPS, launch_pdl=pdl)
    return out, new_res, xn_out
