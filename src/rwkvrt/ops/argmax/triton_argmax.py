"""Row argmax in one launch: programs over slices of each row, a 64-bit atomic max, a ticket.

Key of an element (value v, column i): the float's bits mapped to an unsigned order-preserving
32-bit code (NaN: the largest code), shifted left by 31, OR (2**31 - 1 - i). The largest key is
the largest value and, among equal values, the smallest column: ``torch.argmax``'s answer.
Keys are non-negative int64, so a signed atomic max orders them. Each program reduces its slice
to one key, ``atomic_max``es it into the row's slot, then takes a ticket (acq_rel, after its
max: release orders it); the program that draws the last ticket swaps the slot back to -1,
writes the column, and resets the ticket. No program waits for another.

Imports triton: only import this module on a machine that has it.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _pdl
from .._pdl import wait_prev

BLOCK = 2048        # columns per program (8 KB of fp32 at 4 warps: 16 per thread)
NUM_WARPS = 4
MAX_V = 1 << 31


@triton.jit
def _order_key(x):
    """uint32-valued int64 code that orders floats as their values (NaN above +inf)."""
    x = x.to(tl.float32)
    x = tl.where(x == 0.0, 0.0, x)   # -0.0 and +0.0 are equal for argmax: one code
    bits = x.to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF
    neg = (bits >> 31) != 0
    code = tl.where(neg, 0xFFFFFFFF - bits, bits | 0x80000000)
    return tl.where(x != x, 0xFFFFFFFF, code)


@triton.jit
def argmax_rows_kernel(x_ptr, out_ptr, key_ptr, count_ptr, V, sxb, P: tl.constexpr, BLOCK: tl.constexpr,
                       USE_PDL: tl.constexpr):
    """Grid (B, P): program (b, p) takes columns [p * BLOCK, (p + 1) * BLOCK) of row b."""
    b = tl.program_id(0)
    p = tl.program_id(1)
    wait_prev(USE_PDL)
    col = p * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + b.to(tl.int64) * sxb + col, mask=col < V, other=float("-inf"))
    key = (_order_key(x) << 31) | (0x7FFFFFFF - col.to(tl.int64))
    key = tl.where(col < V, key, -1)
    tl.atomic_max(key_ptr + b, tl.max(key, axis=0), sem="relaxed", scope="gpu")
    tl.debug_barrier()   # the max is issued before the release below, whichever thread issues it
    old = tl.atomic_add(count_ptr + b, 1, sem="acq_rel", scope="gpu")
    if old == P - 1:
        best = tl.atomic_xchg(key_ptr + b, -1, sem="acquire", scope="gpu")
        tl.store(out_ptr + b, 0x7FFFFFFF - (best & 0x7FFFFFFF))
        tl.atomic_xchg(count_ptr + b, 0, sem="relaxed", scope="gpu")


class ArgmaxScratch:
    """Per-row keys (-1) and tickets (0) for up to ``max_rows`` rows; left reset after every call."""

    def __init__(self, max_rows: int, device):
        self.key = torch.full((max_rows,), -1, device=device, dtype=torch.int64)
        self.count = torch.zeros(max_rows, device=device, dtype=torch.int32)


def argmax_rows_triton(logits: torch.Tensor, out: torch.Tensor, scratch: ArgmaxScratch, *,
                       pdl: bool | None = None) -> torch.Tensor:
    """See ``rwkvrt.ops.argmax``."""
    B, V = logits.shape
    assert logits.stride(1) == 1 and out.shape == (B,) and out.dtype == torch.int64
    assert 0 < V < MAX_V, "argmax_rows takes 1 .. 2**31 - 1 columns"
    assert B <= scratch.key.shape[0] and scratch.key.device == logits.device, "scratch too small or elsewhere"
    if B == 0:
        return out
    pdl = _pdl.resolve(pdl, logits.device, "gemv")
    P = triton.cdiv(V, BLOCK)
    argmax_rows_kernel[(B, P)](logits, out, scratch.key, scratch.count, V, logits.stride(0), P=P, BLOCK=BLOCK,
                               USE_PDL=pdl, num_warps=NUM_WARPS, launch_pdl=pdl)
    return out
