"""The time-mix core in Triton: one launch per layer for decode, three for prefill.

Same convention as ``rwkvrt.ops.timemix`` (see its docstring), plus slot addressing:

    out, state = tmix_core_triton(r, w, k, v, a, g, state, *, k_k, k_a, r_k, ln_w, ln_b,
                                  wkv=None, slots=None, w0=None, a0=None,
                                  v0=None, v_first=None, v_gate=None,
                                  block_v=None, num_warps=None)

    r, w, k, v, a, g : [B, T, C] any float dtype (the activation dtype), unit stride along
        C; the batch and time strides are free (views into a wider projection are fine).
    state : [S, H, N, N] float32 contiguous pool, layout [slot, head, value, key], UPDATED
        IN PLACE (rows ``slots`` only; the returned tensor is ``state`` itself).
    slots : [B] integer tensor on state's device, the pool row of each batch row, distinct;
        None means arange(B) (then S >= B and rows B.. are untouched).
    wkv   : a wkv7 function (``rwkvrt.ops.wkv7`` convention) for the recurrence when
        T > DECODE_MAX_T (e.g. a chunked kernel); None runs the fused step kernel for any T.
    w0, a0, v0 : [C] optional, and v_first, v_gate : [B, T, C] optional (all three v ones or
        none): element-wise pre-steps folded into the kernel so decode launches nothing for
        them. With w0, ``w`` is the LoRA part and the decay logit is w + w0; with a0, ``a`` is
        the raw logit and the rate is sigmoid(a + a0); with v_first, ``v`` is the raw value
        projection and the core uses v + (v_first - v) * sigmoid(v_gate + v0) (v_gate = the
        raw (xv @ v1) @ v2). Without them the inputs mean what ``rwkvrt.ops.timemix`` says.
    block_v, num_warps : launch knobs of the step kernel (value rows per program, warps);
        None takes DECODE_BLOCK_V / DECODE_NUM_WARPS[block_v].
    out   : [B, T, C] in r's dtype, new tensor; all internal math is float32.

Step path (T <= DECODE_MAX_T, or wkv=None): grid (B*H, N // block_v); each program
keeps a [block_v, N] block of one head's fp32 state in registers for the T steps and
computes decay, kk normalisation, key update, state update and read-out. With
block_v == N (the default) the same program also does the group norm, r_k bonus and
gate: ONE launch per layer, whose only memory traffic is the inputs, the output and
one read + one write of the state rows. With block_v < N the group norm needs the
whole head, so the step kernel writes y (fp32 scratch) and the post-kernel finishes.

Prefill path (T > DECODE_MAX_T and wkv given): pre-kernel (k', -kk, kk*a, w + w0, value
residual), ``wkv``,
post-kernel (group norm, bonus, gate). With slots the recurrence runs on a gathered
copy of the state rows that is scattered back (prefill is compute bound; the copy
is H*N*N*4 bytes per row, negligible next to T tokens of matmuls).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._rows import on_pool_rows
from ..wkv7.reference import DECAY_SCALE
from .reference import GROUP_NORM_EPS

# Above this many tokens per call the recurrence goes to ``wkv`` (a chunked kernel wins there).
DECODE_MAX_T = 16
# Value rows per program of the step kernel. N (=64) keeps the whole head in one program, so
# the group norm fuses and decode is ONE launch per layer; at T=1 the kernel is latency bound
# (one round trip for the state rows), and B*H programs fill the GPU once B*H >= ~132.
# 16 / 32 give 4x / 2x the programs (more SMs pulling state at batch 1) but add the post
# launch and an fp32 y round trip: tune on the device (bench both at B=1 and B=32).
DECODE_BLOCK_V = 64
# Warps per step program, by block_v. ptxas for sm_90 (bf16 activations, fused epilogue):
# block_v 64 -> 159 registers at 4 warps, 104 at 8 (no spills either way; 8 halves the
# per-thread share of each reduction); block_v 32 / 16 at 4 warps -> 80 / 72 registers.
DECODE_NUM_WARPS = {64: 8, 32: 4, 16: 4, 8: 4, 4: 4}
# Rows (tokens) per program of the pre/post kernels.
PREFILL_BLOCK_T = 16
# F.normalize's clamp on the norm.
L2_EPS = 1e-12


@triton.jit
def wkv_step(S, r, w, k, v, a, kk_w, k_a, decay_scale, l2_eps):
    """One token of one head, fp32. S [rows, N] state block (value rows x keys); r, w, k, a,
    kk_w, k_a [N] along keys; v [rows]. Returns (new S, y = S_new @ r [rows], k' [N])."""
    decay = tl.exp(-decay_scale * tl.sigmoid(w))
    kk = k * kk_w
    kk = kk / tl.maximum(tl.sqrt(tl.sum(kk * kk, axis=0)), l2_eps)
    kp = k * (1.0 + (a - 1.0) * k_a)
    # S = S*decay + (S @ -kk) (kk*a)^T + v k'^T ; y = S @ r
    sa = tl.sum(S * kk[None, :], axis=1)
    S = S * decay[None, :] - sa[:, None] * (kk * a)[None, :] + v[:, None] * kp[None, :]
    return S, tl.sum(S * r[None, :], axis=1), kp


@triton.jit
def norm_bonus_gate(y, r, kp, v, g, r_k, ln_w, ln_b, gn_eps, N: tl.constexpr):
    """The head's output, fp32 [N]: (group_norm(y) * ln_w + ln_b + sum(r * k' * r_k) * v) * g."""
    mean = tl.sum(y, axis=0) / N
    d = y - mean
    var = tl.sum(d * d, axis=0) / N
    yn = d / tl.sqrt(var + gn_eps) * ln_w + ln_b
    bonus = tl.sum(r * kp * r_k, axis=0)
    return (yn + bonus * v) * g


@triton.jit
def tmix_step_fwd_kernel(
        r_ptr, w_ptr, k_ptr, v_ptr, a_ptr, g_ptr, out_ptr, state_ptr, slots_ptr,
        kk_w_ptr, ka_ptr, rk_ptr, lnw_ptr, lnb_ptr, w0_ptr, a0_ptr, v0_ptr, vf_ptr, vg_ptr,
        srb, srt, swb, swt, skb, skt, svb, svt, sab, sat, sgb, sgt, sfb, sft, shb, sht,
        T, H, decay_scale, gn_eps, l2_eps,
        HAS_SLOTS: tl.constexpr, FUSE_NORM: tl.constexpr, HAS_W0: tl.constexpr,
        HAS_A0: tl.constexpr, HAS_VRES: tl.constexpr, N: tl.constexpr, BLOCK_V: tl.constexpr):
    """Grid (B*H, N // BLOCK_V). FUSE_NORM (BLOCK_V == N): out = final output in out's dtype;
    else out is an fp32 [B, T, C] scratch receiving y (the raw read-out) for these rows.
    HAS_W0: w += w0.  HAS_A0: a = sigmoid(a + a0).  HAS_VRES: v += (v_first - v) * sigmoid(v_gate + v0)
    (v_first at vf_ptr with strides sfb/sft, v_gate at vg_ptr with shb/sht)."""
    pid = tl.program_id(0)
    vb = tl.program_id(1)
    b = pid // H
    h = pid % H
    if HAS_SLOTS:
        slot = tl.load(slots_ptr + b).to(tl.int64)
    else:
        slot = b.to(tl.int64)
    b = b.to(tl.int64)
    # i: value rows of this program (state rows, output channels); j: keys (state columns)
    i = vb * BLOCK_V + tl.arange(0, BLOCK_V)
    j = tl.arange(0, N)
    cj = h * N + j
    ci = h * N + i
    s_ptrs = state_ptr + (slot * H + h) * (N * N) + i[:, None] * N + j[None, :]
    S = tl.load(s_ptrs)
    kk_w = tl.load(kk_w_ptr + cj).to(tl.float32)
    k_a = tl.load(ka_ptr + cj).to(tl.float32)
    if FUSE_NORM:
        r_k = tl.load(rk_ptr + cj).to(tl.float32)
        ln_w = tl.load(lnw_ptr + ci).to(tl.float32)
        ln_b = tl.load(lnb_ptr + ci).to(tl.float32)
    if HAS_W0:
        w0 = tl.load(w0_ptr + cj).to(tl.float32)
    if HAS_A0:
        a0 = tl.load(a0_ptr + cj).to(tl.float32)
    if HAS_VRES:
        v0 = tl.load(v0_ptr + ci).to(tl.float32)
    C = H * N
    # pointers advance by the time strides (64-bit pointer arithmetic, no t * stride overflow)
    r_p = r_ptr + b * srb + cj
    w_p = w_ptr + b * swb + cj
    k_p = k_ptr + b * skb + cj
    a_p = a_ptr + b * sab + cj
    v_p = v_ptr + b * svb + ci
    g_p = g_ptr + b * sgb + ci
    f_p = vf_ptr + b * sfb + ci
    q_p = vg_ptr + b * shb + ci
    o_p = out_ptr + b * T * C + ci
    # a while loop: the Triton 3.6 interpreter cannot iterate range(T) over a runtime scalar
    t = 0
    while t < T:
        r = tl.load(r_p).to(tl.float32)
        w = tl.load(w_p).to(tl.float32)
        k = tl.load(k_p).to(tl.float32)
        a = tl.load(a_p).to(tl.float32)
        v = tl.load(v_p).to(tl.float32)
        if HAS_W0:
            w += w0
        if HAS_A0:
            a = tl.sigmoid(a + a0)
        if HAS_VRES:
            vf = tl.load(f_p).to(tl.float32)
            vg = tl.load(q_p).to(tl.float32)
            v += (vf - v) * tl.sigmoid(vg + v0)
        S, y, kp = wkv_step(S, r, w, k, v, a, kk_w, k_a, decay_scale, l2_eps)
        if FUSE_NORM:
            g = tl.load(g_p).to(tl.float32)
            o = norm_bonus_gate(y, r, kp, v, g, r_k, ln_w, ln_b, gn_eps, N)
            tl.store(o_p, o.to(out_ptr.dtype.element_ty))
        else:
            tl.store(o_p, y)
        r_p += srt
        w_p += swt
        k_p += skt
        a_p += sat
        v_p += svt
        g_p += sgt
        f_p += sft
        q_p += sht
        o_p += C
        t += 1
    tl.store(s_ptrs, S)


@triton.jit
def _token_rows(BT, T, BLOCK_T: tl.constexpr, N: tl.constexpr):
    """Grid (cdiv(B*T, BLOCK_T), H): this program's head, token rows (int64) and their mask,
    batch and time index of each row, and the arange over the head's channels."""
    rows = (tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    return tl.program_id(1), rows, rows < BT, rows // T, rows % T, tl.arange(0, N)


@triton.jit
def tmix_pre_fwd_kernel(
        k_ptr, a_ptr, w_ptr, v_ptr, vf_ptr, vg_ptr, kk_w_ptr, ka_ptr, w0_ptr, a0_ptr, v0_ptr,
        kp_ptr, nkk_ptr, kka_ptr, weff_ptr, veff_ptr,
        skb, skt, sab, sat, swb, swt, svb, svt, sfb, sft, shb, sht,
        BT, T, H, l2_eps,
        HAS_W0: tl.constexpr, HAS_A0: tl.constexpr, HAS_VRES: tl.constexpr,
        BLOCK_T: tl.constexpr, N: tl.constexpr):
    """Grid (cdiv(B*T, BLOCK_T), H): k' = k*(1+(a-1)*k_a), -kk, kk*a -> contiguous [B,T,H,N].
    HAS_A0: a = sigmoid(a + a0) first. HAS_W0: also writes w + w0 to weff. HAS_VRES: also writes
    v + (v_first - v) * sigmoid(v_gate + v0) to veff (both contiguous, activation dtype): the
    wkv inputs, so prefill runs no separate element-wise launches for them."""
    h, rows, rmask, b, t, j = _token_rows(BT, T, BLOCK_T, N)
    cj = h * N + j
    m2 = rmask[:, None]
    k = tl.load(k_ptr + (b * skb + t * skt)[:, None] + cj[None, :], mask=m2, other=0.0).to(tl.float32)
    a = tl.load(a_ptr + (b * sab + t * sat)[:, None] + cj[None, :], mask=m2, other=0.0).to(tl.float32)
    if HAS_A0:
        a = tl.sigmoid(a + tl.load(a0_ptr + cj).to(tl.float32)[None, :])
    kk_w = tl.load(kk_w_ptr + cj).to(tl.float32)
    k_a = tl.load(ka_ptr + cj).to(tl.float32)
    kk = k * kk_w[None, :]
    kk = kk / tl.maximum(tl.sqrt(tl.sum(kk * kk, axis=1)), l2_eps)[:, None]
    kp = k * (1.0 + (a - 1.0) * k_a[None, :])
    o = rows[:, None] * (H * N) + cj[None, :]
    ty = kp_ptr.dtype.element_ty
    tl.store(kp_ptr + o, kp.to(ty), mask=m2)
    tl.store(nkk_ptr + o, (-kk).to(ty), mask=m2)
    tl.store(kka_ptr + o, (kk * a).to(ty), mask=m2)
    if HAS_W0:
        w = tl.load(w_ptr + (b * swb + t * swt)[:, None] + cj[None, :], mask=m2, other=0.0).to(tl.float32)
        tl.store(weff_ptr + o, (w + tl.load(w0_ptr + cj).to(tl.float32)[None, :]).to(ty), mask=m2)
    if HAS_VRES:
        v = tl.load(v_ptr + (b * svb + t * svt)[:, None] + cj[None, :], mask=m2, other=0.0).to(tl.float32)
        vf = tl.load(vf_ptr + (b * sfb + t * sft)[:, None] + cj[None, :], mask=m2, other=0.0).to(tl.float32)
        vg = tl.load(vg_ptr + (b * shb + t * sht)[:, None] + cj[None, :], mask=m2, other=0.0).to(tl.float32)
        v += (vf - v) * tl.sigmoid(vg + tl.load(v0_ptr + cj).to(tl.float32)[None, :])
        tl.store(veff_ptr + o, v.to(ty), mask=m2)


@triton.jit
def tmix_post_fwd_kernel(
        y_ptr, r_ptr, k_ptr, v_ptr, a_ptr, g_ptr, ka_ptr, rk_ptr, lnw_ptr, lnb_ptr, out_ptr,
        a0_ptr, v0_ptr, vf_ptr, vg_ptr,
        syb, syt, srb, srt, skb, skt, svb, svt, sab, sat, sgb, sgt, sfb, sft, shb, sht,
        BT, T, H, gn_eps,
        HAS_A0: tl.constexpr, HAS_VRES: tl.constexpr, BLOCK_T: tl.constexpr, N: tl.constexpr):
    """Grid (cdiv(B*T, BLOCK_T), H): out = (group_norm(y)*ln_w + ln_b + sum(r*k'*r_k)*v) * g."""
    h, rows, rmask, b, t, j = _token_rows(BT, T, BLOCK_T, N)
    cj = (h * N + j)[None, :]
    m2 = rmask[:, None]
    y = tl.load(y_ptr + (b * syb + t * syt)[:, None] + cj, mask=m2, other=0.0).to(tl.float32)
    r = tl.load(r_ptr + (b * srb + t * srt)[:, None] + cj, mask=m2, other=0.0).to(tl.float32)
    k = tl.load(k_ptr + (b * skb + t * skt)[:, None] + cj, mask=m2, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + (b * svb + t * svt)[:, None] + cj, mask=m2, other=0.0).to(tl.float32)
    a = tl.load(a_ptr + (b * sab + t * sat)[:, None] + cj, mask=m2, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + (b * sgb + t * sgt)[:, None] + cj, mask=m2, other=0.0).to(tl.float32)
    k_a = tl.load(ka_ptr + cj).to(tl.float32)
    r_k = tl.load(rk_ptr + cj).to(tl.float32)
    ln_w = tl.load(lnw_ptr + cj).to(tl.float32)
    ln_b = tl.load(lnb_ptr + cj).to(tl.float32)
    if HAS_A0:
        a = tl.sigmoid(a + tl.load(a0_ptr + cj).to(tl.float32))
    if HAS_VRES:
        vf = tl.load(vf_ptr + (b * sfb + t * sft)[:, None] + cj, mask=m2, other=0.0).to(tl.float32)
        vg = tl.load(vg_ptr + (b * shb + t * sht)[:, None] + cj, mask=m2, other=0.0).to(tl.float32)
        v += (vf - v) * tl.sigmoid(vg + tl.load(v0_ptr + cj).to(tl.float32))
    # k' recomputed in fp32 rather than read back rounded from the pre-kernel
    kp = k * (1.0 + (a - 1.0) * k_a)
    mean = tl.sum(y, axis=1) / N
    d = y - mean[:, None]
    var = tl.sum(d * d, axis=1) / N
    yn = d / tl.sqrt(var + gn_eps)[:, None] * ln_w + ln_b
    bonus = tl.sum(r * kp * r_k, axis=1)
    o = (yn + bonus[:, None] * v) * g
    tl.store(out_ptr + rows[:, None] * (H * N) + cj, o.to(out_ptr.dtype.element_ty), mask=m2)


def _bt_strides(*ts: torch.Tensor) -> list[int]:
    """Batch and time strides of each [B, T, C] tensor (unit stride along C is required)."""
    out: list[int] = []
    for t in ts:
        assert t.stride(-1) == 1, "activations need unit stride along C"
        out += [t.stride(0), t.stride(1)]
    return out


def _unit_c(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _params(k_k, k_a, r_k, ln_w, ln_b):
    return tuple(p.reshape(-1).contiguous() for p in (k_k, k_a, r_k, ln_w, ln_b))


def _fused_inputs(fx: dict, dummy: torch.Tensor, *names: str) -> list:
    """The optional fused-input pointers (``dummy`` where absent) then the v_first / v_gate strides."""
    ptrs = [fx[n] if fx[n] is not None else dummy for n in names]
    vres = fx["v_first"] is not None
    strides = _bt_strides(fx["v_first"], fx["v_gate"]) if vres else [0, 0, 0, 0]
    return ptrs + strides


def _post(y, r, k, v, a, g, params, out, H: int, N: int, fx: dict):
    """Post-kernel launch: y [B, T, C] (unit C stride, any float dtype) -> out [B, T, C] contiguous."""
    B, T, _ = r.shape
    _, k_a, r_k, ln_w, ln_b = params
    extra = _fused_inputs(fx, k_a, "a0", "v0", "v_first", "v_gate")
    grid = (triton.cdiv(B * T, PREFILL_BLOCK_T), H)
    tmix_post_fwd_kernel[grid](
        y, r, k, v, a, g, k_a, r_k, ln_w, ln_b, out, *extra[:4], *_bt_strides(y, r, k, v, a, g),
        *extra[4:], B * T, T, H, GROUP_NORM_EPS,
        HAS_A0=fx["a0"] is not None, HAS_VRES=fx["v_first"] is not None,
        BLOCK_T=PREFILL_BLOCK_T, N=N, num_warps=4)
    return out


def _step(r, w, k, v, a, g, state, slots, params, fx: dict, block_v: int, num_warps: int):
    """The step path; ``state`` rows are updated in place. One launch when block_v == N."""
    B, T, C = r.shape
    H, N = state.shape[1], state.shape[-1]
    out = torch.empty((B, T, C), device=r.device, dtype=r.dtype)
    fuse = block_v == N
    # the split path's raw read-out, kept in fp32 so the group norm sees unrounded y
    y = out if fuse else torch.empty((B, T, C), device=r.device, dtype=torch.float32)
    kk_w, k_a, r_k, ln_w, ln_b = params
    extra = _fused_inputs(fx, kk_w, "w0", "a0", "v0", "v_first", "v_gate")
    tmix_step_fwd_kernel[(B * H, N // block_v)](
        r, w, k, v, a, g, y, state, slots if slots is not None else state,
        kk_w, k_a, r_k, ln_w, ln_b, *extra[:5], *_bt_strides(r, w, k, v, a, g), *extra[5:],
        T, H, DECAY_SCALE, GROUP_NORM_EPS, L2_EPS,
        HAS_SLOTS=slots is not None, FUSE_NORM=fuse, HAS_W0=fx["w0"] is not None,
        HAS_A0=fx["a0"] is not None, HAS_VRES=fx["v_first"] is not None,
        N=N, BLOCK_V=block_v, num_warps=num_warps)
    if not fuse:
        _post(y, r, k, v, a, g, params, out, H, N, fx)
    return out


def _prefill(r, w, k, v, a, g, state, slots, params, fx: dict, wkv):
    """Pre-kernel (with w0 / a0 / value residual folded in), ``wkv`` recurrence, post-kernel;
    ``state`` rows are updated in place."""
    B, T, C = r.shape
    H, N = state.shape[1], state.shape[-1]
    kk_w, k_a, _, _, _ = params
    new = lambda: torch.empty((B, T, H, N), device=r.device, dtype=r.dtype)  # noqa: E731
    kp, nkk, kka = new(), new(), new()
    has_w0, has_vres = fx["w0"] is not None, fx["v_first"] is not None
    weff = new() if has_w0 else kp
    veff = new() if has_vres else kp
    # absent optional inputs get harmless stand-ins (never read: their constexpr flags are off)
    vf, vg = (fx["v_first"], fx["v_gate"]) if has_vres else (k, k)
    grid = (triton.cdiv(B * T, PREFILL_BLOCK_T), H)
    tmix_pre_fwd_kernel[grid](
        k, a, w, v, vf, vg, kk_w, k_a, *(fx[n] if fx[n] is not None else k_a for n in ("w0", "a0", "v0")),
        kp, nkk, kka, weff, veff, *_bt_strides(k, a, w, v, vf, vg),
        B * T, T, H, L2_EPS, HAS_W0=has_w0, HAS_A0=fx["a0"] is not None, HAS_VRES=has_vres,
        BLOCK_T=PREFILL_BLOCK_T, N=N, num_warps=4)
    # the wkv convention has every input in the activation dtype, [B, T, H, N]
    heads = lambda t: t.to(r.dtype).reshape(B, T, H, N)  # noqa: E731
    ins = (heads(r), weff if has_w0 else heads(w), kp, veff if has_vres else heads(v), nkk, kka)
    if slots is not None and getattr(wkv, "takes_slots", False):
        # the recurrence reads and updates the pool rows itself (no gather / scatter copies)
        y, s_out = wkv(*ins, state, slots=slots)
        assert s_out is state, "a wkv that takes slots updates the pool in place"
    elif slots is not None:
        y, _ = on_pool_rows(wkv, *ins, pool=state, slots=slots)
    else:
        y, s_out = wkv(*ins, state)
        if s_out is not state:
            state.copy_(s_out)
    y = _unit_c(y.reshape(B, T, C))
    out = torch.empty((B, T, C), device=r.device, dtype=r.dtype)
    # the post-kernel recomputes sigmoid(a + a0) and the value residual in fp32 (as the step kernel)
    return _post(y, r, k, v, a, g, params, out, H, N, fx)


def tmix_core_triton(r, w, k, v, a, g, state, *, k_k, k_a, r_k, ln_w, ln_b, wkv=None, slots=None,
                     w0=None, a0=None, v0=None, v_first=None, v_gate=None,
                     block_v: int | None = None, num_warps: int | None = None):
    """See the module docstring. Returns (out [B,T,C] r.dtype, state) with state updated in place."""
    B, T, C = r.shape
    H, N = r_k.shape
    block_v = DECODE_BLOCK_V if block_v is None else block_v
    block_v = min(block_v, N)
    num_warps = DECODE_NUM_WARPS.get(block_v, 4) if num_warps is None else num_warps
    assert C == H * N and N % block_v == 0, "C must be H*N and block_v must divide N"
    assert state.dtype == torch.float32 and state.shape[1:] == (H, N, N), "state must be [S,H,N,N] fp32"
    assert state.is_contiguous(), "the state pool must be contiguous"
    assert (v_first is None) == (v_gate is None) == (v0 is None), "v_first, v_gate, v0 go together"
    if slots is not None:
        assert slots.shape == (B,) and not slots.dtype.is_floating_point, "slots must be an int [B]"
        slots = slots.to(device=state.device, dtype=torch.int64)
    else:
        assert state.shape[0] >= B, "state pool smaller than the batch"
    r, w, k, v, a, g = (_unit_c(t) for t in (r, w, k, v, a, g))
    fx = dict(w0=w0, a0=a0, v0=v0, v_first=v_first, v_gate=v_gate)
    for n in ("w0", "a0", "v0"):
        if fx[n] is not None:
            fx[n] = fx[n].reshape(-1).contiguous()
    for n in ("v_first", "v_gate"):
        if fx[n] is not None:
            fx[n] = _unit_c(fx[n])
    if T == 0 or B == 0:
        return r.new_empty((B, T, C)), state
    params = _params(k_k, k_a, r_k, ln_w, ln_b)
    if T <= DECODE_MAX_T or wkv is None:
        return _step(r, w, k, v, a, g, state, slots, params, fx, block_v, num_warps), state
    if slots is None and state.shape[0] != B:
        slots = torch.arange(B, device=state.device)
    return _prefill(r, w, k, v, a, g, state, slots, params, fx, wkv), state
