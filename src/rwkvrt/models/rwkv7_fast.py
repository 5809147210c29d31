"""RWKV-7 forward pass laid out for speed: stacked weights, fused element-wise ops, slot-addressed state.

Same contract and arithmetic as ``rwkvrt.models.rwkv7.RWKV7`` (on CPU with the reference
backends the two agree to fp32 rounding); what changes is the launch count per layer.

Decode of 1..decode_max_batch sequences (T = 1, ``_decode``) is 7 launches per layer:

    add_ln_lerp     residual add + ln1 + six token-shift lerps + att_x state write
    grouped_gemv    r, k, v and the LoRA downs (each on its lerp row, tanh / sigmoid fused)
    tmix_lora_step  LoRA ups, w0 / a0 / value residual, kk, key update, WKV step (state in
                    place), group norm, r_k bonus, gate
    gemv            output projection
    add_ln_lerp     residual add + ln2 + FFN lerp + ffn_x state write
    gemv            FFN key (relu^2 fused)
    sparse_rows_gemv  FFN value, skipping the weight rows the zeros of relu^2 multiply
                    (``ffn_sparse``; a plain gemv when off)

With ``ln_fused`` (default up to n_embd 2048) each add_ln_lerp + gemv pair is one ``ln_gemv``
launch (the LayerNorm and lerps made inside the product's programs): 5 launches per layer;
each site's new token-shift rows are copied into their pool by the next site's launch.

Prefill and larger batches (``_forward``), 12 launches per layer plus the wkv kernels:

    add_ln_lerp   residual add (previous FFN) + ln1 + six token-shift lerps + att_x state write
    bmm           r, k, v projections            [3, BT, C] x [3, C, C]
    bmm           LoRA down: v1, w1, a1, g1      [4, BT, C] x [4, C, Dmax]
    tanh_, sigmoid_   on the w and g rows of the LoRA hidden
    bmm           LoRA up: v2, w2, a2, g2        [4, BT, Dmax] x [4, Dmax, C]
    tmix_core     pre-kernel (w0 / a0 / value residual, kk, key update), wkv, post-kernel
                  (group norm, r_k bonus, gate); one step kernel for T <= 16
    linear        output projection
    add_ln_lerp   residual add (attention) + ln2 + FFN lerp + ffn_x state write
    linear, relu_square_, linear   the FFN

The residual stream is kept in float32: the fused add+LayerNorm kernels take an fp32
residual at no extra launch, it costs 4*C bytes per token (nothing next to the weights),
and it removes the fp16 rounding of the running sum that the official fp16 path carries
through every layer (the main source of drift against the fp32 reference).
"""
from __future__ import annotations

import logging
import os
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from ..errors import RWKVRTError, StateError
from ..ops import decode as decode_ops
from ..ops import ffn as ffn_ops
from ..ops import norm as norm_ops
from ..ops import timemix as timemix_ops
from ..ops import token_shift as shift_ops
from ..ops import wkv7 as wkv7_ops
from ..ops._rows import on_pool_rows
from ..ops.decode import ACT_RELU2, ACT_SIGMOID, ACT_TANH, RowGroups
from .config import RWKV7Config

