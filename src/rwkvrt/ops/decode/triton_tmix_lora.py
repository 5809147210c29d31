"""The decode time-mix core with the LoRA up-projections fused in (see ``rwkvrt.ops.decode``).

Grid (B*H,): one program per (sequence, head) holds the head's [N, N] fp32 state in
registers and computes, for its N channels, the four LoRA up-projections from the hidden
rows that ``grouped_gemv`` left in rkvh (tiles [N, DCH] of the [C, D] up weights, a
[64, D] slab per head, read once per token like any weight), then decay, kk, key update,
the state update and read-out, the group norm, the r_k bonus and the gate, and writes the
[N] output. Replaces the LoRA-up bmm, the tanh/sigmoid launches and the step kernel of the
general path with one launch; the up-projection results stay fp32 (no rounding to the
activation dtype before the decay / rate / gate / value-residual math).

Imports triton: only import this module on a machine that has it.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _pdl
from .._pdl import prefetch_rows, wait_prev
from ..timemix.reference import GROUP_NORM_EPS
from ..timemix.triton_fused import norm_bonus_gate, wkv_step
from ..wkv7.reference import DECAY_SCALE

L2_EPS = 1e-12
DCH = 32       # LoRA rank columns per tile step (LoRA ranks are multiples of 32)
# warps per program; None = by head count: 8 (as the general step kernel) below 32 heads, 4 from
# 32 (H100 decode b1, two runs each: 1.5B +1.8% / +1.7%, 7.2B +0.8% / +1.0%; 0.1B mixed, kept 8).
# A 128-column LoRA tile was ~+1% at 7.2B but spills (1.2 KB at 8 warps, sm_90 ptxas): kept 32.
NUM_WARPS: int | None = None


@triton.jit
def _lora_up(hid_ptr, up_ptr, s_up, c, D: tl.constexpr, DCH: tl.constexpr, N: tl.constexpr,
             CM: tl.constexpr):
    """fp32 [N]: sum_d hid[d] * up[c, d] for the N channels c. CM: the hidden rows' cache modifier
    (".cg" where another program of the same launch wrote them)."""
    acc = tl.zeros([N, DCH], dtype=tl.float32)
    for d0 in tl.static_range(0, D, DCH):
        d = d0 + tl.arange(0, DCH)
        dm = d < D
        hv = tl.load(hid_ptr + d, mask=dm, other=0.0, cache_modifier=CM).to(tl.float32)
        u = tl.load(up_ptr + c.to(tl.int64)[:, None] * s_up + d[None, :], mask=dm[None, :], other=0.0)
        acc += u.to(tl.float32) * hv[None, :]
    return tl.sum(acc, axis=1)


@triton.jit
def tmix_lora_step_kernel(rkvh_ptr, state_ptr, slots_ptr, out_ptr, vf_ptr,
                          upw_ptr, upa_ptr, upg_ptr, upv_ptr, s_up,
                          w0_ptr, a0_ptr, v0_ptr, kk_w_ptr, ka_ptr, rk_ptr, lnw_ptr, lnb_ptr,
                          s_rb, s_fb, s_ob, decay_scale, gn_eps, l2_eps,
                          OFF_W: tl.constexpr, OFF_A: tl.constexpr, OFF_G: tl.constexpr,
                          OFF_V: tl.constexpr, DW: tl.constexpr, DA: tl.constexpr, DG: tl.constexpr,
                          DV: tl.constexpr, DCH: tl.constexpr, H: tl.constexpr, N: tl.constexpr,
                          HAS_VRES: tl.constexpr, USE_PDL: tl.constexpr, UP_LINES: tl.constexpr,
                          LINE_ELEMS: tl.constexpr, EARLY_STATE: tl.constexpr):
    """Grid (B*H,). rkvh [B, 3C + sum D] rows of stride s_rb; state [S, H, N, N] fp32 in place.
    USE_PDL: prefetch this head's rows of the four up weights, then wait for the previous kernel."""
    pid = tl.program_id(0)
    h = pid % H
    C: tl.constexpr = H * N
    i = tl.arange(0, N)            # value rows (state rows, output channels)
    j = tl.arange(0, N)            # keys (state columns)
    ch = h * N + i
    if USE_PDL and UP_LINES > 0:
        prefetch_rows(upw_ptr, ch, s_up, C, UP_LINES, LINE_ELEMS)
        prefetch_rows(upa_ptr, ch, s_up, C, UP_LINES, LINE_ELEMS)
        prefetch_rows(upg_ptr, ch, s_up, C, UP_LINES, LINE_ELEMS)
        prefetch_rows(upv_ptr, ch, s_up, C, UP_LINES, LINE_ELEMS)
    # Before the wait: the parameter vectors (never written) and, with EARLY_STATE, the slot id and
    # this head's state rows, so that their DRAM / L2 round trips overlap the previous kernel
    # instead of following it. EARLY_STATE is the caller's promise that the kernel launched just
    # before this one writes neither (``rwkvrt.ops._pdl``: once this kernel runs, every kernel
    # before the previous one has completed); in the decode step that kernel is ln_gemv / a GEMV.
    b = (pid // H).to(tl.int64)
    kk_w = tl.load(kk_w_ptr + h * N + j)
    k_a = tl.load(ka_ptr + h * N + j)
    r_k = tl.load(rk_ptr + h * N + j)
    ln_w = tl.load(lnw_ptr + ch)
    ln_b = tl.load(lnb_ptr + ch)
    w0 = tl.load(w0_ptr + ch)
    a0 = tl.load(a0_ptr + ch)
    if HAS_VRES:
        v0 = tl.load(v0_ptr + ch)
    if not EARLY_STATE:
        wait_prev(USE_PDL)
    slot = tl.load(slots_ptr + b).to(tl.int64)
    s_ptrs = state_ptr + (slot * H + h) * (N * N) + i[:, None] * N + j[None, :]
    S = tl.load(s_ptrs)
    if EARLY_STATE:
        wait_prev(USE_PDL)
    row = rkvh_ptr + b * s_rb
    r = tl.load(row + h * N + j).to(tl.float32)
    k = tl.load(row + C + h * N + j).to(tl.float32)
    v = tl.load(row + 2 * C + ch).to(tl.float32)
    w = w0 + _lora_up(row + OFF_W, upw_ptr, s_up, ch, DW, DCH, N, "")
    a = tl.sigmoid(a0 + _lora_up(row + OFF_A, upa_ptr, s_up, ch, DA, DCH, N, ""))
    g = _lora_up(row + OFF_G, upg_ptr, s_up, ch, DG, DCH, N, "")
    if HAS_VRES:
        vg = v0 + _lora_up(row + OFF_V, upv_ptr, s_up, ch, DV, DCH, N, "")
        vf = tl.load(vf_ptr + b * s_fb + ch).to(tl.float32)
        v += (vf - v) * tl.sigmoid(vg)
    # w and a come out in the channel layout of i; the state update wants them along j
    S, y, kp = wkv_step(S, r, w, k, v, a, kk_w, k_a, decay_scale, l2_eps)
    o = norm_bonus_gate(y, r, kp, v, g, r_k, ln_w, ln_b, gn_eps, N)
    tl.store(out_ptr + b * s_ob + ch, o.to(out_ptr.dtype.element_ty))
    tl.store(s_ptrs, S)


def tmix_lora_step_triton(rkvh, state, slots, *, lora, up, w0, a0, v0, v_first, k_k, k_a, r_k, ln_w, ln_b,
                          num_warps: int | None = None, pdl: bool | None = None, early_state: bool = False):
    """See ``rwkvrt.ops.decode``. Parameter vectors ([C] / [H, N]) must be fp32 and contiguous.
    early_state: with PDL, read the slot ids and state rows before waiting for the previous kernel
    (only when that kernel writes neither: see the kernel)."""
    B = rkvh.shape[0]
    H, N = r_k.shape
    C = H * N
    assert rkvh.stride(1) == 1 and state.dtype == torch.float32 and state.is_contiguous()
    assert state.shape[1:] == (H, N, N) and slots.shape == (B,)
    has_v = v_first is not None
    ups = [up[n] for n in ("w", "a", "g")] + [up["v"] if has_v else up["w"]]
    s_up = ups[0].stride(0)
    assert all(u.stride(0) == s_up and u.stride(1) == 1 for u in ups), "up weights: one row stride, unit column"
    for p in (w0, a0, k_k, k_a, r_k, ln_w, ln_b) + ((v0,) if has_v else ()):
        assert p.dtype == torch.float32 and p.is_contiguous()
    (ow, dw), (oa, da), (og, dg) = lora["w"], lora["a"], lora["g"]
    ov, dv = lora["v"] if has_v else (0, DCH)
    out = torch.empty((B, C), device=rkvh.device, dtype=rkvh.dtype)
    pdl = _pdl.resolve(pdl, rkvh.device, "tmix")
    line = _pdl.L2_LINE // ups[0].element_size()
    up_lines = triton.next_power_of_2(max(1, -(-max(dw, da, dg, dv) // line))) if _pdl.PREFETCH_BUDGET > 0 else 0
    if B == 0:
        return out
    vf = v_first if has_v else rkvh
    assert vf.stride(-1) == 1
    tmix_lora_step_kernel[(B * H,)](
        rkvh, state, slots, out, vf, *ups, s_up, w0, a0, v0 if has_v else w0, k_k, k_a, r_k, ln_w, ln_b,
        rkvh.stride(0), vf.stride(0), out.stride(0), DECAY_SCALE, GROUP_NORM_EPS, L2_EPS,
        OFF_W=ow, OFF_A=oa, OFF_G=og, OFF_V=ov, DW=dw, DA=da, DG=dg, DV=dv, DCH=DCH, H=H, N=N,
        HAS_VRES=has_v, USE_PDL=pdl, UP_LINES=up_lines, LINE_ELEMS=line, EARLY_STATE=pdl and early_state,
        num_warps=num_warps or NUM_WARPS or (4 if H >= 32 else 8), launch_pdl=pdl)
    return out
