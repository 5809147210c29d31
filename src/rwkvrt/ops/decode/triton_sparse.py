"""FFN value product that skips the zero rows of relu^2 (see ``rwkvrt.ops.decode``).

RWKV-7's FFN is ``h = relu(xk @ W_key.T) ** 2 ; out = h @ W_value.T``. Every exact zero of h
makes one row of ``WT = W_value.T`` ([F, C], stored contiguous at load) unnecessary, and at
batch 1..8 decode is bound by weight bytes: a row of WT that no batch row needs is never
loaded (its tile rows are masked off, and masked lanes issue no memory request). Trained
RWKV-7 checkpoints leave most of h at zero (docs/perf_cpu.md: 85% on the demo model); random
weights leave about half.

Split-K over the rows of WT, so that every SM has bytes in flight: grid (column blocks,
splits); program (nb, s) multiplies rows [s * K_SPLIT, (s + 1) * K_SPLIT) of WT's columns
block nb (tiles of BLOCK_K rows x BLOCK_N columns, each row segment BLOCK_N * 2 contiguous
bytes) with h on the tensor cores (fp32 accumulate), and stores its fp32 partial. Then
the last-arriving program of a column block sums the SPLITS partials in split order
and writes the output, so the result does not depend on scheduling (deterministic, bitwise
equal between replays). Memory ordering as in the decode counters elsewhere: stores, then
``tl.debug_barrier()`` (every thread of the program has issued them), then one scalar
``atomic_add(sem="acq_rel", scope="gpu")`` per program; the program that sees SPLITS - 1
reads the partials through L2 (``.cg``), writes the column block and resets the counter to
0 (no program waits on another: no deadlock whatever the scheduling).

Scratch (``SparseScratch``): the partials and one int32 counter per column block, made once
per model and shared by its layers (one kernel at a time on a stream; two concurrent
decodes of one model on different streams would need two).

Imports triton: only import this module on a machine that has it.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _pdl
from .._pdl import wait_prev

MAX_M = 8             # batch rows per launch (the decode path's bucket limit)
BLOCK_K = 32          # rows of WT per tile
MAX_SPLITS = 32
# up to this many column-block widths: 64 splits (H100 1.5B decode b1 in the graph: 702.6 / 701.2
# tok/s against 687.4 / 687.9 at 32; 7.2B not measured, kept at 32)
WIDE_SPLITS, WIDE_MAX_N = 64, 2048
STAGES = 3
NUM_WARPS = 2          # H200 sweep: 2 warps best at both FFN shapes (7.2B 26.7 -> 23.3 us, 1.5B 10.2 -> 9.9)
# partial sums per load in the last program's reduction: 16384 = every split of a 256-column block
# in one load round at 2 warps (228 registers, no spills at sm_90; 4096 took 4 dependent rounds and
# spilled 132 B). H100 decode b1: 1.5B 737.6 / 738.2 tok/s against 734.8 / 735.7, 7.2B 205.3 / 205.9.
REDUCE_ELEMS = 16384
EARLY_MASK = True     # every tile's row mask computed before the main loop (False: per tile, A/B knob)
SKIP = True           # False: load every row (the dense rate of this layout; an A/B knob)


@triton.jit
def sparse_rows_gemv_kernel(h_ptr, wt_ptr, out_ptr, part_ptr, count_ptr, M, N, shm, som, sps,
                            K_SPLIT: tl.constexpr, SPLITS: tl.constexpr, BLOCK_N: tl.constexpr,
                            BLOCK_K: tl.constexpr, M_PAD: tl.constexpr, SKIP: tl.constexpr,
                            IEEE: tl.constexpr, STAGES: tl.constexpr, USE_PDL: tl.constexpr,
                            S_CHUNK: tl.constexpr, N_CHUNKS: tl.constexpr, EARLY_MASK: tl.constexpr,
                            TILES_PAD: tl.constexpr):
    """Grid (cdiv(N, BLOCK_N), SPLITS). out[m, n] = sum_k h[m, k] * WT[k, n] (module docstring).
    SKIP=False loads every row (the same tiles and sums: the dense rate of this layout).
    The last program reads the partials S_CHUNK splits at a time (N_CHUNKS * S_CHUNK >= SPLITS),
    all loads of a chunk in flight together: a split-by-split loop pays one L2 round trip per
    split (measured: ~0.4 us each, 27 us at 64 splits on an H100)."""
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    wait_prev(USE_PDL)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < N
    m = tl.arange(0, M_PAD)
    mmask = m < M
    kk = pid_s * K_SPLIT + tl.arange(0, BLOCK_K)
    h_ptrs = h_ptr + m[:, None] * shm + kk[None, :]
    w_ptrs = wt_ptr + kk.to(tl.int64)[:, None] * N + n[None, :]
    acc = tl.zeros([M_PAD, BLOCK_N], dtype=tl.float32)
    if EARLY_MASK:
        # which rows of this split any batch row needs, for every tile at once, before the loop:
        # the weight loads' masks then depend on no load in the loop, so the pipeline can run
        # them STAGES tiles ahead (a mask from the same tile's h load costs an L2 round trip
        # per tile before its weight load can start)
        tt = tl.arange(0, TILES_PAD)
        split_h = h_ptr + pid_s * K_SPLIT + tt[:, None] * BLOCK_K + tl.arange(0, BLOCK_K)[None, :]
        need_all = tl.zeros([TILES_PAD, BLOCK_K], dtype=tl.int32)
        mi = 0
        while mi < M:
            hv = tl.load(split_h + mi * shm, mask=(tt < K_SPLIT // BLOCK_K)[:, None], other=0.0)
            need_all = tl.maximum(need_all, (hv != 0).to(tl.int32))
            mi += 1
    i = 0
    for _ in tl.range(0, K_SPLIT // BLOCK_K, num_stages=STAGES):
        h = tl.load(h_ptrs, mask=mmask[:, None], other=0.0)
        if SKIP:
            if EARLY_MASK:
                need = tl.max(tl.where((tt == i)[:, None], need_all, 0), axis=0) > 0
            else:
                need = tl.max((h != 0).to(tl.int32), axis=0) > 0   # [BLOCK_K]: any batch row uses it
            w = tl.load(w_ptrs, mask=need[:, None] & nmask[None, :], other=0.0)
        else:
            w = tl.load(w_ptrs, mask=nmask[None, :], other=0.0)
        i += 1
        if IEEE:
            acc = tl.dot(h, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(h, w, acc)
        h_ptrs += BLOCK_K
        w_ptrs += BLOCK_K * N
    tl.store(part_ptr + pid_s * sps + m[:, None] * N + n[None, :], acc, mask=mmask[:, None] & nmask[None, :])
    # every thread's partial stores are issued before the one release below
    tl.debug_barrier()
    old = tl.atomic_add(count_ptr + pid_n, 1, sem="acq_rel", scope="gpu")
    if old == SPLITS - 1:
        sc = tl.arange(0, S_CHUNK)
        mi = 0
        while mi < M:
            tot = tl.zeros([BLOCK_N], dtype=tl.float32)
            for c in tl.static_range(N_CHUNKS):  # fixed order: the same sum whichever program is last
                ss = c * S_CHUNK + sc
                tile = tl.load(part_ptr + ss[:, None] * sps + mi * N + n[None, :],
                               mask=(ss < SPLITS)[:, None] & nmask[None, :], other=0.0, cache_modifier=".cg")
                tot += tl.sum(tile, axis=0)
            tl.store(out_ptr + mi * som + n, tot.to(out_ptr.dtype.element_ty), mask=nmask)
            mi += 1
        tl.atomic_xchg(count_ptr + pid_n, 0, sem="relaxed", scope="gpu")  # the next launch starts at 0


def plan(N: int, K: int, block_n: int | None = None, splits: int | None = None,
         block_k: int | None = None) -> tuple[int, int, int]:
    """(block_n, block_k, splits) for WT [K, N]: column blocks of 256 (128 below N = 2048), rows
    split in up to MAX_SPLITS parts (WIDE_SPLITS up to N = WIDE_MAX_N) of at least two tiles.
    H100/H200 standalone sweeps (docs/perf.md): 256 x 32 splits is the best or within 5% of it at
    the 1.5B and 7.2B FFN shapes; inside the 1.5B decode graph 64 splits win by 2%."""
    bn = block_n or (256 if N >= 2048 else 128)
    bk = block_k or BLOCK_K
    while K % bk and bk > 16:
        bk //= 2
    if K % bk:
        raise ValueError(f"sparse_rows_gemv needs K (={K}) to be a multiple of 16")
    tiles = K // bk
    if splits is None:
        cap = WIDE_SPLITS if N <= WIDE_MAX_N else MAX_SPLITS
        splits = max(d for d in range(1, min(tiles, cap) + 1)
                     if tiles % d == 0 and (tiles // d >= 2 or d == 1))
    if tiles % splits:
        raise ValueError(f"splits={splits} must divide the {tiles} row tiles")
    return bn, bk, splits


class SparseScratch:
    """Partials [splits, MAX_M, N] fp32 and per-column-block counters (zero) for WT [K, N]."""

    def __init__(self, N: int, K: int, device, block_n: int | None = None, splits: int | None = None,
                 block_k: int | None = None):
        self.N, self.K = N, K
        self.block_n, self.block_k, self.splits = plan(N, K, block_n, splits, block_k)
        self.part = torch.empty(self.splits, MAX_M, N, device=device, dtype=torch.float32)
        self.count = torch.zeros(triton.cdiv(N, self.block_n), device=device, dtype=torch.int32)


def sparse_rows_gemv_triton(h: torch.Tensor, WT: torch.Tensor, out: torch.Tensor, scratch: SparseScratch, *,
                            pdl: bool | None = None, skip: bool | None = None, stages: int | None = None,
                            num_warps: int | None = None) -> torch.Tensor:
    """See ``rwkvrt.ops.decode``. ``skip=False``: load every row (same tiles; for measuring;
    None = the module's SKIP)."""
    M, K = h.shape
    N = WT.shape[1]
    assert WT.shape == (K, N) and WT.is_contiguous(), "WT must be a contiguous [K, N]"
    assert h.stride(1) == 1 and out.shape == (M, N) and out.stride(1) == 1
    assert h.dtype == WT.dtype, "h and WT must share a dtype"
    assert 1 <= M <= MAX_M, f"sparse_rows_gemv takes 1..{MAX_M} batch rows"
    assert (scratch.N, scratch.K) == (N, K) and scratch.part.device == WT.device, "scratch made for another shape"
    bn, bk, S = scratch.block_n, scratch.block_k, scratch.splits
    pdl = _pdl.resolve(pdl, WT.device, "gemv")
    sc = min(triton.next_power_of_2(S), max(1, REDUCE_ELEMS // bn))
    sparse_rows_gemv_kernel[(triton.cdiv(N, bn), S)](
        h, WT, out, scratch.part, scratch.count, M, N, h.stride(0), out.stride(0), scratch.part.stride(0),
        K_SPLIT=K // S, SPLITS=S, EARLY_MASK=EARLY_MASK, TILES_PAD=triton.next_power_of_2(K // S // bk),
        S_CHUNK=sc, N_CHUNKS=triton.cdiv(S, sc), BLOCK_N=bn, BLOCK_K=bk, M_PAD=16,
        SKIP=SKIP if skip is None else skip, IEEE=h.dtype == torch.float32,
        STAGES=STAGES if stages is None else stages, USE_PDL=pdl,
        num_warps=NUM_WARPS if num_warps is None else num_warps, launch_pdl=pdl)
    return out