log = logging.getLogger(__name__)
LN_EPS = 1e-5
# Programmatic dependent launch for the decode / LayerNorm kernels up to this width. H100, decode
# b1 tok/s without -> with: 0.1B (768) 1,879 -> 2,306; 1.5B (2048) 594 -> 617; 7.2B (4096)
# 176 -> 170 (slower with or without the L2 prefetch): small layers gain the hidden launch and
# ramp of each kernel, wide ones lose a little (docs/perf.md).
PDL_MAX_EMBD = 2048
# The sparse FFN value op carries ~8 us of latency that does not shrink with the zeros (its
# K-tile chain, then partials -> counter -> the last program's sum): at the 0.1B's C = 768 that
# is more than the dense GEMV's whole time (H200: 5.8-9 vs 3.5 us); from the 1.5B's C = 2048 up it
# wins at half zeros (H100 decode b1: 1.5B +2.4%, 7.2B 183 -> 205 tok/s; docs/perf.md)
SPARSE_MIN_EMBD = 2048
# The fused decode layer (``rwkvrt.ops.decode.decode_layer``: one launch per layer, dataflow
# phases) for 1..LAYER_MAX_BATCH rows, up to LAYER_MAX_EMBD (its value rows are whole rows of 4C).
LAYER_MAX_EMBD = 2048
LAYER_MAX_BATCH = 4
# Decode ops with the LayerNorm + lerps computed inside the next product's programs
# (``ln_gemv``: 5 launches per layer instead of 7) up to this width.
LN_FUSED_MAX_EMBD = 2048
# With ln_fused, the final residual add + LayerNorm and the head are one ln_gemv (a zero lerp row:
# its input is exactly the normed row), which also does the last layer's pending token-shift copy:
# two launches fewer per step than add_layer_norm + index_copy + head GEMV. H100 decode b1: 0.1B
# 3,418 against 3,372 tok/s; 1.5B within noise (the persistent kernel streams the 268 MB head a
# little slower than grouped_gemv). HEAD_PERSIST: the ln_gemv kernel for it (None: ln_gemv's own
# choice). A/B knobs.
HEAD_LN = True
HEAD_PERSIST: bool | None = None
# The decode time-mix kernel reading its state rows before its PDL wait (the kernel before it,
# ln_gemv / the W_in GEMV, never writes them). Off: H100 1.5B decode b1 715 tok/s on, 736 off (it
# keeps 32 more registers live through the LoRA phase and spills at 4 warps). A/B knob.
TMIX_EARLY_STATE = False
# Order of the six lerp rows produced by add_ln_lerp. r, k, v first so that xs[0:3] feeds the
# stacked r/k/v product, and v, a, w, g contiguous so that xs[2:6] feeds the stacked LoRA-down
# product (xs[3:6] in layer 0, which has no value-residual LoRA); w and g adjacent so that
# fold_lora_act can activate both with one launch.
MIX_ORDER = ("x_r", "x_k", "x_v", "x_a", "x_w", "x_g")
LORA_ORDER = ("v", "a", "w", "g")


def _ew_backend(backend: str) -> str:
    """The element-wise / decode ops' backend for a model backend ("torch" -> reference ops)."""
    return "reference" if backend in ("reference", "torch") else backend


def _resolve_ops(dev: str, backend: str):
    """Every op function for ``backend``; "torch" means reference element-wise ops + chunked wkv."""
    ew = _ew_backend(backend)
    try:
        wkv = wkv7_ops.resolve(dev, backend)
    except ImportError:
        wkv = wkv7_ops.wkv7_reference
    gemv, tmix_lora = decode_ops.resolve(dev, ew)
    return SimpleNamespace(core=timemix_ops.resolve(dev, ew), shift=shift_ops.resolve(dev, ew),
                           norm=norm_ops.resolve(dev, ew), relu_sq=ffn_ops.resolve(dev, ew), wkv_long=wkv,
                           gemv=gemv, tmix_lora=tmix_lora)


def _reference_core(core, r, w, k, v, a, g, pool, *, slots, k_k, k_a, r_k, ln_w, ln_b, wkv,
                    w0, a0, v0=None, v_first=None, v_gate=None):
    """The fused core's extended contract (w0 / a0 / value residual folded in, slot-addressed
    in-place state) on top of the plain reference core. pool [S, H, N, N] fp32, rows mutated."""
    dt = r.dtype
    w = (w + w0).to(dt)
    a = torch.sigmoid(a + a0).to(dt)
    if v_first is not None:
        v = (v + (v_first - v) * torch.sigmoid(v_gate + v0)).to(dt)
    out, _ = on_pool_rows(core, r, w, k, v, a, g, pool=pool, slots=slots, k_k=k_k, k_a=k_a, r_k=r_k, ln_w=ln_w,
                          ln_b=ln_b, wkv=wkv)
    return out.to(dt)


