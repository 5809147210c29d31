"""GEMV + residual add + LayerNorm + token-shift lerps in one decode launch (see ``rwkvrt.ops.decode``).

At batch 1..8 the add_ln_lerp that follows a GEMV (Wo -> ln2; ffn value -> the next layer's
ln1) is a separate ~4-5 us launch on the GPU for a few KB of work. Here the GEMV's programs
(the main loop of ``triton_gemv.grouped_gemv_kernel``, called as a device function, so the
products are the same) write their output rows to a scratch buffer, then each program bumps a
device counter once; the program that bumps it last (old value == programs - 1) sees every
row and runs add_ln_lerp for the batch rows, then resets the counter to 0.

Memory ordering (the whole risk of the pattern):
  - each program stores its rows, then ``tl.debug_barrier()`` (bar.sync: every thread of the
    program has issued its stores), then ONE scalar ``atomic_add(sem="acq_rel", scope="gpu")``:
    the release publishes this program's stores (release is cumulative over the barrier);
  - the last program's acquire makes every other program's stores visible; it reads the rows
    with ``cache_modifier=".cg"`` (L2, never a stale L1 line), computes, stores, then writes
    the counter back to 0 with an atomic exchange. No program ever waits on another (no spin),
    so the pattern cannot deadlock whatever the scheduling.
  - PDL: ``wait_prev`` (inside the GEMV helper) runs before any load or store; the next kernel's
    gdc_wait waits for this whole grid, the last program's epilogue included.

The epilogue walks each row in LN_CHUNK-wide chunks (three passes: sum, centred sum of squares,
output) so that its registers do not grow with C and stay at the plain GEMV's. The arithmetic
and its roundings are those of ``add_ln_lerp_fwd_kernel``: x + residual rounded to residual's
dtype, mean, the two-pass variance, ``d * (1/sqrt(var + eps)) * w + b`` rounded to the
activation dtype, the shifted row rounded to it too; only the order of the two row sums differs
when C > LN_CHUNK (sum of chunk sums), so the normed row may differ from the unfused kernel's in
the last bit there.

Imports triton: only import this module on a machine that has it.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _pdl
from .reference import ACT_NONE, RowGroups
from .triton_gemv import MAX_M, NUM_WARPS, STAGES, grouped_gemv_kernel, pick_blocks

# channels per epilogue step. sm_90 ptxas, fp16, K 2048, 4 warps, B 1: 512 -> 40 registers (the
# plain GEMV's 40: the epilogue costs the GEMV no occupancy), 1024 -> 55, 2048 -> 79 (108 with 6 mix rows)
LN_CHUNK = 512


@triton.jit
def _ln_row_epilogue(out_ptr, res_ptr, lnw_ptr, lnb_ptr, prev_ptr, slots_ptr, mix_ptr, lerp_ptr, newres_ptr,
                     M, C, som, srb, spb, smix, eps,
                     MIX: tl.constexpr, HAS_SLOTS: tl.constexpr, CHUNK: tl.constexpr):
    """add_ln_lerp of the M rows of out (the GEMV result, read through L2) into lerp / newres / prev."""
    ty = lerp_ptr.dtype.element_ty
    BC = M * C
    # while, not range(): the Triton 3.6 interpreter cannot range() over a runtime scalar
    b = tl.full([], 0, tl.int64)
    while b < M:
        x_row = out_ptr + b * som
        r_row = res_ptr + b * srb
        n_row = newres_ptr + b * C
        if HAS_SLOTS:
            slot = tl.load(slots_ptr + b).to(tl.int64)
        else:
            slot = b
        p_row = prev_ptr + slot * spb
        # pass 1: h = x + residual as stored in residual's dtype; its sum
        s = 0.0
        c0 = tl.full([], 0, tl.int32)
        while c0 < C:
            offs = c0 + tl.arange(0, CHUNK)
            c0 += CHUNK
            mask = offs < C
            h = tl.load(r_row + offs, mask=mask, other=0.0).to(tl.float32)
            h += tl.load(x_row + offs, mask=mask, other=0.0, cache_modifier=".cg").to(tl.float32)
            h_st = h.to(newres_ptr.dtype.element_ty)
            tl.store(n_row + offs, h_st, mask=mask)
            s += tl.sum(h_st.to(tl.float32), axis=0)
        mean = s / C
        # pass 2: centred sum of squares (two-pass variance, as add_ln_lerp)
        q = 0.0
        c0 = tl.full([], 0, tl.int32)
        while c0 < C:
            offs = c0 + tl.arange(0, CHUNK)
            c0 += CHUNK
            mask = offs < C
            h = tl.load(r_row + offs, mask=mask, other=0.0).to(tl.float32)
            h += tl.load(x_row + offs, mask=mask, other=0.0, cache_modifier=".cg").to(tl.float32)
            h = h.to(newres_ptr.dtype.element_ty).to(tl.float32)
            d = tl.where(mask, h - mean, 0.0)
            q += tl.sum(d * d, axis=0)
        rstd = 1.0 / tl.sqrt(q / C + eps)
        # pass 3: normed row (rounded to the activation dtype), state write, lerps
        c0 = tl.full([], 0, tl.int32)
        while c0 < C:
            offs = c0 + tl.arange(0, CHUNK)
            c0 += CHUNK
            mask = offs < C
            h = tl.load(r_row + offs, mask=mask, other=0.0).to(tl.float32)
            h += tl.load(x_row + offs, mask=mask, other=0.0, cache_modifier=".cg").to(tl.float32)
            h = h.to(newres_ptr.dtype.element_ty).to(tl.float32)
            d = tl.where(mask, h - mean, 0.0)
            w = tl.load(lnw_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            bb = tl.load(lnb_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            xn = (d * rstd * w + bb).to(ty).to(tl.float32)
            # the same thread reads then overwrites each element of the state row: no race
            shifted = tl.load(p_row + offs, mask=mask, other=0.0).to(ty).to(tl.float32)
            tl.store(p_row + offs, xn.to(prev_ptr.dtype.element_ty), mask=mask)
            xx = shifted - xn
            for i in tl.static_range(MIX):
                mix = tl.load(mix_ptr + i * smix + offs, mask=mask, other=0.0).to(tl.float32)
                tl.store(lerp_ptr + i * BC + b * C + offs, (xn + xx * mix).to(ty), mask=mask)
        b += 1


@triton.jit
def gemv_add_ln_lerp_kernel(x_ptr, w_ptr, out_ptr, xrow_ptr, M, N, sxg, sxm, som,
                            res_ptr, lnw_ptr, lnb_ptr, prev_ptr, slots_ptr, mix_ptr, lerp_ptr, newres_ptr,
                            counter_ptr, srb, spb, smix, eps,
                            K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                            M_PAD: tl.constexpr, EVEN_N: tl.constexpr, STAGES: tl.constexpr,
                            USE_PDL: tl.constexpr, PF_LINES: tl.constexpr, LINE_ELEMS: tl.constexpr,
                            MIX: tl.constexpr, HAS_SLOTS: tl.constexpr, CHUNK: tl.constexpr):
    """Grid (cdiv(N, BLOCK_N),): out = xs[xrow] @ W.T (rows of this program), then the last
    program to finish runs add_ln_lerp on all M rows (module docstring)."""
    # by keyword: a parameter added to the GEMV kernel cannot silently shift these
    grouped_gemv_kernel(x_ptr=x_ptr, w_ptr=w_ptr, out_ptr=out_ptr, xrow_ptr=xrow_ptr, act_ptr=xrow_ptr, M=M, N=N,
                        sxg=sxg, sxm=sxm, som=som, K=K, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, M_PAD=M_PAD,
                        HAS_ACT=False, EVEN_N=EVEN_N, STAGES=STAGES, USE_PDL=USE_PDL, PF_LINES=PF_LINES,
                        LINE_ELEMS=LINE_ELEMS)
    # every thread's output stores are issued before the one release below
    tl.debug_barrier()
    old = tl.atomic_add(counter_ptr, 1, sem="acq_rel", scope="gpu")
    if old == tl.num_programs(0) - 1:
        _ln_row_epilogue(out_ptr, res_ptr, lnw_ptr, lnb_ptr, prev_ptr, slots_ptr, mix_ptr, lerp_ptr, newres_ptr,
                         M, N, som, srb, spb, smix, eps, MIX, HAS_SLOTS, CHUNK)
        # after the work: the next launch on this counter starts from 0
        tl.atomic_xchg(counter_ptr, 0, sem="relaxed", scope="gpu")


def gemv_add_ln_lerp_triton(xs: torch.Tensor, W: torch.Tensor, groups: RowGroups, x_scratch: torch.Tensor,
                            res: torch.Tensor, ln_w: torch.Tensor, ln_b: torch.Tensor, x_prev: torch.Tensor,
                            mix: torch.Tensor, *, eps: float, slots: torch.Tensor | None, counter: torch.Tensor,
                            pdl: bool | None = None,
                            ln_chunk: int = LN_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """See ``rwkvrt.ops.decode`` (``gemv_add_ln_lerp``): (lerps [Mx, B, 1, C], new_res [B, 1, C]).

    x_scratch [B, C] is written (the GEMV result), x_prev rows ``slots`` are updated in place,
    counter (int32 [1], zero on entry) is left zero. ln_chunk: epilogue channels per step (power of 2;
    tests use a small one to exercise several steps on small rows)."""
    G, B, K = xs.shape
    C = W.shape[0]
    assert W.shape == (C, K) and W.is_contiguous(), "W must be a contiguous [C, K]"
    assert len(groups.sizes) == 1 and groups.n_rows == C and groups.acts[0] == ACT_NONE, \
        "gemv_add_ln_lerp takes one row group without activation"
    assert xs.stride(2) == 1, "xs needs unit stride along K"
    assert 1 <= B <= MAX_M, f"gemv_add_ln_lerp takes 1..{MAX_M} batch rows"
    assert x_scratch.shape == (B, C) and x_scratch.stride(1) == 1
    assert res.shape == (B, 1, C) and res.stride(-1) == 1
    assert x_prev.dim() == 2 and x_prev.shape[1] == C and x_prev.stride(1) == 1, "x_prev must be a [S, C] pool"
    assert counter.dtype == torch.int32 and counter.numel() == 1 and counter.device == W.device
    mix = mix.reshape(-1, C)
    if mix.stride(-1) != 1:
        mix = mix.contiguous()
    Mx = mix.shape[0]
    act = x_scratch.dtype
    lerps = torch.empty((Mx, B, 1, C), device=W.device, dtype=act)
    new_res = torch.empty((B, 1, C), device=W.device, dtype=res.dtype)
    bn, bk = pick_blocks(C, K, groups)
    assert K % bk == 0
    xrow, _ = groups.tables(W.device, bn)
    if slots is not None:
        slots = slots.to(device=W.device, dtype=torch.int64)
    # a GEMV launch for the PDL A/B knob (RWKVRT_PDL_OFF=gemv turns it off too)
    pdl = _pdl.resolve(pdl, W.device, "gemv")
    line = _pdl.L2_LINE // W.element_size()
    gemv_add_ln_lerp_kernel[(triton.cdiv(C, bn),)](
        xs, W, x_scratch, xrow, B, C, xs.stride(0), xs.stride(1), x_scratch.stride(0),
        res, ln_w.contiguous(), ln_b.contiguous(), x_prev, slots if slots is not None else x_prev, mix,
        lerps, new_res, counter, res.stride(0), x_prev.stride(0), mix.stride(0), float(eps),
        K=K, BLOCK_N=bn, BLOCK_K=bk, M_PAD=triton.next_power_of_2(B), EVEN_N=C % bn == 0, STAGES=STAGES,
        USE_PDL=pdl, PF_LINES=_pdl.prefetch_lines(C, K * W.element_size()), LINE_ELEMS=line,
        MIX=Mx, HAS_SLOTS=slots is not None, CHUNK=min(triton.next_power_of_2(C), ln_chunk),
        num_warps=NUM_WARPS, launch_pdl=pdl)
    return lerps, new_res
