"""WKV7 as a step-by-step Triton kernel: decode and small T (and a fallback for any T).

Same convention as ``rwkvrt.ops.wkv7`` (see its docstring). Each value row i of the
state evolves on its own,

    s_i <- s_i * decay + (s_i . a) b + v_i k          (s_i: row i of S, length N over keys)
    y_i  = s_i . r

so the rows are split over programs: one program per (batch, head, block of BLOCK_V
value rows). The block [BLOCK_V, N] of the state stays in registers (fp32) for the
whole loop over T and is written back once, in place. With N = 64 and BLOCK_V = 16 a
program holds 1024 fp32 values (8 per thread with 4 warps), and B*H*N/16 programs
run at once (128 for B=1, H=32), enough to keep the GPU busy at batch 1.

Imports triton: only import this module on a machine that has it.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# exp(-0.5), as in reference.DECAY_SCALE (kept literal so the kernel sees a constant)
_DECAY_SCALE = tl.constexpr(0.6065306597126334)

# read once: the interpreter needs a while loop where compiled code wants a pipelined for
_INTERP = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _recurrent_step(t, S, base, cols, rows, r_ptr, w_ptr, k_ptr, v_ptr, a_ptr, b_ptr, y_ptr,
                    H: tl.constexpr, N: tl.constexpr):
    """One token: loads its vectors, updates the [BLOCK_V, N] state block, stores y; returns S."""
    off = base + t * H * N
    r = tl.load(r_ptr + off + cols).to(tl.float32)
    w = tl.load(w_ptr + off + cols).to(tl.float32)
    k = tl.load(k_ptr + off + cols).to(tl.float32)
    a = tl.load(a_ptr + off + cols).to(tl.float32)
    bb = tl.load(b_ptr + off + cols).to(tl.float32)
    v = tl.load(v_ptr + off + rows).to(tl.float32)
    decay = tl.exp(-_DECAY_SCALE * tl.sigmoid(w))
    sa = tl.sum(S * a[None, :], axis=1)           # (S @ a) for these rows, [BLOCK_V]
    S = S * decay[None, :] + sa[:, None] * bb[None, :] + v[:, None] * k[None, :]
    y = tl.sum(S * r[None, :], axis=1)
    tl.store(y_ptr + off + rows, y.to(y_ptr.dtype.element_ty))
    return S


@triton.jit
def wkv7_recurrent_fwd_kernel(r_ptr, w_ptr, k_ptr, v_ptr, a_ptr, b_ptr, s_ptr, y_ptr,
                              T, H: tl.constexpr, N: tl.constexpr, BLOCK_V: tl.constexpr,
                              INTERP: tl.constexpr, STAGES: tl.constexpr):
    """Grid (B*H, N // BLOCK_V). Inputs [B, T, H, N] contiguous; state [B, H, N, N] fp32 (in place)."""
    pid_bh = tl.program_id(0).to(tl.int64)
    pid_v = tl.program_id(1)
    b_idx = pid_bh // H
    h_idx = pid_bh % H
    rows = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)   # value rows of this program
    cols = tl.arange(0, N)                            # key channels

    s_ptrs = s_ptr + pid_bh * N * N + rows[:, None] * N + cols[None, :]
    S = tl.load(s_ptrs)                               # [BLOCK_V, N] fp32

    # token t of head h starts at ((b*T + t)*H + h)*N
    base = (b_idx * T * H + h_idx) * N
    if INTERP:
        # the Triton 3.6 interpreter cannot range() over a runtime scalar under numpy 2
        t = 0
        while t < T:
            S = _recurrent_step(t, S, base, cols, rows, r_ptr, w_ptr, k_ptr, v_ptr, a_ptr, b_ptr,
                                y_ptr, H, N)
            t += 1
    else:
        # a for loop lets the compiler prefetch the next tokens' vectors (they do not depend on S)
        for t in tl.range(0, T, num_stages=STAGES):
            S = _recurrent_step(t, S, base, cols, rows, r_ptr, w_ptr, k_ptr, v_ptr, a_ptr, b_ptr,
                                y_ptr, H, N)
    tl.store(s_ptrs, S)


def check_layout(r, w, k, v, a, b, state, slots=None) -> None:
    """Internal invariants the Triton wkv7 wrappers need (the dispatcher makes inputs contiguous);
    with ``slots`` ([B] int64), ``state`` is a pool [S, H, N, N]."""
    B, T, H, N = r.shape
    assert state.dtype == torch.float32 and state.is_contiguous()
    if slots is None:
        assert state.shape == (B, H, N, N)
    else:
        assert state.shape[1:] == (H, N, N) and slots.shape == (B,) and slots.dtype == torch.int64
    assert all(x.is_contiguous() and x.shape == r.shape for x in (r, w, k, v, a, b))
    assert N >= 16 and (N & (N - 1)) == 0, "N must be a power of 2 >= 16"


def wkv7_recurrent_triton(r: torch.Tensor, w: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          a: torch.Tensor, b: torch.Tensor, state: torch.Tensor, *,
                          block_v: int | None = None, num_warps: int | None = None,
                          num_stages: int = 2
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Step-by-step WKV7 on the GPU (or the Triton interpreter).

    r, w, k, v, a, b : [B, T, H, N] contiguous, same dtype (fp32 / fp16 / bf16); w raw logit.
    state            : [B, H, N, N] float32 contiguous, layout [batch, head, value, key];
                       MUTATED in place to the final state (and returned).
    block_v          : value rows per program (power of 2 dividing N; default min(16, N)).
    num_warps, num_stages : launch knobs (stages = token prefetch depth of the loop).
    Returns y [B, T, H, N] in r's dtype and ``state``. No host syncs: CUDA-graph capturable.
    """
    B, T, H, N = r.shape
    check_layout(r, w, k, v, a, b, state)
    y = torch.empty_like(r)
    if T == 0 or B == 0:
        return y, state
    bv = block_v or min(16, N)
    assert N % bv == 0
    grid = (B * H, N // bv)
    wkv7_recurrent_fwd_kernel[grid](r, w, k, v, a, b, state, y, T, H=H, N=N, BLOCK_V=bv,
                                    INTERP=_INTERP, STAGES=num_stages,
                                    num_warps=num_warps or (2 if bv * N <= 1024 else 4))
    return y, state
