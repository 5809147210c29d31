"""A whole RWKV-7 layer as ONE launch for decode (see ``rwkvrt.ops.decode``: ``decode_layer``).

Why: at batch 1 a 1.5B layer is ~100 MB of weights (~35 us at the copy rate) but runs as
seven launches, each with ~3-4 us of ramp, tail and dependency latency that no bandwidth
hides. Here the seven steps are phases of one dataflow kernel. Each program takes a ticket (an
atomic counter, so tickets follow the order in which programs start) and the ticket picks its
work item, phases in order:

    LN1   B x C/SLICE   residual add + ln1 + six token-shift lerps + att_x state write
    IN    W_in rows     r, k, v and the LoRA downs with their activations
    TMIX  B x H         LoRA ups, WKV step (state in place), group norm, r_k bonus, gate
    O     Wo rows
    LN2   B x C/SLICE   residual add + ln2 + FFN lerp + ffn_x state write
    KEY   key rows      relu^2
    VAL   value rows    -> the layer's output

A program loads what does not depend on the phase before it (its weight slab, its head's
state) BEFORE it waits for that phase's done-counter, so the weight stream goes on across
phase boundaries: while the last programs of one phase finish, the resident programs of the
next already have their weights on the way. A program waits only for programs with smaller
tickets, which started before it took its own: no deadlock whatever order the hardware runs
programs in. A done-counter is bumped (release, gpu scope) after a CTA barrier; a waiter polls
it with acquire loads (gpu scope); data written by other programs is loaded with .cg (from L2,
never a stale L1 line).

Measured slower than the seven launches it replaces (H100 decode b1: 1.5B 614 vs 671 tok/s,
0.1B 2,177 vs 2,679; docs/perf.md, session 5): a phase boundary costs a chain of L2 round
trips about as long as a PDL launch boundary, and the time-mix phase sets the kernel's
register count. Opt-in (``RWKV7Fast(layer_fused=True)``), kept for that record and as a base.

Across layers: the kernels are launched with PDL and every program lets the next launch start
at once; the next layer's LN1 waits for this layer's VAL counter instead of kernel completion
(the step's counters are one [L, CNT_WIDTH] int32 tensor, zeroed at the start of the step by
``LayerScratch.begin``). Each program ends with gdc_wait, so a layer kernel completes only
after the one before it: stream order holds for whatever comes after the last layer.

Imports triton: only import this module on a machine that has it.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .._pdl import prefetch_rows
from ..timemix.reference import GROUP_NORM_EPS
from ..timemix.triton_fused import norm_bonus_gate, wkv_step
from ..token_shift.triton_lerp import _add_ln_row
from ..wkv7.reference import DECAY_SCALE
from .reference import ACT_RELU2, RowGroups
from .triton_tmix_lora import DCH, L2_EPS, _lora_up

# counters row of a layer: the ticket, one done-counter per phase, an error count
CNT_TICKET, CNT_LN1, CNT_IN, CNT_TM, CNT_O, CNT_LN2, CNT_KEY, CNT_VAL, CNT_ERR = range(9)
CNT_WIDTH = 16
SLICE = 256          # channels of a LayerNorm item's stores (its statistics use the whole row)
SLAB = 8192          # weight elements a GEMV item loads before it waits (BLOCK_N x padded K)
NUM_WARPS = 4
# register cap (0 = none). Uncapped the time-mix phase takes the kernel to ~172-182 registers
# (2 programs per SM at 4 warps); 128 gives 4 per SM for ~50 bytes of spills, but measured slower
# (H100, 1.5B decode b1: 474 capped vs 508 uncapped, one chunk per item).
MAXNREG = 0
# BN-row chunks per GEMV item (the first loaded before the wait, the rest streamed after); None =
# 4 from n_embd 2048, else 2 (H100 decode b1, uncapped: 1.5B c1 508 / c2 596 / c4 614-619 / c8 495
# / c16 278; 0.1B c1 2,016 / c2 2,153 / c4 1,774 tok/s)
NCH: int | None = None
TICKET = True        # False: program id as the ticket (assumes programs start in id order; A/B only)
UP_PREFETCH = True   # the time-mix items prefetch their LoRA-up rows into L2 before their wait
MAX_B = 4
MAX_EMBD = 2048      # the value rows are single rows of 4C: SLAB bounds 4C (padded) at 8192
SPIN_LIMIT = tl.constexpr(1 << 20)  # polls (~1 s) before a wait gives up and counts an error: a bug, never a hang
# the counter indices as the kernels see them
_TICKET, _LN1, _ERR = tl.constexpr(CNT_TICKET), tl.constexpr(CNT_LN1), tl.constexpr(CNT_ERR)
_IN, _TM, _O, _LN2, _KEY = (tl.constexpr(c) for c in (CNT_IN, CNT_TM, CNT_O, CNT_LN2, CNT_KEY))
_RELU2 = tl.constexpr(ACT_RELU2)


@triton.jit
def _ld_acquire(ptr, ASM: tl.constexpr):
    if ASM:
        return tl.inline_asm_elementwise("ld.acquire.gpu.global.b32 $0, [$1];", "=r,l", [ptr], dtype=tl.int32,
                                         is_pure=False, pack=1)
    else:  # the interpreter runs no inline asm
        return tl.atomic_add(ptr, 0, sem="acquire", scope="gpu")


@triton.jit
def _wait(cnt_ptr, target, err_ptr, ASM: tl.constexpr):
    """Spin until *cnt_ptr >= target; every poll is an acquire load at gpu scope."""
    seen = _ld_acquire(cnt_ptr, ASM)
    n = 0
    while (seen < target) & (n < SPIN_LIMIT):
        seen = _ld_acquire(cnt_ptr, ASM)
        n += 1
    if seen < target:
        tl.atomic_add(err_ptr, 1, sem="relaxed", scope="gpu")


@triton.jit
def _act(y, act):
    pos = tl.maximum(y, 0.0)
    th = 2.0 * tl.sigmoid(2.0 * y) - 1.0
    return tl.where(act == 1, pos * pos, tl.where(act == 2, th, tl.where(act == 3, tl.sigmoid(y), y)))


@triton.jit
def _gemv_item(item, w_ptr, x_ptr, sxg, xrow_ptr, act_ptr, out_ptr, so, dep_ptr, dep_target, err_ptr,
               N: tl.constexpr, K: tl.constexpr, K_PAD: tl.constexpr, BN: tl.constexpr, NCH: tl.constexpr,
               B: tl.constexpr, GROUPED: tl.constexpr, ACT: tl.constexpr, ASM: tl.constexpr):
    """Rows [item*BN*NCH, +BN*NCH) of out[b] = act(x[xrow, b] @ W.T); W [N, K], x rows of K, out
    rows of stride so. The first BN-row chunk loads before the wait; each later one is loaded
    while the one before it is multiplied."""
    n = item * (BN * NCH) + tl.arange(0, BN)
    k = tl.arange(0, K_PAD)
    kmask = k < K
    w_ptrs = w_ptr + n.to(tl.int64)[:, None] * K + k[None, :]
    w = tl.load(w_ptrs, mask=(n < N)[:, None] & kmask[None, :], other=0.0)
    if GROUPED:
        xrow = tl.load(xrow_ptr + item)
        act = tl.load(act_ptr + item)
    else:
        xrow = 0
        act = ACT
    _wait(dep_ptr, dep_target, err_ptr, ASM)
    x0 = tl.load(x_ptr + xrow * sxg + k, mask=kmask, other=0.0, cache_modifier=".cg").to(tl.float32)
    for c in tl.static_range(NCH):
        if c + 1 < NCH:
            w_next = tl.load(w_ptrs + (c + 1) * BN * K, mask=(n + (c + 1) * BN < N)[:, None] & kmask[None, :],
                             other=0.0)
        wf = w.to(tl.float32)
        for b in tl.static_range(B):
            if b == 0:
                x = x0
            else:
                x = tl.load(x_ptr + xrow * sxg + b * K + k, mask=kmask, other=0.0, cache_modifier=".cg").to(tl.float32)
            y = _act(tl.sum(wf * x[None, :], axis=1), act)
            tl.store(out_ptr + b * so + n + c * BN, y.to(out_ptr.dtype.element_ty), mask=n + c * BN < N)
        if c + 1 < NCH:
            w = w_next


@triton.jit
def _ln_item(item, x_ptr, rin_ptr, rout_ptr, lnw_ptr, lnb_ptr, prev_ptr, slots_ptr, mix_ptr, out_ptr, eps,
             dep_ptr, dep_target, err_ptr, C: tl.constexpr, BLOCK_C: tl.constexpr, SLICE: tl.constexpr,
             NS: tl.constexpr, B: tl.constexpr, M: tl.constexpr, ASM: tl.constexpr):
    """Row b, channels [lo, lo+SLICE): rout = rin + x; xn = LayerNorm(rout) (whole-row statistics);
    out[i, b] = xn + (prev[slot] - xn) * mix[i] for the M mix rows; prev[slot] = xn. As
    ``add_ln_lerp`` for one token: xn and the shifted row rounded to the activation dtype."""
    b = item // NS
    lo = (item % NS) * SLICE
    offs = tl.arange(0, BLOCK_C)
    mask = offs < C
    smask = mask & (offs >= lo) & (offs < lo + SLICE)
    w = tl.load(lnw_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    bb = tl.load(lnb_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    slot = tl.load(slots_ptr + b).to(tl.int64)
    ty = out_ptr.dtype.element_ty
    shifted = tl.load(prev_ptr + slot * C + offs, mask=smask, other=0.0, cache_modifier=".cg").to(ty).to(tl.float32)
    _wait(dep_ptr, dep_target, err_ptr, ASM)
    xn = _add_ln_row(x_ptr, rin_ptr, w, bb, rout_ptr, b * C, b * C, offs, mask, smask, C, eps, True, True, ".cg")
    xn = xn.to(ty).to(tl.float32)
    tl.store(prev_ptr + slot * C + offs, xn.to(prev_ptr.dtype.element_ty), mask=smask)
    xx = shifted - xn
    for i in tl.static_range(M):
        mix = tl.load(mix_ptr + i * C + offs, mask=smask, other=0.0).to(tl.float32)
        tl.store(out_ptr + (i * B + b) * C + offs, (xn + xx * mix).to(ty), mask=smask)


@triton.jit
def _tmix_item(item, rkvh_ptr, s_rkvh, vf_ptr, s_vf, state_ptr, slots_ptr, out_ptr, upw_ptr, upa_ptr, upg_ptr, upv_ptr,
               s_up, w0_ptr, a0_ptr, v0_ptr, kk_w_ptr, ka_ptr, rk_ptr, lnw_ptr, lnb_ptr, decay_scale, gn_eps,
               l2_eps, dep_ptr, dep_target, err_ptr, OFF_W: tl.constexpr,
               OFF_A: tl.constexpr, OFF_G: tl.constexpr, OFF_V: tl.constexpr, DW: tl.constexpr,
               DA: tl.constexpr, DG: tl.constexpr, DV: tl.constexpr, DCH: tl.constexpr, H: tl.constexpr,
               N: tl.constexpr, HAS_VRES: tl.constexpr, ASM: tl.constexpr, UP_LINES: tl.constexpr):
    """(sequence b, head h) of ``tmix_lora_step``: the state and parameters load, and the head's
    rows of the LoRA-up weights are prefetched into L2 (UP_LINES lines a row; 0 = none), before
    the wait."""
    h = item % H
    b = (item // H).to(tl.int64)
    C: tl.constexpr = H * N
    i = tl.arange(0, N)
    j = tl.arange(0, N)
    ch = h * N + i
    if UP_LINES > 0:
        prefetch_rows(upw_ptr, ch, s_up, C, UP_LINES, 64)
        prefetch_rows(upa_ptr, ch, s_up, C, UP_LINES, 64)
        prefetch_rows(upg_ptr, ch, s_up, C, UP_LINES, 64)
        if HAS_VRES:
            prefetch_rows(upv_ptr, ch, s_up, C, UP_LINES, 64)
    slot = tl.load(slots_ptr + b).to(tl.int64)
    s_ptrs = state_ptr + (slot * H + h) * (N * N) + i[:, None] * N + j[None, :]
    S = tl.load(s_ptrs, cache_modifier=".cg")
    w0 = tl.load(w0_ptr + ch)
    a0 = tl.load(a0_ptr + ch)
    kk_w = tl.load(kk_w_ptr + h * N + j)
    k_a = tl.load(ka_ptr + h * N + j)
    r_k = tl.load(rk_ptr + h * N + j)
    ln_w = tl.load(lnw_ptr + ch)
    ln_b = tl.load(lnb_ptr + ch)
    _wait(dep_ptr, dep_target, err_ptr, ASM)
    row = rkvh_ptr + b * s_rkvh
    r = tl.load(row + h * N + j, cache_modifier=".cg").to(tl.float32)
    k = tl.load(row + C + h * N + j, cache_modifier=".cg").to(tl.float32)
    v = tl.load(row + 2 * C + ch, cache_modifier=".cg").to(tl.float32)
    w = w0 + _lora_up(row + OFF_W, upw_ptr, s_up, ch, DW, DCH, N, ".cg")
    a = tl.sigmoid(a0 + _lora_up(row + OFF_A, upa_ptr, s_up, ch, DA, DCH, N, ".cg"))
    g = _lora_up(row + OFF_G, upg_ptr, s_up, ch, DG, DCH, N, ".cg")
    if HAS_VRES:
        vg = tl.load(v0_ptr + ch) + _lora_up(row + OFF_V, upv_ptr, s_up, ch, DV, DCH, N, ".cg")
        vf = tl.load(vf_ptr + b * s_vf + ch, cache_modifier=".cg").to(tl.float32)
        v += (vf - v) * tl.sigmoid(vg)
    S, y, kp = wkv_step(S, r, w, k, v, a, kk_w, k_a, decay_scale, l2_eps)
    o = norm_bonus_gate(y, r, kp, v, g, r_k, ln_w, ln_b, gn_eps, N)
    tl.store(out_ptr + b * C + ch, o.to(out_ptr.dtype.element_ty))
    tl.store(s_ptrs, S)


@triton.jit
def decode_layer_kernel(x_ptr, res_ptr, rmid_ptr, xs_ptr, rkvh_ptr, vf_ptr, tm_ptr, att_ptr, xk_ptr, hk_ptr,
                        out_ptr, attx_ptr, ffnx_ptr, wkv_ptr, slots_ptr,
                        ln1w_ptr, ln1b_ptr, mix6_ptr, ln2w_ptr, ln2b_ptr, fmix_ptr,
                        win_ptr, xrow_ptr, act_ptr, wo_ptr, wk_ptr, wv_ptr,
                        upw_ptr, upa_ptr, upg_ptr, upv_ptr, s_up,
                        w0_ptr, a0_ptr, v0_ptr, kk_ptr, ka_ptr, rk_ptr, lnxw_ptr, lnxb_ptr,
                        cnt_ptr, prev_ptr, prev_target, s_rkvh, s_vf, eps, decay_scale, gn_eps, l2_eps,
                        N_IN: tl.constexpr, C: tl.constexpr, F: tl.constexpr, H: tl.constexpr,
                        N: tl.constexpr, B: tl.constexpr, BLOCK_C: tl.constexpr, SLICE: tl.constexpr,
                        C_PAD: tl.constexpr, F_PAD: tl.constexpr, BN_IN: tl.constexpr,
                        BN_C: tl.constexpr, BN_F: tl.constexpr, NCH: tl.constexpr,
                        OFF_W: tl.constexpr, OFF_A: tl.constexpr, OFF_G: tl.constexpr, OFF_V: tl.constexpr,
                        DW: tl.constexpr, DA: tl.constexpr, DG: tl.constexpr, DV: tl.constexpr,
                        DCH: tl.constexpr, HAS_VRES: tl.constexpr, USE_PDL: tl.constexpr,
                        TICKET: tl.constexpr, ASM: tl.constexpr, UP_LINES: tl.constexpr):
    """Grid (total items,): see the module doc. cnt_ptr: this layer's counters row; prev_ptr /
    prev_target: the counter LN1 waits for (the previous layer's VAL; target 0 = none)."""
    NS: tl.constexpr = (C + SLICE - 1) // SLICE
    E_LN1: tl.constexpr = B * NS
    E_IN: tl.constexpr = E_LN1 + (N_IN + BN_IN * NCH - 1) // (BN_IN * NCH)
    E_TM: tl.constexpr = E_IN + B * H
    E_O: tl.constexpr = E_TM + (C + BN_C * NCH - 1) // (BN_C * NCH)
    E_LN2: tl.constexpr = E_O + B * NS
    E_KEY: tl.constexpr = E_LN2 + (F + BN_C * NCH - 1) // (BN_C * NCH)
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
    if TICKET:
        t = tl.atomic_add(cnt_ptr + _TICKET, 1, sem="relaxed", scope="gpu")
    else:  # program order as the ticket: relies on the hardware starting programs in id order
        t = tl.program_id(0)
    err = cnt_ptr + _ERR
    if t < E_LN1:
        _ln_item(t, x_ptr, res_ptr, rmid_ptr, ln1w_ptr, ln1b_ptr, attx_ptr, slots_ptr, mix6_ptr, xs_ptr, eps,
                 prev_ptr, prev_target, err, C, BLOCK_C, SLICE, NS, B, 6, ASM)
    elif t < E_IN:
        _gemv_item(t - E_LN1, win_ptr, xs_ptr, B * C, xrow_ptr, act_ptr, rkvh_ptr, s_rkvh, cnt_ptr + _LN1, E_LN1, err,
                   N_IN, C, C_PAD, BN_IN, NCH, B, True, 0, ASM)
    elif t < E_TM:
        _tmix_item(t - E_IN, rkvh_ptr, s_rkvh, vf_ptr, s_vf, wkv_ptr, slots_ptr, tm_ptr, upw_ptr, upa_ptr, upg_ptr,
                   upv_ptr, s_up, w0_ptr, a0_ptr, v0_ptr, kk_ptr, ka_ptr, rk_ptr, lnxw_ptr, lnxb_ptr,
                   decay_scale, gn_eps, l2_eps, cnt_ptr + _IN, E_IN - E_LN1, err, OFF_W, OFF_A, OFF_G,
                   OFF_V, DW, DA, DG, DV, DCH, H, N, HAS_VRES, ASM, UP_LINES)
    elif t < E_O:
        _gemv_item(t - E_TM, wo_ptr, tm_ptr, 0, xrow_ptr, act_ptr, att_ptr, C, cnt_ptr + _TM, E_TM - E_IN, err,
                   C, C, C_PAD, BN_C, NCH, B, False, 0, ASM)
    elif t < E_LN2:
        _ln_item(t - E_O, att_ptr, rmid_ptr, res_ptr, ln2w_ptr, ln2b_ptr, ffnx_ptr, slots_ptr, fmix_ptr, xk_ptr,
                 eps, cnt_ptr + _O, E_O - E_TM, err, C, BLOCK_C, SLICE, NS, B, 1, ASM)
    elif t < E_KEY:
        _gemv_item(t - E_LN2, wk_ptr, xk_ptr, 0, xrow_ptr, act_ptr, hk_ptr, F, cnt_ptr + _LN2, E_LN2 - E_O, err,
                   F, C, C_PAD, BN_C, NCH, B, False, _RELU2, ASM)
    else:
        _gemv_item(t - E_KEY, wv_ptr, hk_ptr, 0, xrow_ptr, act_ptr, out_ptr, C, cnt_ptr + _KEY, E_KEY - E_LN2,
                   err, C, F, F_PAD, BN_F, NCH, B, False, 0, ASM)
    phase = ((t >= E_LN1).to(tl.int32) + (t >= E_IN).to(tl.int32) + (t >= E_TM).to(tl.int32)
             + (t >= E_O).to(tl.int32) + (t >= E_LN2).to(tl.int32) + (t >= E_KEY).to(tl.int32))
    # every thread's stores are issued before the one release below
    tl.debug_barrier()
    tl.atomic_add(cnt_ptr + _LN1 + phase, 1, sem="release", scope="gpu")
    if USE_PDL:
        tl.extra.cuda.gdc_wait()


def _pdl_on(device: torch.device) -> bool:
    from .. import _pdl
    return _pdl.enabled(device, "layer")


class LayerScratch:
    """The step's buffers and counters for B sequences (one per model and batch size; reused by
    every step, so a captured graph keeps pointing at them). ``begin()`` once per step."""

    def __init__(self, *, n_layer: int, batch: int, n_embd: int, d_ffn: int, n_in: int, device, dtype):
        B, C = batch, n_embd
        self.batch, self.n_layer = B, n_layer
        e = lambda *s, dt=dtype: torch.empty(*s, device=device, dtype=dt)  # noqa: E731
        self.counters = torch.zeros(n_layer, CNT_WIDTH, device=device, dtype=torch.int32)
        self.rmid = e(B, C, dt=torch.float32)
        self.xs = e(6, B, C)
        self.rkvh0, self.rkvh = e(B, n_in), e(B, n_in)   # layer 0's keeps v_first for the others
        self.tm, self.att, self.xk, self.out = e(B, C), e(B, C), e(B, C), e(B, C)
        self.hk = e(B, d_ffn)

    def begin(self) -> None:
        self.counters.zero_()

    def errors(self) -> torch.Tensor:
        """Waits that gave up, per layer (zero unless a bug broke the phase order)."""
        return self.counters[:, CNT_ERR]


def _rows_per_item(K_pad: int, groups: RowGroups | None = None, nch: int = 1) -> int:
    """Rows per chunk: SLAB elements of padded K, halved until every group but the last is a
    multiple of rows x nch (an item never straddles two groups)."""
    bn = max(1, SLAB // K_pad)
    if groups is not None:
        while any(s % (bn * nch) for s in groups.sizes[:-1]):
            assert bn > 1, f"no chunk size fits the row groups {groups.sizes} with {nch} chunks per item"
            bn //= 2
    return bn


def decode_layer_triton(x, res, p, att_x, ffn_x, wkv, slots, v_first, scratch: LayerScratch, *, layer: int,
                        eps: float = 1e-5, pdl: bool | None = None):
    """See ``rwkvrt.ops.decode``."""
    B, C = x.shape
    H, N = p.r_k.shape
    F = p.ffn_key.shape[0]
    assert C == H * N and 1 <= B <= MAX_B and B == scratch.batch, "decode_layer: B rows of C channels"
    assert x.is_contiguous() and res.is_contiguous() and res.dtype == torch.float32 and res.shape == (B, C)
    assert att_x.is_contiguous() and ffn_x.is_contiguous() and wkv.is_contiguous() and wkv.dtype == torch.float32
    assert p.ffn_value is not None and p.ffn_value.shape == (C, F), "decode_layer needs W_value as [C, 4C]"
    c_pad, f_pad = triton.next_power_of_2(C), triton.next_power_of_2(F)
    assert f_pad <= SLAB, f"decode_layer supports n_embd up to {MAX_EMBD}"
    groups = p.in_groups
    n_in = groups.n_rows
    nch = NCH or (4 if C >= 2048 else 2)
    bn_in, bn_c, bn_f = _rows_per_item(c_pad, groups, nch), _rows_per_item(c_pad), _rows_per_item(f_pad)
    xrow, act = groups.tables(x.device, bn_in * nch)
    ns = triton.cdiv(C, SLICE)
    n_val = triton.cdiv(C, bn_f * nch)
    grid = (2 * B * ns + triton.cdiv(n_in, bn_in * nch) + B * H + triton.cdiv(C, bn_c * nch)
            + triton.cdiv(F, bn_c * nch) + n_val,)
    has_v = v_first is not None
    rkvh = scratch.rkvh if has_v else scratch.rkvh0
    assert rkvh.shape[1] >= n_in
    names = ("w", "a", "g") + (("v",) if has_v else ())
    ups = [p.up_views[n] for n in names] + ([] if has_v else [p.up_views["w"]])
    s_up = ups[0].stride(0)
    assert all(u.stride(0) == s_up and u.stride(1) == 1 for u in ups), "up weights: one row stride, unit column"
    (ow, dw), (oa, da), (og, dg) = p.lora_cols["w"], p.lora_cols["a"], p.lora_cols["g"]
    ov, dv = p.lora_cols["v"] if has_v else (0, DCH)
    vf = v_first if has_v else rkvh
    cnt = scratch.counters[layer]
    prev, prev_target = (scratch.counters[layer - 1, CNT_VAL:], n_val) if layer > 0 else (cnt, 0)
    use_pdl = _pdl_on(x.device) if pdl is None else bool(pdl) and _pdl_on(x.device)
    interp = os.environ.get("TRITON_INTERPRET") == "1"
    decode_layer_kernel[grid](
        x, res, scratch.rmid, scratch.xs, rkvh, vf, scratch.tm, scratch.att, scratch.xk, scratch.hk, scratch.out,
        att_x, ffn_x, wkv, slots, p.ln1[0], p.ln1[1], p.mix6, p.ln2[0], p.ln2[1], p.ffn_mix,
        p.W_in, xrow, act, p.Wo, p.ffn_key, p.ffn_value, *ups, s_up,
        p.w0, p.a0, p.v0 if has_v else p.w0, p.k_k, p.k_a, p.r_k, p.ln_x[0], p.ln_x[1],
        cnt, prev, prev_target, rkvh.stride(0), vf.stride(0), float(eps), DECAY_SCALE, GROUP_NORM_EPS, L2_EPS,
        N_IN=n_in, C=C, F=F, H=H, N=N, B=B, BLOCK_C=c_pad, SLICE=SLICE, C_PAD=c_pad, F_PAD=f_pad,
        BN_IN=bn_in, BN_C=bn_c, BN_F=bn_f, NCH=nch, OFF_W=ow, OFF_A=oa, OFF_G=og, OFF_V=ov, DW=dw, DA=da, DG=dg, DV=dv,
        DCH=DCH, HAS_VRES=has_v, USE_PDL=use_pdl, TICKET=TICKET or interp, ASM=not interp,
        UP_LINES=0 if interp or not UP_PREFETCH else triton.next_power_of_2(triton.cdiv(max(dw, da, dg, dv) * 2, 128)),
        num_warps=NUM_WARPS,
        maxnreg=MAXNREG or None, launch_pdl=use_pdl and layer > 0)
    return scratch.out, rkvh

