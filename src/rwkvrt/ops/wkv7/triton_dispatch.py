"""The Triton WKV7 entry point: the step kernel for small T, the chunked kernels above.

Same convention as ``rwkvrt.ops.wkv7``. The choice depends on shapes only (host-side
Python ints), so a call makes no host sync and is CUDA-graph capturable for a fixed T.

Imports triton: only import this module on a machine that has it.
"""
from __future__ import annotations

import torch

from .._rows import on_pool_rows
from .triton_chunk import wkv7_chunk_triton
from .triton_recurrent import wkv7_recurrent_triton

# Measured on an H100 (benchmarks/wkv7_sweep.py, fp16, N=64, graph-timed; docs/perf.md): the
# chunked pair with the tensor-core block-doubling inverse beats the step kernel from T=16
# (9.2 vs 13.1 us at H=32) and wins by 2-7x at 32..8192; the previous default (loop inverse,
# chunk 32, 8 prep warps) took ~99 us at T=512, H=32, this one 47.8.
CROSSOVER = 8        # T at or below: the step kernel (untimed below 16; the fused time-mix
                     # core never calls this for T <= 16 anyway)
SMALL_TOKENS = 128   # B*T at or below: chunk 16 (best at T=16..64, B=1); above: chunk 64
CHUNK_OPTS = dict(inverse="doubling", output="scan", prep_warps=4, block_v=16)


def wkv7_triton(r: torch.Tensor, w: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                a: torch.Tensor, b: torch.Tensor, state: torch.Tensor, *, slots: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """WKV7 with Triton kernels.

    r, w, k, v, a, b : [B, T, H, N] (fp32 / fp16 / bf16; made contiguous if they are not).
    state            : [B, H, N, N] float32, layout [batch, head, value, key]. Updated IN
                       PLACE when it is fp32 and contiguous (the usual case, keeping its
                       address stable for CUDA graphs); otherwise a fp32 copy is updated.
    slots            : None, or int64 [B] on the device (distinct rows): ``state`` is then an
                       fp32 contiguous pool [S, H, N, N] whose rows slots[b] are read and updated
                       in place (the chunked kernels address them directly: no gather / scatter
                       copies of the rows; the returned state is the pool).
    Returns y [B, T, H, N] in r's dtype and the final state (use the returned tensor).
    N must be a power of 2 >= 16 (RWKV-7 uses 64); other N go to the torch chunked path.
    """
    B, T, H, N = r.shape
    if slots is not None and (T <= CROSSOVER or N < 16 or N & (N - 1) or state.dtype != torch.float32
                              or not state.is_contiguous()):
        return on_pool_rows(wkv7_triton, r, w, k, v, a, b, pool=state, slots=slots)
    if N < 16 or N & (N - 1):
        from .torch_chunked import wkv7_torch_chunked
        return wkv7_torch_chunked(r, w, k, v, a, b, state)
    r, w, k, v, a, b = (x if x.is_contiguous() else x.contiguous() for x in (r, w, k, v, a, b))
    if state.dtype != torch.float32 or not state.is_contiguous():
        state = state.to(torch.float32).contiguous()
    if T <= CROSSOVER:
        return wkv7_recurrent_triton(r, w, k, v, a, b, state)
    return wkv7_chunk_triton(r, w, k, v, a, b, state, chunk_size=16 if B * T <= SMALL_TOKENS else 64,
                             slots=slots, **CHUNK_OPTS)


wkv7_triton.takes_slots = True   # ``rwkvrt.ops.timemix`` passes the pool and slots instead of gathering rows