class RWKV7Fast:
    """RWKV-7 on one device with load-time weight stacking and fused ops.

    cfg, sd: as ``RWKV7`` (official names and shapes; ``sd`` is not modified).
    backend: "auto" (triton on cuda, reference on cpu), "triton", "torch", "reference".
    rkv_bmm: one batched product for r/k/v (True) or three ``F.linear`` (False); the LoRA
        products are always batched (see ``_load_layer``).
    prefill_chunk: longest run of tokens processed at once (bounds activation memory).
    fold_lora_act: use tanh(h) = 2*sigmoid(2h) - 1 (the 2s folded into w1 / w2, exact powers
        of two, the -colsum(w2) into w0) so ONE sigmoid_ launch activates both the decay and
        gate rows of the LoRA hidden instead of tanh_ + sigmoid_. Equal up to rounding; off by
        default until measured (saves one launch per layer; adds ~1 ulp of absolute error
        near h = 0 in the decay LoRA).
    decode_fused: run single-token steps of up to ``decode_max_batch`` sequences through the
        decode ops (``rwkvrt.ops.decode``: 7 launches per layer, Triton GEMVs with fused
        activations, LoRA-up inside the time-mix kernel). None = on when the backend is triton.
        Needs fold_lora_act off. decode_max_batch 4: H100 decode tok/s general -> decode ops,
        1.5B: b2 942 -> 1,110, b4 1,879 -> 2,044, b8 3,689 -> 2,624 (GEMM wins from 8 rows).
    layer_fused: decode steps of 1..LAYER_MAX_BATCH rows run each layer as ONE launch
        (``decode_layer``; FFN value dense, so ffn_sparse is then off). None = RWKVRT_LAYER_FUSED
        (0 / 1; default off) with decode_fused, n_embd <= LAYER_MAX_EMBD.
    ln_fused: in the decode ops, each LayerNorm + token-shift lerps (ln1, ln2) is computed
        inside the programs of the product that consumes it (``ln_gemv``): 5 launches per layer
        instead of 7. None = RWKVRT_LN_FUSED (0 / 1), default on up to n_embd LN_FUSED_MAX_EMBD.
    ffn_fused: batch-1 decode runs each layer's FFN (ln2, key, relu^2, the value rows that the
        zeros leave) as one ``ffn_fused`` launch: 4 launches per layer. Needs ln_fused and
        ffn_sparse (else off). None = RWKVRT_FFN_FUSED (0 / 1), default off: 0.9x the two-launch
        FFN at 1.5B on an H100 (one program per SM keeps too few bytes in flight).
    ffn_sparse: in the decode ops at batch 1, the FFN value product skips the rows of its weight
        that the relu^2 activations multiply by zero (``sparse_rows_gemv``; the weight is then
        kept transposed, [4C, C], for every path: no second copy; 2..decode_max_batch rows use
        cuBLAS on that layout). None = on with decode_fused from n_embd SPARSE_MIN_EMBD
        (RWKVRT_FFN_SPARSE=0 / 1 forces off / on). Same function; its speed depends on how many
        activations are zero.
    """

    SHORT_T = 4  # reference core: the fp32 loop up to this T, the chunked wkv above

    def __init__(self, cfg: RWKV7Config, sd: dict[str, torch.Tensor], *, device="cpu",
                 dtype: torch.dtype = torch.float16, backend: str = "auto", rkv_bmm: bool = True,
                 prefill_chunk: int = 2048, fold_lora_act: bool = False,
                 decode_fused: bool | None = None, decode_max_batch: int = 4, ffn_sparse: bool | None = None,
                 layer_fused: bool | None = None, ln_fused: bool | None = None, ffn_fused: bool | None = None):
        self.cfg, self.device, self.dtype = cfg, torch.device(device), dtype
        self.backend, self.rkv_bmm, self.prefill_chunk = backend, rkv_bmm, int(prefill_chunk)
        self.fold_lora_act = fold_lora_act
        self.ops = _resolve_ops(self.device.type, backend)
        self._fused_core = self.ops.core is not timemix_ops.tmix_core_reference
        if decode_fused is None:
            decode_fused = self.ops.gemv is not decode_ops.grouped_gemv_reference and not fold_lora_act
        if decode_fused and fold_lora_act:
            raise RWKVRTError("decode_fused and fold_lora_act cannot both be on", expected="at most one of them",
                              got="both True", fix="drop fold_lora_act (the decode ops fuse the activations anyway)")
        self.decode_fused, self.decode_max_batch = bool(decode_fused), int(decode_max_batch)
        if layer_fused is None:
            layer_fused = os.environ.get("RWKVRT_LAYER_FUSED", "0") == "1" and cfg.n_embd <= LAYER_MAX_EMBD
        self.layer_fused = bool(layer_fused) and self.decode_fused
        if self.layer_fused:
            if cfg.n_embd > LAYER_MAX_EMBD:
                raise RWKVRTError(f"layer_fused supports n_embd up to {LAYER_MAX_EMBD}",
                                  expected=f"n_embd <= {LAYER_MAX_EMBD}", got=str(cfg.n_embd),
                                  fix="leave layer_fused=None (off for wide models)")
            self.ops.decode_layer, self._make_layer_scratch = decode_ops.resolve_layer(self.device.type,
                                                                                       _ew_backend(backend))
            self._layer_scratch: dict[int, object] = {}
            ffn_sparse = False
        if ffn_sparse is None:
            env = os.environ.get("RWKVRT_FFN_SPARSE", "auto")
            ffn_sparse = env == "1" or (env != "0" and cfg.n_embd >= SPARSE_MIN_EMBD)
        self.ffn_sparse = bool(ffn_sparse) and self.decode_fused
        if self.ffn_sparse:
            self.ops.sparse_gemv, make_scratch = decode_ops.resolve_sparse(self.device.type, _ew_backend(backend))
            self._sparse_scratch = make_scratch(cfg.n_embd, cfg.d_ffn, self.device)
        self.pdl = cfg.n_embd <= PDL_MAX_EMBD
        if ln_fused is None:
            env = os.environ.get("RWKVRT_LN_FUSED", "auto")
            ln_fused = env == "1" or (env != "0" and cfg.n_embd <= LN_FUSED_MAX_EMBD)
        self.set_ln_fused(bool(ln_fused) and self.decode_fused and not self.layer_fused)
        if ffn_fused is None:
            ffn_fused = os.environ.get("RWKVRT_FFN_FUSED", "0") == "1"
        self.set_ffn_fused(bool(ffn_fused))
        C = cfg.n_embd
        with torch.no_grad():
            f32 = lambda n: sd[n].to(self.device, torch.float32)  # noqa: E731
            # ln0 folded into the embedding once, in fp32, then rounded (as the official loader)
            self.emb = F.layer_norm(f32("emb.weight"), (C,), f32("blocks.0.ln0.weight"),
                                    f32("blocks.0.ln0.bias"), LN_EPS).to(dtype).contiguous()
            self.ln_out = (f32("ln_out.weight"), f32("ln_out.bias"))
            self.head = sd["head.weight"].to(self.device, dtype).contiguous()
            self.head_groups = RowGroups.single(self.head.shape[0])
            self._head_mix = torch.zeros(1, C, device=self.device, dtype=dtype)  # ln_gemv's lerp row: xn itself
            self._zero_res: dict[int, torch.Tensor] = {}   # layer 0's residual for ln_fused decode, per batch size
            self._head_fp32 = self._mm_out_fp32_works()
            self.layers = [self._load_layer(sd, i) for i in range(cfg.n_layer)]

    def set_ln_fused(self, on: bool) -> None:
        """Switch ``ln_fused`` (the decode ops; for A/B runs, between steps, with no graph captured
        of the other setting in use)."""
        self.ln_fused = bool(on)
        if self.ln_fused and not hasattr(self.ops, "ln_gemv"):
            self.ops.ln_gemv = decode_ops.resolve_ln(self.device.type, _ew_backend(self.backend))

    def set_ffn_fused(self, on: bool) -> None:
        """Switch ``ffn_fused`` (as ``set_ln_fused``); it needs ln_fused and the transposed FFN value
        of ffn_sparse, and stays off without them."""
        self.ffn_fused = bool(on) and self.ln_fused and self.ffn_sparse
        if self.ffn_fused and not hasattr(self.ops, "ffn_fused"):
            fn, make_scratch = decode_ops.resolve_ffn(self.device.type, _ew_backend(self.backend))
            try:
                self._ffn_scratch = make_scratch(self.cfg.d_ffn, self.cfg.n_embd, self.device)
            except ValueError as e:   # a width the kernel's tiles do not divide: the two-launch FFN
                log.warning("ffn_fused is off for this model: %s", e)
                self.ffn_fused = False
                return
            self.ops.ffn_fused = fn

    def _load_layer(self, sd, i: int) -> SimpleNamespace:
        """Per-layer weights in the layout the products want (built once, contiguous).

        Matrices stay in ``F.linear``'s [out, in] layout and the batched products use the
        ``.mT`` view, so cuBLAS gets the same transposed-A GEMV/GEMM it gets from F.linear
        (the well-tuned path at batch 1). The four LoRA down-projections (different inputs
        xv, xw, xa, xg) are ONE bmm over rank padded with zeros to the largest of the four:
        at decode a launch costs more than the padding (each ~C*Dmax*2 bytes, ~1% of a
        layer's weights), and three launches saved per layer are ~10 us per token on a
        12-layer model. Same for the up-projections (padded rows are zero, so the padded
        hidden columns, whatever tanh/sigmoid make of them, contribute nothing).
        """
        cfg, dt, dev = self.cfg, self.dtype, self.device
        C = cfg.n_embd
        att, ffn, b = f"blocks.{i}.att.", f"blocks.{i}.ffn.", f"blocks.{i}."
        take = lambda n, t=dt: sd[n].to(dev, t)  # noqa: E731
        vec = lambda n: take(att + n, torch.float32).reshape(C)  # noqa: E731
        p = SimpleNamespace()
        p.ln1 = (take(b + "ln1.weight", torch.float32), take(b + "ln1.bias", torch.float32))
        p.ln2 = (take(b + "ln2.weight", torch.float32), take(b + "ln2.bias", torch.float32))
        p.mix6 = torch.stack([vec(n) for n in MIX_ORDER]).to(dt).contiguous()  # [6, C]
        p.ffn_mix = take(ffn + "x_k").reshape(1, C).contiguous()
        p.w0, p.a0 = vec("w0"), vec("a0")
        p.has_v = (att + "v1") in sd
        p.v0 = vec("v0") if p.has_v else None
        p.k_k, p.k_a = vec("k_k"), vec("k_a")
        p.r_k = take(att + "r_k", torch.float32).reshape(cfg.n_head, cfg.head_size).contiguous()
        p.ln_x = (take(att + "ln_x.weight", torch.float32), take(att + "ln_x.bias", torch.float32))
        mats = [take(att + n + ".weight") for n in ("receptance", "key", "value")]
        names = [n for n in LORA_ORDER if n != "v" or p.has_v]
        downs = [take(att + n + "1") for n in names]  # [C, D_n]
        ups = [take(att + n + "2") for n in names]    # [D_n, C]
        if self.decode_fused:
            self._load_decode(p, mats, names, downs)
        if self.rkv_bmm:
            # a view of W_in's first 3C rows when the decode path stacked them (no second copy)
            p.Wrkv = p.W_in[:3 * C].view(3, C, C) if self.decode_fused else torch.stack(mats).contiguous()
        else:
            p.Wrkv = [m.contiguous() for m in mats]
        D = max(d.shape[1] for d in downs)
        p.down = torch.zeros(len(names), D, C, device=dev, dtype=dt)  # [n, Dmax(out), C(in)]
        p.up = torch.zeros(len(names), C, D, device=dev, dtype=dt)    # [n, C(out), Dmax(in)]
        for j, (d, u) in enumerate(zip(downs, ups)):
            p.down[j, : d.shape[1]] = d.t()
            p.up[j, :, : u.shape[0]] = u.t()
        p.lora = {n: j for j, n in enumerate(names)}
        if self.fold_lora_act:
            j = p.lora["w"]
            p.w0 = p.w0 - ups[j].float().sum(0)
            p.down[j] *= 2
            p.up[j] *= 2
        p.lora_in = 2 if p.has_v else 3  # first xs row feeding the LoRA-down product
        if self.decode_fused:
            p.up_views = {n: p.up[j, :, :downs[j].shape[1]] for j, n in enumerate(names)}
        p.Wo = take(att + "output.weight").contiguous()
        p.ffn_key = take(ffn + "key.weight").contiguous()
        # [C, 4C] as F.linear wants it, or transposed ([4C, C], row k scaled by h[k]) for the sparse op
        value = take(ffn + "value.weight")
        p.ffn_value = None if self.ffn_sparse else value.contiguous()
        p.ffn_value_t = value.t().contiguous() if self.ffn_sparse else None
        return p

    @staticmethod
    def _ffn_value(h: torch.Tensor, p) -> torch.Tensor:
        """h @ W_value.T in whichever layout the layer keeps (general path)."""
        return F.linear(h, p.ffn_value) if p.ffn_value is not None else torch.matmul(h, p.ffn_value_t)

    def _load_decode(self, p, mats, names, downs) -> None:
        """The decode path's stacked input weight: W_in = [Wr; Wk; Wv; the LoRA downs (transposed)],
        [3C + sum D, C], one grouped GEMV with each group on its lerp row and activation."""
        C = self.cfg.n_embd
        xrow = {n: 2 + MIX_ORDER[2:].index("x_" + n) for n in LORA_ORDER}
        act = {"w": ACT_TANH, "g": ACT_SIGMOID}
        p.W_in = torch.cat(mats + [d.t() for d in downs]).contiguous()
        sizes = [C, C, C] + [d.shape[1] for d in downs]
        p.in_groups = RowGroups(tuple(sizes), (0, 1, 2) + tuple(xrow[n] for n in names),
                                (0, 0, 0) + tuple(act.get(n, 0) for n in names))
        off, p.lora_cols = 3 * C, {}
        for n, d in zip(names, downs):
            p.lora_cols[n] = (off, d.shape[1])
            off += d.shape[1]
        p.o_groups = RowGroups.single(C)
        p.key_groups = RowGroups.single(self.cfg.d_ffn, ACT_RELU2)

    def forward(self, tokens: torch.Tensor, state, *, full_output: bool = False,
                slots: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B, T] int64 on the model's device (not range-checked here).

        state: a ``rwkvrt.State`` whose batch axis is a pool of S rows (att_x / ffn_x [L, S, C],
        wkv [L, S, H, N, N] fp32, contiguous), rows ``slots`` (int64 [B] on the device, distinct
        except for padding rows) or, when slots is None, all S == B rows UPDATED IN PLACE.
        Returns logits [B, T, V] (full_output) or [B, V] for the last token, in the activation
        dtype (float32 on CUDA for fp16/bf16 models: the head writes fp32 logits). Prompts longer than ``prefill_chunk`` are run in chunks (same result).
        """
        B, T = tokens.shape
        if slots is None:
            if state.batch_size != B:
                raise StateError("state batch size does not match the tokens", expected=str(B),
                                 got=str(state.batch_size), fix="pass slots=, or a state with one row per sequence")
            slots = torch.arange(B, device=self.device)
        if not state.wkv.is_contiguous():
            raise StateError("state WKV tensor is not contiguous", expected="a contiguous [L, S, H, N, N] tensor",
                             got=str(tuple(state.wkv.stride())), fix="pass state.clone() or a State.zeros state")
        if T <= self.prefill_chunk:
            return self._forward(tokens, state, slots, full_output)
        outs = []
        for s in range(0, T, self.prefill_chunk):
            o = self._forward(tokens[:, s:s + self.prefill_chunk], state, slots, full_output)
            outs.append(o)
        return torch.cat(outs, dim=1) if full_output else outs[-1]

    __call__ = forward

    def _forward(self, tokens, state, slots, full_output: bool) -> torch.Tensor:
        B, T = tokens.shape
        if T == 1 and self.decode_fused and B <= self.decode_max_batch:
            out = self._decode(tokens, state, slots)
            return out.unsqueeze(1) if full_output else out
        C = self.cfg.n_embd
        x = self.emb[tokens]  # [B, T, C] activation dtype
        # fp32 residual stream; layer 0 adds the embedding to zeros, which is exact
        res = torch.zeros(B, T, C, device=self.device, dtype=torch.float32)
        v_first = None
        for i, p in enumerate(self.layers):
            xs, res = self.ops.shift.add_ln_lerp(x, res, p.ln1[0], p.ln1[1], state.att_x[i], p.mix6,
                                                 eps=LN_EPS, slots=slots, pdl=self.pdl)
            att, v_first = self._time_mix(i, p, xs, state, slots, v_first)
            xk, res = self.ops.shift.add_ln_lerp(att, res, p.ln2[0], p.ln2[1], state.ffn_x[i], p.ffn_mix,
                                                 eps=LN_EPS, slots=slots, pdl=self.pdl)
            h = self.ops.relu_sq(F.linear(xk[0], p.ffn_key))
            x = self._ffn_value(h, p)
        if not full_output:
            x, res = x[:, -1:], res[:, -1:]
        xn, _ = self.ops.norm.add_layer_norm(x, res, self.ln_out[0], self.ln_out[1], LN_EPS)
        if self._head_fp32:
            # half inputs, fp32 accumulate AND fp32 output: rounding logits to fp16 (ulp 0.004 at 4)
            # would flip near-tied argmaxes for nothing; the extra write is 2 bytes per logit
            out = torch.mm(xn.reshape(-1, xn.shape[-1]), self.head.t(), out_dtype=torch.float32)
            out = out.view(*xn.shape[:-1], -1)
        else:
            out = F.linear(xn, self.head)
        return out if full_output else out[:, 0]

    def _decode(self, tokens, state, slots) -> torch.Tensor:
        """One token per sequence through the decode ops: 7 launches per layer, 5 with ln_fused, 4
        with ffn_fused (batch 1), one with layer_fused. Returns [B, V]."""
        B = tokens.shape[0]
        C = self.cfg.n_embd
        dev, dt = self.device, self.dtype
        new = lambda n: torch.empty(B, n, device=dev, dtype=dt)  # noqa: E731
        gemv = lambda *a: self.ops.gemv(*a, pdl=self.pdl)  # noqa: E731
        x = self.emb[tokens]  # [B, 1, C]
        v_first = None
        if self.layer_fused and B <= LAYER_MAX_BATCH:
            res = torch.zeros(B, C, device=dev, dtype=torch.float32)  # updated in place
            return self._head(*self._decode_layers(x.view(B, C), res, state, slots))
        if self.ln_fused:
            # LayerNorm + lerps inside the products (ln_gemv): 5 launches per layer; the residual
            # goes to a new buffer at each site (the old one is still read by the other programs)
            res32 = lambda: torch.empty(B, C, device=dev, dtype=torch.float32)  # noqa: E731
            ln_gemv = lambda *a: self.ops.ln_gemv(*a, eps=LN_EPS, pdl=self.pdl)  # noqa: E731
            # ln_gemv never writes its res: layer 0's zero residual is made once per batch size
            # (a fill launch fewer per step)
            if B not in self._zero_res:
                self._zero_res[B] = torch.zeros(B, C, device=dev, dtype=torch.float32)
            res = self._zero_res[B]
        else:
            res = torch.zeros(B, 1, C, device=dev, dtype=torch.float32)
        for i, p in enumerate(self.layers):
            if self.ln_fused:
                # the token-shift rows of each site are copied into their pool by the next site's call
                rkvh, res, xn = ln_gemv(x.view(B, C), res, p.ln1[0], p.ln1[1], state.att_x[i], slots, p.mix6,
                                        p.W_in, p.in_groups, new(p.W_in.shape[0]), res32(), new(C),
                                        (xn, state.ffn_x[i - 1], slots) if i else None)
            else:
                xs, res = self.ops.shift.add_ln_lerp(x, res, p.ln1[0], p.ln1[1], state.att_x[i], p.mix6,
                                                     eps=LN_EPS, slots=slots, pdl=self.pdl)
                rkvh = gemv(xs.view(6, B, C), p.W_in, p.in_groups, new(p.W_in.shape[0]))
            if i == 0:
                v_first = rkvh[:, 2 * C:3 * C]
            out = self.ops.tmix_lora(rkvh, state.wkv[i], slots, lora=p.lora_cols, up=p.up_views, w0=p.w0, a0=p.a0,
                                     v0=p.v0, v_first=v_first if i else None, k_k=p.k_k, k_a=p.k_a, r_k=p.r_k,
                                     ln_w=p.ln_x[0], ln_b=p.ln_x[1], pdl=self.pdl, early_state=TMIX_EARLY_STATE)
            att = gemv(out.view(1, B, C), p.Wo, p.o_groups, new(C))
            if self.ffn_fused and B == 1:
                x, res, xn = self.ops.ffn_fused(att, res, p.ln2[0], p.ln2[1], state.ffn_x[i], slots, p.ffn_mix, p.ffn_key,
                                                p.ffn_value_t, new(C), res32(), new(C), (xn, state.att_x[i], slots),
                                                self._ffn_scratch, eps=LN_EPS, pdl=self.pdl)
                x = x.view(B, 1, C)
                continue
            if self.ln_fused:
                h, res, xn = ln_gemv(att, res, p.ln2[0], p.ln2[1], state.ffn_x[i], slots, p.ffn_mix,
                                     p.ffn_key, p.key_groups, new(p.ffn_key.shape[0]), res32(), new(C),
                                     (xn, state.att_x[i], slots))
            else:
                xk, res = self.ops.shift.add_ln_lerp(att.view(B, 1, C), res, p.ln2[0], p.ln2[1], state.ffn_x[i],
                                                     p.ffn_mix, eps=LN_EPS, slots=slots, pdl=self.pdl)
                h = gemv(xk.view(1, B, C), p.ffn_key, p.key_groups, new(p.ffn_key.shape[0]))
            if self.ffn_sparse and B == 1:
                x = self.ops.sparse_gemv(h, p.ffn_value_t, new(C), self._sparse_scratch, pdl=self.pdl).view(B, 1, C)
            elif self.ffn_sparse:  # a row of W_value.T is skipped only if every row's h is 0 there: rarely
                x = self._ffn_value(h, p).view(B, 1, C)
            else:
                x = gemv(h.view(1, B, -1), p.ffn_value, p.o_groups, new(C)).view(B, 1, C)
        if self.ln_fused and HEAD_LN:
            return self._head_ln(x.view(B, C), res, state, slots, xn)
        if self.ln_fused:
            state.ffn_x[-1].index_copy_(0, slots, xn.to(state.ffn_x.dtype))
        return self._head(x, res)

    def _decode_layers(self, x, res, state, slots):
        """Every layer as one ``decode_layer`` launch: x [B, C], res [B, C] fp32 (mutated) -> (x, res)."""
        B, C = x.shape
        if B not in self._layer_scratch:  # one per batch size (the reference's factory gives None)
            cfg = self.cfg
            self._layer_scratch[B] = self._make_layer_scratch(
                n_layer=cfg.n_layer, batch=B, n_embd=C, d_ffn=cfg.d_ffn,
                n_in=max(p.W_in.shape[0] for p in self.layers), device=self.device, dtype=self.dtype)
        sc = self._layer_scratch[B]
        if sc is not None:
            sc.begin()
        v_first = None
        for i, p in enumerate(self.layers):
            x, rkvh = self.ops.decode_layer(x, res, p, state.att_x[i], state.ffn_x[i], state.wkv[i], slots, v_first,
                                            sc, layer=i, eps=LN_EPS, pdl=self.pdl)
            if i == 0:
                v_first = rkvh[:, 2 * C:3 * C]
        return x, res

    def _head(self, x, res) -> torch.Tensor:
        """Final residual add + LayerNorm and the head GEMV for decode: [B, V] logits."""
        B, C = x.shape[0], self.cfg.n_embd
        xn, _ = self.ops.norm.add_layer_norm(x.view(B, 1, C), res.view(B, 1, C), self.ln_out[0], self.ln_out[1],
                                             LN_EPS)
        return self.ops.gemv(xn.view(1, B, C), self.head, self.head_groups, self._head_logits(B), pdl=self.pdl)

    def _head_logits(self, B: int) -> torch.Tensor:
        return torch.empty(B, self.head.shape[0], device=self.device,
                           dtype=torch.float32 if self._head_fp32 else self.dtype)

    def _head_ln(self, x, res, state, slots, xn) -> torch.Tensor:
        """``_head`` as one ln_gemv, with the last layer's token-shift rows (xn) copied into the
        ffn_x pool as its pending copy. The shift input it reads (att_x[-1]'s rows) is multiplied
        by the zero lerp row: the product's input is the normed row exactly."""
        B, C = x.shape
        kw = {} if HEAD_PERSIST is None else {"persist": HEAD_PERSIST}
        logits, _, _ = self.ops.ln_gemv(
            x, res, self.ln_out[0], self.ln_out[1], state.att_x[-1], slots, self._head_mix, self.head,
            self.head_groups, self._head_logits(B), torch.empty(B, C, device=self.device, dtype=torch.float32),
            torch.empty(B, C, device=self.device, dtype=self.dtype), (xn, state.ffn_x[-1], slots),
            eps=LN_EPS, pdl=self.pdl, **kw)
        return logits

    def _mm_out_fp32_works(self) -> bool:
        """torch.mm(..., out_dtype=float32) for half inputs exists on CUDA in recent torch builds."""
        if self.device.type != "cuda" or self.dtype not in (torch.float16, torch.bfloat16):
            return False
        try:
            a = torch.ones(2, 16, device=self.device, dtype=self.dtype)
            return torch.mm(a, a.t(), out_dtype=torch.float32).dtype == torch.float32
        except (RuntimeError, TypeError, NotImplementedError):
            return False

    def _time_mix(self, i, p, xs, state, slots, v_first):
        """xs [6, B, T, C] lerp rows in MIX_ORDER -> (attention output [B, T, C], v_first)."""
        _, B, T, C = xs.shape
        flat = xs.view(6, B * T, C)
        if self.rkv_bmm:
            rkv = torch.bmm(flat[0:3], p.Wrkv.mT)  # [3, BT, C]
            r, k, v = (t.view(B, T, C) for t in rkv.unbind(0))
        else:
            r, k, v = (F.linear(xs[j], W) for j, W in enumerate(p.Wrkv))
        n = len(p.lora)
        hid = torch.bmm(flat[p.lora_in:p.lora_in + n], p.down.mT)  # [n, BT, Dmax]
        if self.fold_lora_act:
            hid[p.lora["w"]:p.lora["g"] + 1].sigmoid_()  # w and g rows are adjacent (LORA_ORDER)
        else:
            hid[p.lora["w"]].tanh_()
            hid[p.lora["g"]].sigmoid_()
        up = torch.bmm(hid, p.up.mT).view(n, B, T, C)
        w, a, g = up[p.lora["w"]], up[p.lora["a"]], up[p.lora["g"]]
        vres = {}
        if i == 0:
            v_first = v
        else:
            vres = dict(v0=p.v0, v_first=v_first, v_gate=up[p.lora["v"]])
        T_long = T > self.SHORT_T
        kw = dict(k_k=p.k_k, k_a=p.k_a, r_k=p.r_k, ln_w=p.ln_x[0], ln_b=p.ln_x[1], w0=p.w0, a0=p.a0, **vres)
        if self._fused_core:
            out, _ = self.ops.core(r, w, k, v, a, g, state.wkv[i], slots=slots, wkv=self.ops.wkv_long, **kw)
        else:
            wkv = self.ops.wkv_long if T_long else wkv7_ops.wkv7_reference
            out = _reference_core(self.ops.core, r, w, k, v, a, g, state.wkv[i], slots=slots, wkv=wkv, **kw)
        return F.linear(out, p.Wo), v_first
