"""Grouped matrix-vector products for decode in Triton (see ``rwkvrt.ops.decode``).

One program owns BLOCK_N consecutive rows of W (all of K) and every batch row: it streams
its [BLOCK_N, K] slab of W once, in [BLOCK_N, BLOCK_K] tiles, and multiplies each tile with
the M (<= MAX_M) input vectors, accumulating [M, BLOCK_N, BLOCK_K] partial products in fp32
and reducing once at the end. Rows are never split across programs (no split-K), so the
result is deterministic and no output zeroing or second pass is needed; parallelism comes
from small BLOCK_N instead (4 rows: N/4 programs, >= 192 even for the 0.1B's 768 rows).

Groups: a block of rows belongs to one group (its xs row and activation come from two
int32 tables indexed by program id), so r/k/v and the LoRA down-projections, each on its
own token-shift lerp, are one launch and the tanh / sigmoid of the LoRA hidden rows (or the
relu^2 of the FFN key) cost nothing extra. Activations are applied in fp32, then rounded
once to the output dtype.

Imports triton: only import this module on a machine that has it.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .. import _pdl
from .._pdl import prefetch_rows, wait_prev
from .reference import RowGroups

MAX_M = 8  # batch rows per launch; above this a GEMM (cuBLAS) wins anyway
# Tiles measured on an H100 (benchmarks/gemv_sweep.py, graph-timed, fp16, B=1; docs/perf.md):
# 4 rows x 512 columns per step, 4 warps, 3 stages is best or within ~2% of the best for every
# matrix of the 0.1B/1.5B/7.2B shapes; 8 rows wins by 1-2% on the large ungrouped 7.2B ones.
BLOCK_K = 512
NUM_WARPS = 4
STAGES = 3
# ln_gemv's tile: every program recomputes the row statistics and loads six vectors per K-tile,
# so it takes more rows per program than grouped_gemv. H100 decode b1 tok/s, unfused 671 / 2,705
# (1.5B / 0.1B): 4 x 512 578 / 2,516; 8 x 512 630 / 2,801; 16 x 256 687 / 2,864; 32 x 128 609 /
# 2,036 (docs/perf.md). Knobs (None = these defaults) for A/B runs.
LN_BLOCK_N: int | None = None
LN_BLOCK_K: int | None = None
LN_TILE = (16, 256)
LN_STAGES = 3
LN_NUM_WARPS: int | None = None
# Batch-1 ln_gemv as a persistent kernel (``ln_gemv_persist_kernel``): a grid of LNP_PER_SM
# programs per SM, each with the row statistics and the normed / shifted rows made once and a
# balanced run of LNP_BLOCK_N-row blocks. LN_PERSIST None: on up to LNP_MAX_K columns. H100 decode
# b1 in the graph (session 7, decode_ab): 0.1B 3,126-3,139 tok/s against 2,842-2,849 tiled; 1.5B
# 704.3 / 704.8 at 8-row blocks, 8 warps, 2 stages against 687.9 / 687.4 tiled (4-row blocks at
# 4 warps: 598-650). 7.2B (4096 columns) has ln_fused off.
LN_PERSIST: bool | None = None
LNP_MAX_K = 2048
LNP_BLOCK_N = 8
LNP_PER_SM = 4
LNP_STAGES = 2
LNP_NUM_WARPS = 8
LNP_INTERLEAVE = False   # program p takes blocks p, p + G, ... instead of one contiguous run (A/B knob)


@functools.lru_cache(maxsize=None)
def _sm_count_cached(index) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _sm_count(device: torch.device) -> int:
    """Multiprocessors of a CUDA device (3 off the GPU: the interpreter, so that programs take
    several blocks each in the tests)."""
    return _sm_count_cached(device.index) if device.type == "cuda" else 3


@triton.jit
def _rows_start(w_ptr, K, N, BLOCK_N: tl.constexpr, USE_PDL: tl.constexpr, PF_LINES: tl.constexpr,
                LINE_ELEMS: tl.constexpr):
    """(program id, its BLOCK_N rows of W): with PDL, their first PF_LINES L2 lines prefetched,
    then the wait for the previous kernel."""
    pid = tl.program_id(0)
    n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    if USE_PDL and PF_LINES > 0:
        prefetch_rows(w_ptr, n, K, N, PF_LINES, LINE_ELEMS)
    wait_prev(USE_PDL)
    return pid, n


@triton.jit
def grouped_gemv_kernel(x_ptr, w_ptr, out_ptr, xrow_ptr, act_ptr, M, N, sxg, sxm, som,
                        K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        M_PAD: tl.constexpr, HAS_ACT: tl.constexpr, EVEN_N: tl.constexpr,
                        STAGES: tl.constexpr, USE_PDL: tl.constexpr, PF_LINES: tl.constexpr,
                        LINE_ELEMS: tl.constexpr):
    """Grid (cdiv(N, BLOCK_N),). out[m, n] = act(sum_k xs[xrow, m, k] * W[n, k]).
    USE_PDL: prefetch the first PF_LINES L2 lines of this program's rows of W, then wait for
    the previous kernel (``rwkvrt.ops._pdl``)."""
    pid, n = _rows_start(w_ptr, K, N, BLOCK_N, USE_PDL, PF_LINES, LINE_ELEMS)
    m = tl.arange(0, M_PAD)
    kk = tl.arange(0, BLOCK_K)
    xrow = tl.load(xrow_ptr + pid).to(tl.int64)
    w_ptrs = w_ptr + n.to(tl.int64)[:, None] * K + kk[None, :]
    x_ptrs = x_ptr + xrow * sxg + m[:, None] * sxm + kk[None, :]
    mmask = (m < M)[:, None]
    acc = tl.zeros([M_PAD, BLOCK_N, BLOCK_K], dtype=tl.float32)
    for _ in tl.range(0, K // BLOCK_K, num_stages=STAGES):
        if EVEN_N:
            w = tl.load(w_ptrs)
        else:
            w = tl.load(w_ptrs, mask=(n < N)[:, None], other=0.0)
        x = tl.load(x_ptrs, mask=mmask, other=0.0)
        acc += w.to(tl.float32)[None, :, :] * x.to(tl.float32)[:, None, :]
        w_ptrs += BLOCK_K
        x_ptrs += BLOCK_K
    _act_store(tl.sum(acc, axis=2), act_ptr, out_ptr, pid, m, n, mmask, N, som, HAS_ACT)


@triton.jit
def _act_store(y, act_ptr, out_ptr, pid, m, n, mmask, N, som, HAS_ACT: tl.constexpr):
    """out[m, n] = act(y) for y [M_PAD, BLOCK_N] fp32 (the block's activation from the group table);
    mmask [M_PAD, 1]."""
    if HAS_ACT:
        act = tl.load(act_ptr + pid)
        pos = tl.maximum(y, 0.0)
        sg = tl.sigmoid(y)
        th = 2.0 * tl.sigmoid(2.0 * y) - 1.0
        y = tl.where(act == 1, pos * pos, tl.where(act == 2, th, tl.where(act == 3, sg, y)))
    o_ptrs = out_ptr + m[:, None] * som + n[None, :]
    tl.store(o_ptrs, y.to(out_ptr.dtype.element_ty), mask=mmask & (n < N)[None, :])


def pick_blocks(N: int, K: int, groups: RowGroups) -> tuple[int, int]:
    """(block_n, block_k) for an [N, K] weight: see the tile note above."""
    block_k = BLOCK_K
    while K % block_k and block_k > 16:
        block_k //= 2
    block_n = 8 if len(groups.sizes) == 1 and 4096 <= N <= 16384 and K >= 4096 else 4
    while any(s % block_n for s in groups.sizes[:-1]):
        block_n //= 2
    return block_n, block_k


def _plan(W: torch.Tensor, groups: RowGroups, block_n: int | None, block_k: int | None, tile=None):
    """(block_n, block_k, xrow table, act table) of a launch: ``tile`` (block_n, block_k) where
    it fits the groups and K, else ``pick_blocks``, unless overridden."""
    N, K = W.shape
    bn, bk = pick_blocks(N, K, groups)
    if tile and K % tile[1] == 0 and not any(sz % tile[0] for sz in groups.sizes[:-1]):
        bn, bk = tile
    bn, bk = block_n or bn, block_k or bk
    assert K % bk == 0, "block_k must divide K"
    tables = groups.tables(W.device, bn)
    assert tables is not None, "block_n must divide every group's rows"
    return bn, bk, *tables


def grouped_gemv_triton(xs: torch.Tensor, W: torch.Tensor, groups: RowGroups, out: torch.Tensor, *,
                        block_n: int | None = None, block_k: int | None = None,
                        num_warps: int | None = None, stages: int | None = None, pdl: bool | None = None) -> torch.Tensor:
    """See ``rwkvrt.ops.decode``. The keyword knobs override ``pick_blocks`` / the module defaults."""
    G, M, K = xs.shape
    N = W.shape[0]
    assert W.shape == (N, K) and W.is_contiguous(), "W must be a contiguous [N, K]"
    assert N == groups.n_rows and out.shape == (M, N) and out.stride(1) == 1
    assert xs.stride(2) == 1, "xs needs unit stride along K"
    assert 1 <= M <= MAX_M, f"grouped_gemv takes 1..{MAX_M} batch rows"
    bn, bk, xrow, act = _plan(W, groups, block_n, block_k)
    grid = (triton.cdiv(N, bn),)
    pdl = _pdl.resolve(pdl, W.device, "gemv")
    line = _pdl.L2_LINE // W.element_size()
    grouped_gemv_kernel[grid](xs, W, out, xrow, act, M, N, xs.stride(0), xs.stride(1), out.stride(0),
                              K=K, BLOCK_N=bn, BLOCK_K=bk, M_PAD=triton.next_power_of_2(M),
                              HAS_ACT=any(groups.acts), EVEN_N=N % bn == 0,
                              STAGES=STAGES if stages is None else stages, USE_PDL=pdl,
                              PF_LINES=_pdl.prefetch_lines(N, K * W.element_size()), LINE_ELEMS=line,
                              num_warps=NUM_WARPS if num_warps is None else num_warps, launch_pdl=pdl)
    return out


@triton.jit
def _ln_rows(x_ptr, res_ptr, newres_ptr, lnw_ptr, lnb_ptr, slots_ptr, xn_ptr, psrc_ptr, pdst_ptr, pslots_ptr,
             m, mmask, sxm, srm, snm, sxn, sps, spd, eps, FIRST, K: tl.constexpr, K_PAD: tl.constexpr,
             HAS_PENDING: tl.constexpr):
    """ln_gemv's prologue for the rows m (mmask): (slot [M_PAD] int64, mean, rstd [M_PAD]) of
    h = res + x (rounded to new_res's dtype). FIRST (one program of the launch): also store h
    into new_res, LayerNorm(h) into xn_out, and do the pending copy."""
    ty = x_ptr.dtype.element_ty
    rty = newres_ptr.dtype.element_ty
    slot = tl.load(slots_ptr + m, mask=mmask, other=0).to(tl.int64)
    cc = tl.arange(0, K_PAD)
    rmask = mmask[:, None] & (cc < K)[None, :]
    h = tl.load(res_ptr + m[:, None] * srm + cc[None, :], mask=rmask, other=0.0).to(tl.float32)
    h = (h + tl.load(x_ptr + m[:, None] * sxm + cc[None, :], mask=rmask, other=0.0).to(tl.float32)).to(rty)
    h = h.to(tl.float32)
    mean = tl.sum(h, axis=1) / K
    d = tl.where(rmask, h - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1) / K + eps)
    if FIRST:
        tl.store(newres_ptr + m[:, None] * snm + cc[None, :], h, mask=rmask)
        lw = tl.load(lnw_ptr + cc, mask=cc < K, other=0.0).to(tl.float32)
        lb = tl.load(lnb_ptr + cc, mask=cc < K, other=0.0).to(tl.float32)
        tl.store(xn_ptr + m[:, None] * sxn + cc[None, :], (d * rstd[:, None] * lw[None, :] + lb[None, :]).to(ty),
                 mask=rmask)
        if HAS_PENDING:
            pslot = tl.load(pslots_ptr + m, mask=mmask, other=0).to(tl.int64)
            pend = tl.load(psrc_ptr + m[:, None] * sps + cc[None, :], mask=rmask, other=0.0)
            tl.store(pdst_ptr + pslot[:, None] * spd + cc[None, :], pend.to(pdst_ptr.dtype.element_ty), mask=rmask)
    return slot, mean, rstd


@triton.jit
def _ln_shift_tile(k, m, mm, slot, mean, rstd, x_ptr, res_ptr, newres_ptr, lnw_ptr, lnb_ptr, prev_ptr, sxm, srm,
                   spb, K: tl.constexpr, EVEN_K: tl.constexpr):
    """fp32 ([M_PAD, len(k)] xn, sh): LayerNorm(res + x) and the token-shift rows at columns k,
    rounded as add_ln_lerp rounds them (EVEN_K: every k < K, no column mask)."""
    ty = x_ptr.dtype.element_ty
    if EVEN_K:
        km = mm
        lw = tl.load(lnw_ptr + k).to(tl.float32)
        lb = tl.load(lnb_ptr + k).to(tl.float32)
    else:
        km = mm & (k < K)[None, :]
        lw = tl.load(lnw_ptr + k, mask=k < K, other=0.0).to(tl.float32)
        lb = tl.load(lnb_ptr + k, mask=k < K, other=0.0).to(tl.float32)
    ht = tl.load(res_ptr + m[:, None] * srm + k[None, :], mask=km, other=0.0).to(tl.float32)
    ht = (ht + tl.load(x_ptr + m[:, None] * sxm + k[None, :], mask=km, other=0.0).to(tl.float32))
    ht = ht.to(newres_ptr.dtype.element_ty).to(tl.float32)
    xn = (ht - mean[:, None]) * rstd[:, None] * lw[None, :]
    xn = (xn + lb[None, :]).to(ty).to(tl.float32)
    sh = tl.load(prev_ptr + slot[:, None] * spb + k[None, :], mask=km, other=0.0).to(ty).to(tl.float32)
    return xn, sh


@triton.jit
def _ln_lerp_tile(k, m, mm, slot, mean, rstd, x_ptr, res_ptr, newres_ptr, lnw_ptr, lnb_ptr, prev_ptr, mix_row,
                  sxm, srm, spb):
    """fp32 [M_PAD, len(k)]: the lerped input columns k, rounded as add_ln_lerp stores them."""
    xn, sh = _ln_shift_tile(k, m, mm, slot, mean, rstd, x_ptr, res_ptr, newres_ptr, lnw_ptr, lnb_ptr, prev_ptr,
                            sxm, srm, spb, 0, True)
    mix = tl.load(mix_row + k).to(tl.float32)
    return (xn + (sh - xn) * mix[None, :]).to(x_ptr.dtype.element_ty).to(tl.float32)


@triton.jit
def ln_gemv_kernel(x_ptr, res_ptr, newres_ptr, lnw_ptr, lnb_ptr, prev_ptr, slots_ptr, mix_ptr, xn_ptr,
                   psrc_ptr, pdst_ptr, pslots_ptr, w_ptr, out_ptr, xrow_ptr, act_ptr,
                   M, N, sxm, srm, snm, spb, smix, sxn, sps, spd, som, eps,
                   K: tl.constexpr, K_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   M_PAD: tl.constexpr, HAS_ACT: tl.constexpr, EVEN_N: tl.constexpr, STAGES: tl.constexpr,
                   HAS_PENDING: tl.constexpr, USE_PDL: tl.constexpr, PF_LINES: tl.constexpr,
                   LINE_ELEMS: tl.constexpr):
    """Grid (cdiv(N, BLOCK_N),): ``grouped_gemv_kernel`` whose input rows are made in the
    program from the raw stream: h = res + x, xn = LayerNorm(h), xs = lerp(xn, x_prev[slot],
    mix[xrow]). Every program computes the row statistics itself (the whole rows, from L1/L2),
    so no program waits for another, and nothing is written that another program of the
    launch reads: program 0 stores h (new_res) and xn (xn_out), and copies the pending rows
    of an earlier call into their pool."""
    pid, n = _rows_start(w_ptr, K, N, BLOCK_N, USE_PDL, PF_LINES, LINE_ELEMS)
    m = tl.arange(0, M_PAD)
    mmask = m < M
    mm = mmask[:, None]
    slot, mean, rstd = _ln_rows(x_ptr, res_ptr, newres_ptr, lnw_ptr, lnb_ptr, slots_ptr, xn_ptr, psrc_ptr, pdst_ptr,
                                pslots_ptr, m, mmask, sxm, srm, snm, sxn, sps, spd, eps, pid == 0, K, K_PAD,
                                HAS_PENDING)
    mix_row = mix_ptr + tl.load(xrow_ptr + pid).to(tl.int64) * smix
    kk = tl.arange(0, BLOCK_K)
    w_ptrs = w_ptr + n.to(tl.int64)[:, None] * K + kk[None, :]
    acc = tl.zeros([M_PAD, BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
        if EVEN_N:
            w = tl.load(w_ptrs)
        else:
            w = tl.load(w_ptrs, mask=(n < N)[:, None], other=0.0)
        xin = _ln_lerp_tile(k0 + kk, m, mm, slot, mean, rstd, x_ptr, res_ptr, newres_ptr, lnw_ptr, lnb_ptr,
                            prev_ptr, mix_row, sxm, srm, spb)
        acc += w.to(tl.float32)[None, :, :] * xin[:, None, :]
        w_ptrs += BLOCK_K
    _act_store(tl.sum(acc, axis=2), act_ptr, out_ptr, pid, m, n, mm, N, som, HAS_ACT)


@triton.jit
def ln_gemv_persist_kernel(x_ptr, res_ptr, newres_ptr, lnw_ptr, lnb_ptr, prev_ptr, slots_ptr, mix_ptr, xn_ptr,
                           psrc_ptr, pdst_ptr, pslots_ptr, w_ptr, out_ptr, xrow_ptr, act_ptr,
                           N, NB, G, spb, smix, sxn, sps, spd, eps,
                           K: tl.constexpr, K_PAD: tl.constexpr, BLOCK_N: tl.constexpr, NPP: tl.constexpr,
                           HAS_ACT: tl.constexpr, STAGES: tl.constexpr, HAS_PENDING: tl.constexpr, USE_PDL: tl.constexpr,
                           PF_ROWS: tl.constexpr, PF_LINES: tl.constexpr, LINE_ELEMS: tl.constexpr,
                           INTERLEAVE: tl.constexpr):
    """Grid (G,) (G is also passed), one batch row: ``ln_gemv_kernel``'s result, with program p taking the blocks
    [p*NB//G, (p+1)*NB//G) of BLOCK_N rows (INTERLEAVE: the blocks p, p + G, ...; balanced to one
    block between programs either way). The row
    statistics, the normed row xn and sh - xn (sh: the token-shift row) are made once per
    program; each block then only loads its mix row (L1) and its [BLOCK_N, K] weights (the
    whole K at once, pipelined over blocks), with the same roundings as ``_ln_lerp_tile``."""
    pid = tl.program_id(0)
    if INTERLEAVE:   # blocks pid, pid + G, pid + 2G, ...: the programs' loads move through W side by side
        b0 = 0
        b1 = (NB - pid + G - 1) // G
    else:            # one contiguous run of blocks per program
        b0 = pid * NB // G
        b1 = (pid + 1) * NB // G
    if USE_PDL and PF_LINES > 0:
        pr = tl.arange(0, PF_ROWS)
        if INTERLEAVE:
            pb = tl.minimum(pr // BLOCK_N, b1 - 1)
            prefetch_rows(w_ptr, (pid + pb * G) * BLOCK_N + pr % BLOCK_N, K, N, PF_LINES, LINE_ELEMS)
        else:
            prefetch_rows(w_ptr, tl.minimum(b0 * BLOCK_N + pr, b1 * BLOCK_N - 1), K, N, PF_LINES, LINE_ELEMS)
    wait_prev(USE_PDL)
    ty = x_ptr.dtype.element_ty
    m = tl.arange(0, 1)
    mmask = m < 1
    slot, mean, rstd = _ln_rows(x_ptr, res_ptr, newres_ptr, lnw_ptr, lnb_ptr, slots_ptr, xn_ptr, psrc_ptr, pdst_ptr,
                                pslots_ptr, m, mmask, 0, 0, 0, sxn, sps, spd, eps, pid == 0, K, K_PAD, HAS_PENDING)
    cc = tl.arange(0, K_PAD)
    kmask = cc < K
    xn, sh = _ln_shift_tile(cc, m, mmask[:, None], slot, mean, rstd, x_ptr, res_ptr, newres_ptr, lnw_ptr, lnb_ptr,
                            prev_ptr, 0, 0, spb, K, K == K_PAD)
    xn = tl.reshape(xn, [K_PAD])
    diff = tl.reshape(sh, [K_PAD]) - xn
    nn = tl.arange(0, BLOCK_N)
    for i in tl.range(0, NPP, num_stages=STAGES):   # NPP = cdiv(NB, G): the last one may be empty
        live = b0 + i < b1
        if INTERLEAVE:
            blk = tl.minimum(pid + i * G, NB - 1)
        else:
            blk = tl.minimum(b0 + i, NB - 1)
        n = blk * BLOCK_N + nn
        w = tl.load(w_ptr + n.to(tl.int64)[:, None] * K + cc[None, :], mask=live & kmask[None, :], other=0.0)
        mix = tl.load(mix_ptr + tl.load(xrow_ptr + blk).to(tl.int64) * smix + cc, mask=kmask, other=0.0)
        xin = (xn + diff * mix.to(tl.float32)).to(ty).to(tl.float32)
        y = tl.sum(w.to(tl.float32) * xin[None, :], axis=1)
        _act_store(y[None, :], act_ptr, out_ptr, blk, m, n, mmask[:, None] & live, N, 0, HAS_ACT)

def ln_prologue_args(x, res, ln_w, ln_b, x_prev, slots, mix, out, new_res, xn_out, pending):
    """Checks shared by the kernels that use ``_ln_rows``; (src, pool, slots) of the pending copy
    (stand-ins, never read, when there is none)."""
    M, C = x.shape
    assert res.shape == new_res.shape == xn_out.shape == (M, C) and slots.shape == (M,), "shape mismatch"
    for t in (x, res, new_res, xn_out, out, x_prev, mix):
        assert t.stride(-1) == 1, "unit stride along the last axis"
    assert new_res.data_ptr() != res.data_ptr(), "new_res must not be res (other programs still read it)"
    assert x_prev.dim() == 2 and ln_w.is_contiguous() and ln_b.is_contiguous()
    if pending is None:
        return xn_out, x_prev, slots
    psrc, pdst, pslots = pending
    assert psrc.shape == (M, C) and psrc.stride(1) == 1 and pdst.stride(1) == 1 and pslots.shape == (M,)
    return psrc, pdst, pslots


def ln_gemv_triton(x, res, ln_w, ln_b, x_prev, slots, mix, W, groups, out, new_res, xn_out, pending=None, *,
                   eps: float = 1e-5, block_n: int | None = None, block_k: int | None = None,
                   num_warps: int | None = None, stages: int | None = None, pdl: bool | None = None,
                   persist: bool | None = None):
    """See ``rwkvrt.ops.decode``: (out, new_res, xn_out). persist (None: LN_PERSIST, whose None is K <=
    LNP_MAX_K): batch 1 through ``ln_gemv_persist_kernel``."""
    M, K = x.shape
    N = W.shape[0]
    assert W.shape == (N, K) and W.is_contiguous(), "W must be a contiguous [N, K]"
    assert out.shape == (M, N) and mix.shape[1] == K, "shape mismatch"
    assert 1 <= M <= MAX_M, f"ln_gemv takes 1..{MAX_M} batch rows"
    psrc, pdst, pslots = ln_prologue_args(x, res, ln_w, ln_b, x_prev, slots, mix, out, new_res, xn_out, pending)
    pdl = _pdl.resolve(pdl, W.device, "gemv")
    if persist is None:
        persist = K <= LNP_MAX_K if LN_PERSIST is None else LN_PERSIST
    bn = block_n or LNP_BLOCK_N
    tables = groups.tables(W.device, bn) if M == 1 and persist and N % bn == 0 else None
    if tables is not None:   # else (e.g. a vocab that is not a multiple of the block) the tiled kernel
        nb = N // bn
        grid = min(nb, _sm_count(W.device) * LNP_PER_SM)
        pf_rows = triton.next_power_of_2(triton.cdiv(nb, grid) * bn)
        ln_gemv_persist_kernel[(grid,)](
            x, res, new_res, ln_w, ln_b, x_prev, slots, mix, xn_out, psrc, pdst, pslots, W, out, *tables,
            N, nb, grid, x_prev.stride(0), mix.stride(0), xn_out.stride(0), psrc.stride(0), pdst.stride(0), float(eps),
            K=K, K_PAD=triton.next_power_of_2(K), BLOCK_N=bn, NPP=triton.cdiv(nb, grid), HAS_ACT=any(groups.acts),
            STAGES=LNP_STAGES if stages is None else stages, HAS_PENDING=pending is not None, USE_PDL=pdl,
            PF_ROWS=pf_rows, PF_LINES=_pdl.prefetch_lines(grid * pf_rows, K * W.element_size()),
            INTERLEAVE=bool(LNP_INTERLEAVE),
            LINE_ELEMS=_pdl.L2_LINE // W.element_size(), num_warps=num_warps or LNP_NUM_WARPS, launch_pdl=pdl)
        return out, new_res, xn_out
    bn, bk, xrow, act = _plan(W, groups, block_n or LN_BLOCK_N, block_k or LN_BLOCK_K, LN_TILE)
    ln_gemv_kernel[(triton.cdiv(N, bn),)](
        x, res, new_res, ln_w, ln_b, x_prev, slots, mix, xn_out, psrc, pdst, pslots, W, out, xrow, act,
        M, N, x.stride(0), res.stride(0), new_res.stride(0), x_prev.stride(0), mix.stride(0), xn_out.stride(0),
        psrc.stride(0), pdst.stride(0), out.stride(0), float(eps),
        K=K, K_PAD=triton.next_power_of_2(K), BLOCK_N=bn, BLOCK_K=bk, M_PAD=triton.next_power_of_2(M),
        HAS_ACT=any(groups.acts), EVEN_N=N % bn == 0, STAGES=LN_STAGES if stages is None else stages,
        HAS_PENDING=pending is not None, USE_PDL=pdl,
        PF_LINES=_pdl.prefetch_lines(N, K * W.element_size()), LINE_ELEMS=_pdl.L2_LINE // W.element_size(),
        num_warps=num_warps or LN_NUM_WARPS or NUM_WARPS, launch_pdl=pdl)
    return out, new_res, xn_out
