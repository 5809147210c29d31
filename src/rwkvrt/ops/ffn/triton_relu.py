"""Squared ReLU, and the LoRA hidden's tanh | sigmoid pair, in place: one Triton launch each.

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


@triton.jit
def tanh_sigmoid_fwd_kernel(x_ptr, n, BLOCK: tl.constexpr):
    """Grid (cdiv(2n, BLOCK),): x[i] = tanh(x[i]) for i < n, sigmoid(x[i]) from n, fp32 math
    (tanh as 2 * sigmoid(2x) - 1, as the decode GEMV's epilogue)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < 2 * n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.where(offs < n, 2.0 * tl.sigmoid(2.0 * x) - 1.0, tl.sigmoid(x))
    tl.store(x_ptr + offs, y.to(x_ptr.dtype.element_ty), mask=mask)


def tanh_sigmoid_triton_(x2: torch.Tensor) -> torch.Tensor:
    """See ``rwkvrt.ops.ffn``: x2 [2, ...] contiguous; x2[0] -> tanh, x2[1] -> sigmoid in place."""
    assert x2.shape[0] == 2 and x2.is_contiguous(), "tanh_sigmoid_ works in place on a contiguous [2, ...]"
    n = x2[0].numel()
    if n:
        tanh_sigmoid_fwd_kernel[(triton.cdiv(2 * n, BLOCK),)](x2, n, BLOCK=BLOCK, num_warps=4)
    return x2
