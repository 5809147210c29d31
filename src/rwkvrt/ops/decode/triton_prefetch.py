"""Warm L2 with the first lines of each row of a weight that a later GEMV will read.

At batch-1 decode the small kernels between the GEMVs (LayerNorm + lerps, the time-mix step)
leave HBM idle for several microseconds. Queued on a side stream right after the previous
GEMV, this kernel issues ``prefetch.global.L2`` for the next GEMV's weight rows, so those
bytes arrive during the idle window instead of on the GEMV's critical path. The first lines
of every row are taken (not the first rows): a one-wave GEMV consumes every row's columns
from the start, so those lines are read first and are the last to be evicted.

A prefetch has no semantic effect; the reference is a no-op. Imports triton.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _pdl
from .._pdl import prefetch_rows

ROWS = 32  # rows per program


@triton.jit
def l2_prefetch_kernel(w_ptr, N, row_stride, ROWS: tl.constexpr, LINES: tl.constexpr, LINE_ELEMS: tl.constexpr):
    """Grid (cdiv(N, ROWS),): prefetch the first LINES L2 lines of rows [ROWS*pid, ROWS*(pid+1))."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    prefetch_rows(w_ptr, rows, row_stride, N, LINES, LINE_ELEMS)


def l2_prefetch_triton(W: torch.Tensor, budget_bytes: int) -> None:
    """Prefetch about ``budget_bytes`` of W ([N, K], unit stride along K) into L2: the first
    power-of-2 number of 128-byte lines of every row that fits the budget (nothing if 0)."""
    N, K = W.shape
    assert W.stride(1) == 1
    lines = _pdl.prefetch_lines(N, K * W.element_size(), budget_bytes)
    if lines == 0 or N == 0:
        return
    l2_prefetch_kernel[(triton.cdiv(N, ROWS),)](W, N, W.stride(0), ROWS=ROWS, LINES=lines,
                                                 LINE_ELEMS=_pdl.L2_LINE // W.element_size(), num_warps=1)
