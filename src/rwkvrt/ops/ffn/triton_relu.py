"""Squared ReLU in place, one Triton launch over the flat tensor.

Same function and convention as ``rwkvrt.ops.ffn`` (see its docstring). Imports
triton: only import this module on a machine that has it.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# 2048 elements per program at 4 warps: 16 per thread, i.e. 128-bit accesses for half
# and fp32 alike, and a decode-size tensor (4C = 8192) still spreads over 4 programs.
BLOCK = 2048


@triton.jit
def relu_square_fwd_kernel(x_ptr, n, BLOCK: tl.constexpr):
    """Grid (cdiv(n, BLOCK),): x[i] = max(x[i], 0) ** 2 in place, fp32 math."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    x = tl.maximum(x, 0.0)
    tl.store(x_ptr + offs, (x * x).to(x_ptr.dtype.element_ty), mask=mask)


def relu_square_triton_(x: torch.Tensor) -> torch.Tensor:
    """See ``rwkvrt.ops.ffn``: x [..., F] contiguous, mutated to relu(x) ** 2 and returned."""
    assert x.is_contiguous(), "relu_square_ works in place on a contiguous tensor"
    n = x.numel()
    if n:
        relu_square_fwd_kernel[(triton.cdiv(n, BLOCK),)](x, n, BLOCK=BLOCK, num_warps=4)
    return x
