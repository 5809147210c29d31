"""Programmatic dependent launch (PDL, sm_90+) helpers shared by the decode-path Triton kernels.

A kernel launched with ``launch_pdl=True`` may start while the previous kernel in the stream
is still running, once every program of that kernel has called ``gdc_launch_dependents``.
Rules every PDL kernel here follows, so that results never change:
  - before ``gdc_wait()`` it only issues L2 prefetches (no loads whose values it uses, no
    stores): a prefetch has no semantic effect, so prefetching data the previous kernel is
    still writing is harmless;
  - it calls ``gdc_wait()`` (which returns once the previous kernel has completed and its
    writes are visible) before any load or store, then ``gdc_launch_dependents()``.
Completion is then transitive along the stream, exactly as without PDL. What PDL buys at
batch-1 decode: the next kernel's programs are resident and its weights are on their way
into L2 while the current kernel drains, instead of a launch gap plus a cold ramp per kernel.

Imports triton: only import this module on a machine that has it.
"""
from __future__ import annotations

import functools
import logging
import os

import torch
import triton
import triton.language as tl

log = logging.getLogger(__name__)
L2_LINE = 128                 # bytes per prefetch (one L2 line)
# bytes of a matrix prefetched ahead; RWKVRT_PDL_PREFETCH_MB overrides. H100, 1.5B decode b1 (graphs):
# 0 MB 604 tok/s, 4 MB 617, 48 MB 560 (no PDL: 594)
def _budget_from_env(default_mb: float = 4.0) -> int:
    raw = os.environ.get("RWKVRT_PDL_PREFETCH_MB", "")
    try:
        mb = float(raw) if raw else default_mb
    except ValueError:
        log.warning("RWKVRT_PDL_PREFETCH_MB=%r is not a number of MB; using %s", raw, default_mb)
        mb = default_mb
    return max(0, int(mb * (1 << 20)))


PREFETCH_BUDGET = _budget_from_env()


# kernel kinds ("gemv", "ln", "tmix") launched without PDL whatever the caller asks (A/B knob:
# RWKVRT_PDL_OFF=gemv,ln; read at import, and the set may be changed at run time)
OFF_KINDS = {k for k in os.environ.get("RWKVRT_PDL_OFF", "").split(",") if k}


def enabled(device: torch.device, kind: str | None = None) -> bool:
    """PDL on: a CUDA device of compute capability >= 9, not the interpreter, RWKVRT_PDL != 0,
    ``kind`` not in OFF_KINDS."""
    if os.environ.get("TRITON_INTERPRET") == "1" or os.environ.get("RWKVRT_PDL", "1") == "0" or kind in OFF_KINDS:
        return False
    return device.type == "cuda" and _sm90_or_newer(device.index)


def resolve(want: bool | None, device: torch.device, kind: str) -> bool:
    """A launch's PDL flag: the caller's ``want`` (None = the device default) and ``enabled``."""
    return enabled(device, kind) if want is None else bool(want) and enabled(device, kind)


@functools.lru_cache(maxsize=None)
def _sm90_or_newer(index: int | None) -> bool:
    # asked on every decode-kernel launch: the device query is made once per device
    return torch.cuda.get_device_capability(index)[0] >= 9


def prefetch_lines(n_rows: int, row_bytes: int, budget: int | None = None) -> int:
    """Lines per row to prefetch: a power of 2, at most a row, n_rows * lines * 128 <= budget
    (at least one line; 0 when the budget is 0: no prefetch)."""
    budget = PREFETCH_BUDGET if budget is None else budget
    if budget <= 0:
        return 0
    per_row = max(1, row_bytes // L2_LINE)
    lines = 1
    while lines * 2 <= per_row and n_rows * lines * 2 * L2_LINE <= budget:
        lines *= 2
    return lines


@triton.jit
def prefetch_rows(ptr, rows, row_stride, n_rows, LINES: tl.constexpr, LINE_ELEMS: tl.constexpr):
    """L2 prefetch of the first LINES lines of each of ``rows`` (clamped to n_rows - 1)."""
    r = tl.minimum(rows, n_rows - 1).to(tl.int64)
    p = ptr + r[:, None] * row_stride + (tl.arange(0, LINES) * LINE_ELEMS)[None, :]
    tl.inline_asm_elementwise("prefetch.global.L2 [$1]; // dummy $0", "=r,l", [p], dtype=tl.int32,
                              is_pure=False, pack=1)


@triton.jit
def wait_prev(USE_PDL: tl.constexpr):
    """Wait for the previous kernel (PDL), then let the next one launch."""
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
