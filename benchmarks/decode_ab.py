"""Batch-1 decode A/B in one process: each shape's weights are made once, each variant gets its own
DecodeRunner (its own graphs), so variants differ only in what they name.

    PYTHONPATH=src python benchmarks/decode_ab.py [--shapes 0.1B,1.5B,7.2B] [--variants ...] [--tg 128]

Variants (comma separated; default: all that apply):
  step        runner.step in a loop, the host reads each token before queueing the next
  decode      runner.decode: the next step queued before the host reads the last (lookahead)
  decode_stop runner.decode with a stop token (adds the per-step state snapshot for roll-back)
  gpu         graph replays back to back, one sync at the end (the GPU time per step)
  pdl_off / pdl_on        decode with programmatic dependent launch forced off / on
  pdl_on_except_K[+K2]    PDL on except for the kernel kinds K (gemv, ln, tmix)
  dch64 / dch128          decode with the time-mix kernel's LoRA-up tile at 64 / 128 rank columns
  tmix_w4 / tmix_w16      decode with the time-mix kernel at 4 / 16 warps
  sp[_sN][_stS][_nwW][_bkK][_bnN][_reR]  decode with the sparse FFN value op at N splits, S stages,
              W warps, K rows per tile, N columns per block, R partial sums per load in the last sum
  gv[_bnN][_bkK][_nwW][_stS]  decode with the Wo products (the [C, C] grouped_gemv) at N rows per
              program, K-tiles of K, W warps, S stages
  pfN         decode with N MB of L2 prefetch budget for the PDL kernels (rwkvrt.ops._pdl; default 4)
  drop_K      diagnosis only (wrong tokens): decode with the kernels of kind K not launched, K one
              of win (ln_gemv W_in), tmix, wo, key (the FFN key product), value (the sparse FFN
              value): the step time without them, i.e. their marginal cost inside the graph
  head_gemv   decode with the final LayerNorm, the last pending copy and the head as three launches
              (not one ln_gemv); head_tiled: the head's ln_gemv as the tiled kernel
  tmix_early  decode with the time-mix kernel reading its state rows before its PDL wait
  ln_tiled    decode with ln_fused on and ln_gemv's tiled kernel at batch 1 (not the persistent one)
  ln_on / ln_off          decode with ln_fused on / off (LayerNorm + lerps inside the next product)
  ffn_fused   decode with each layer's FFN as one ffn_fused launch (batch 1; needs ffn_sparse)
  ffn[_ln][_rN][_bkK][_bcC][_nwW][_stS][_vsS]  ffn_fused with N hidden rows per program, key K-tiles of
              K columns, value tiles of C columns, W warps, S key stages, S value stages (_ln: with
              ln_fused forced on)
  lnp[_bnN][_cC][_nwW][_stS][_ilI]  ln_fused on, batch-1 ln_gemv as the persistent kernel: N rows per
              block, C programs per SM, W warps, S stages, I = 1: interleaved blocks
  ln[_bnN][_bkK][_stS][_nwW]  ln_fused on with N rows per ln_gemv program, K-tiles of K columns,
              S stages, W warps
  ffn_noskip  decode with the sparse FFN value op loading every row (same tiles: its dense rate)
  ffn_dense   decode with the FFN value as the plain row-major GEMV (the path before ffn_sparse)
  pp512 / pp512_dense     prefill of 512 tokens (tok/s) with W_value kept transposed / row-major
  pp512_replay            the captured 512-token prefill graph replayed alone (GPU time; no host work)
  layer[_rN][_sN][_cN][_pid][_nopf][_nopdl]  decode with each layer as one decode_layer launch
              (FFN value dense; shapes up to n_embd 2048, skipped above); _rN: register cap N
              (0 = none), _sN: weight elements of a GEMV chunk, _cN: chunks per GEMV item, _pid:
              program id as the ticket, _nopf: no L2 prefetch of the LoRA-up rows, _nopdl: the
              layer kernels launched without PDL (no cross-layer overlap)
Each shape also reports ffn_zero_frac: the share of relu^2 zeros (random weights: about half).
Prints one JSON line per (shape, variant) and a short table on stderr.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from rwkvrt.bench import ffn_zero_fraction
from rwkvrt.bench_ceilings import random_weights
from rwkvrt.engine.runner import DecodeRunner
from rwkvrt.models import rwkv7_fast as fast_mod
from rwkvrt.models.rwkv7_fast import LAYER_MAX_EMBD, RWKV7Fast
from rwkvrt.models.shapes import published_config
from rwkvrt.ops import _pdl
from rwkvrt.ops import decode as decode_ops
from rwkvrt.ops.decode import triton_ffn as ffn_mod
from rwkvrt.ops.decode import triton_gemv as gemv_mod
from rwkvrt.ops.decode import triton_layer as layer_mod
from rwkvrt.ops.decode import triton_sparse as sparse_mod
from rwkvrt.ops.decode import triton_tmix_lora as tmix_mod

ALL = ["decode", "ffn_fused", "ln_off", "ln_on", "ln_bn8", "ln_bn16", "ln_st2", "step", "decode_stop", "gpu", "pdl_off", "pdl_on", "pdl_on_except_gemv", "pdl_on_except_ln+tmix",
       "dch64", "dch128", "tmix_w4", "tmix_w16", "ffn_noskip", "ffn_dense", "pp512",
       "pp512_dense", "layer", "layer_c2", "layer_c4"]


def timed(fn, reps: int) -> float:
    ts = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def _drop(m: RWKV7Fast, kind: str) -> None:
    """Replace the op of one decode site by a stand-in that launches nothing (drop_* variants)."""
    C, F = m.cfg.n_embd, m.cfg.d_ffn
    ln_gemv, gemv = m.ops.ln_gemv if m.ln_fused else None, m.ops.gemv
    if kind in ("win", "key"):
        want = m.layers[0].W_in.shape[0] if kind == "win" else F

        def ln_stub(x, res, ln_w, ln_b, x_prev, slots, mix, W, groups, out, new_res, xn_out, pending=None, **kw):
            return (out, new_res, xn_out) if W.shape[0] == want else ln_gemv(
                x, res, ln_w, ln_b, x_prev, slots, mix, W, groups, out, new_res, xn_out, pending, **kw)
        m.ops.ln_gemv = ln_stub
    elif kind == "tmix":
        m.ops.tmix_lora = lambda rkvh, *a, **kw: rkvh[:, :C]
    elif kind == "wo":
        m.ops.gemv = lambda xs, W, groups, out, **kw: out if W.shape == (C, C) else gemv(xs, W, groups, out, **kw)
    elif kind == "value":
        m.ops.sparse_gemv = lambda h, WT, out, *a, **kw: out
    else:
        raise ValueError(f"drop_{kind}: expected win, tmix, wo, key or value")


# variants that set one rwkvrt.models.rwkv7_fast knob: name -> (knob, value)
FAST_VARIANTS = {"head_gemv": ("HEAD_LN", False), "head_tiled": ("HEAD_PERSIST", False),
                 "tmix_early": ("TMIX_EARLY_STATE", True)}


def _knobs(parts: list[str], names: dict[str, str]) -> dict[str, int]:
    """{names[key]: N} for variant parts "<key><N>" (e.g. ["bn8", "st2"]); an unknown key or a part
    without its number raises (a variant this script does not know)."""
    out = {}
    for part in parts:
        key = part.rstrip("0123456789")
        out[names[key]] = int(part[len(key):])
    return out


def run_variant(m: RWKV7Fast, v: str, tg: int, reps: int) -> tuple[float, list[int]]:
    """(tok/s of batch-1 decode, its first 24 greedy tokens) for variant v (model knobs set and
    restored around it)."""
    saved = (m.pdl, tmix_mod.DCH, tmix_mod.NUM_WARPS, m.ffn_sparse, m.layer_fused, layer_mod.MAXNREG, layer_mod.SLAB,
             layer_mod.NCH, layer_mod.TICKET, layer_mod.UP_PREFETCH, m.ln_fused, gemv_mod.LN_BLOCK_N, gemv_mod.LN_STAGES,
             gemv_mod.LN_BLOCK_K, gemv_mod.LN_NUM_WARPS, m.ffn_fused)
    lnp_knobs = (gemv_mod.LN_PERSIST, gemv_mod.LNP_BLOCK_N, gemv_mod.LNP_PER_SM, gemv_mod.LNP_NUM_WARPS,
                 gemv_mod.LNP_STAGES, gemv_mod.LNP_INTERLEAVE)
    ffn_knobs = (ffn_mod.ROWS, ffn_mod.BLOCK_K, ffn_mod.BLOCK_C, ffn_mod.NUM_WARPS, ffn_mod.STAGES, ffn_mod.VSTAGES,
                 getattr(m, "_ffn_scratch", None))
    off_kinds = set(_pdl.OFF_KINDS)
    pf_budget = _pdl.PREFETCH_BUDGET
    sp_knobs = (sparse_mod.STAGES, sparse_mod.NUM_WARPS, sparse_mod.BLOCK_K, getattr(m, "_sparse_scratch", None),
                sparse_mod.REDUCE_ELEMS)
    saved_ops = dict(vars(m.ops))
    fast_knobs = {name: getattr(fast_mod, name) for name, _ in FAST_VARIANTS.values()}
    try:
        if v in FAST_VARIANTS:
            setattr(fast_mod, *FAST_VARIANTS[v])
        if v == "ffn_noskip":
            sparse_mod.SKIP = False
        elif (v in ("ffn_dense", "pp512_dense") or v.startswith("layer")) and m.ffn_sparse:
            for p in m.layers:  # the row-major layout back, for this variant only
                p.ffn_value = p.ffn_value_t.t().contiguous()
            m.ffn_sparse = False
        if v.startswith("pdl_on_except_"):
            m.pdl = True
            _pdl.OFF_KINDS.update(v[len("pdl_on_except_"):].split("+"))
        elif v == "pdl_off":
            m.pdl = False
        elif v == "pdl_on":
            m.pdl = True
        elif v.startswith("ffn_") and v not in ("ffn_noskip", "ffn_dense"):
            parts = v.split("_")[1:]
            if "ln" in parts:   # ffn_ln: with ln_fused on (off by default above n_embd 2048)
                m.set_ln_fused(True)
            names = {"r": "ROWS", "bk": "BLOCK_K", "bc": "BLOCK_C", "nw": "NUM_WARPS", "st": "STAGES", "vs": "VSTAGES"}
            for attr, val in _knobs([k for k in parts if k not in ("fused", "ln")], names).items():
                setattr(ffn_mod, attr, val)
            m.set_ffn_fused(True)
            if not m.ffn_fused:
                raise RuntimeError("ffn_fused needs ln_fused and ffn_sparse (n_embd >= 2048 or RWKVRT_FFN_SPARSE=1)")
            m._ffn_scratch = ffn_mod.FfnScratch(m.cfg.d_ffn, m.cfg.n_embd, m.device)
        elif v.startswith("lnp"):
            m.set_ln_fused(True)
            gemv_mod.LN_PERSIST = True
            names = {"bn": "LNP_BLOCK_N", "c": "LNP_PER_SM", "nw": "LNP_NUM_WARPS", "st": "LNP_STAGES",
                     "il": "LNP_INTERLEAVE"}
            for attr, val in _knobs(v.split("_")[1:], names).items():
                setattr(gemv_mod, attr, val)
        elif v.startswith("sp") and m.ffn_sparse:
            # upper case: a module knob of triton_sparse; lower case: a SparseScratch (plan) argument
            names = {"st": "STAGES", "nw": "NUM_WARPS", "bk": "BLOCK_K", "s": "splits", "bn": "block_n",
                     "re": "REDUCE_ELEMS"}
            kw = {}
            for name, val in _knobs(v.split("_")[1:], names).items():
                if name.isupper():
                    setattr(sparse_mod, name, val)
                else:
                    kw[name] = val
            if kw or sparse_mod.BLOCK_K != sp_knobs[2]:
                m._sparse_scratch = sparse_mod.SparseScratch(m.cfg.n_embd, m.cfg.d_ffn, m.device, **kw)
        elif v.startswith("gv"):
            kw = _knobs(v.split("_")[1:], {"bn": "block_n", "bk": "block_k", "nw": "num_warps", "st": "stages"})
            C, gemv = m.cfg.n_embd, m.ops.gemv
            m.ops.gemv = lambda xs, W, groups, out, **k: gemv(xs, W, groups, out, **({**k, **kw} if W.shape == (C, C)
                                                                                         else k))
        elif v.startswith("pf"):
            _pdl.PREFETCH_BUDGET = int(float(v[2:]) * (1 << 20))
        elif v.startswith("drop_"):
            _drop(m, v[5:])
        elif v == "ln_tiled":
            m.set_ln_fused(True)
            gemv_mod.LN_PERSIST = False
        elif v in ("ln_on", "ln_off"):
            m.set_ln_fused(v == "ln_on")
        elif v.startswith("ln_"):
            m.set_ln_fused(True)
            names = {"bn": "LN_BLOCK_N", "bk": "LN_BLOCK_K", "st": "LN_STAGES", "nw": "LN_NUM_WARPS"}
            for attr, val in _knobs(v.split("_")[1:], names).items():
                setattr(gemv_mod, attr, val)
        elif v.startswith("dch"):
            tmix_mod.DCH = int(v[3:])
        elif v.startswith("tmix_w"):
            tmix_mod.NUM_WARPS = int(v[6:])
        elif v.startswith("layer"):
            m.layer_fused = True
            m.ops.decode_layer, m._make_layer_scratch = decode_ops.resolve_layer("cuda", "triton")
            m._layer_scratch = {}
            for knob in v.split("_")[1:]:
                if knob == "nopdl":
                    m.pdl = False
                elif knob == "nopf":
                    layer_mod.UP_PREFETCH = False
                elif knob == "pid":
                    layer_mod.TICKET = False
                elif knob[0] == "c":
                    layer_mod.NCH = int(knob[1:])
                elif knob[0] == "r":
                    layer_mod.MAXNREG = int(knob[1:])
                elif knob[0] == "s":
                    layer_mod.SLAB = int(knob[1:])
        r = DecodeRunner(m, 1)
        s = r.alloc()
        r.prefill(s, [1, 2, 3])
        V = m.cfg.vocab_size
        with torch.inference_mode():
            if v == "pp512_replay":
                prompt = torch.randint(0, V, (512,)).tolist()
                r.prefill(s, prompt)
                g512 = r._prefill_graph(512)["graph"]

                def fn():
                    g512.replay()
            elif v.startswith("pp512"):
                prompt = torch.randint(0, V, (512,)).tolist()

                def fn():
                    r.reset(s)
                    r.prefill(s, prompt)
            elif v == "step":
                def fn():
                    tok = [5]
                    for _ in range(tg):
                        tok = r.step([s], tok).tolist()
            elif v == "gpu":
                r.step([s], [5])
                g = r._buckets[1].graphs[(True, False)]

                def fn():
                    for _ in range(tg):
                        g.replay()
            else:
                stops = [V - 1] if v == "decode_stop" else []

                def fn():
                    for _ in r.decode([s], [5], tg, stop_tokens=stops):
                        pass
            fn()  # warm-up: captures the graphs
            rate = (512 if v.startswith("pp512") else tg) / timed(fn, reps)
            # the first tokens from a fresh prompt: variants that only move work around must agree
            r.reset(s)
            r.prefill(s, [1, 2, 3])
            toks = [row[0] for row in r.decode([s], [5], 24)]
            return rate, toks
    finally:
        (m.pdl, tmix_mod.DCH, tmix_mod.NUM_WARPS, m.ffn_sparse, m.layer_fused, layer_mod.MAXNREG, layer_mod.SLAB,
         layer_mod.NCH, layer_mod.TICKET, layer_mod.UP_PREFETCH, ln, gemv_mod.LN_BLOCK_N, gemv_mod.LN_STAGES,
         gemv_mod.LN_BLOCK_K, gemv_mod.LN_NUM_WARPS, ffn) = saved
        m.set_ln_fused(ln)
        m.set_ffn_fused(ffn)
        (gemv_mod.LN_PERSIST, gemv_mod.LNP_BLOCK_N, gemv_mod.LNP_PER_SM, gemv_mod.LNP_NUM_WARPS,
         gemv_mod.LNP_STAGES, gemv_mod.LNP_INTERLEAVE) = lnp_knobs
        (ffn_mod.ROWS, ffn_mod.BLOCK_K, ffn_mod.BLOCK_C, ffn_mod.NUM_WARPS, ffn_mod.STAGES, ffn_mod.VSTAGES,
         scratch) = ffn_knobs
        if scratch is not None:
            m._ffn_scratch = scratch
        sparse_mod.SKIP = True
        for name, val in fast_knobs.items():
            setattr(fast_mod, name, val)
        if m.ffn_sparse:
            for p in m.layers:
                p.ffn_value = None
        _pdl.PREFETCH_BUDGET = pf_budget
        sparse_mod.STAGES, sparse_mod.NUM_WARPS, sparse_mod.BLOCK_K, sp_scratch, sparse_mod.REDUCE_ELEMS = sp_knobs
        if sp_scratch is not None:
            m._sparse_scratch = sp_scratch
        for k in list(vars(m.ops)):
            if k not in saved_ops:
                delattr(m.ops, k)
        for k, fn in saved_ops.items():
            setattr(m.ops, k, fn)
        _pdl.OFF_KINDS.clear()
        _pdl.OFF_KINDS.update(off_kinds)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="0.1B,1.5B,7.2B")
    ap.add_argument("--variants", default=",".join(ALL))
    ap.add_argument("--tg", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    dev, dt = torch.device("cuda"), torch.float16
    name = torch.cuda.get_device_name()
    first: dict = {}
    for shape in a.shapes.split(","):
        cfg = published_config(shape)
        m = RWKV7Fast(cfg, random_weights(cfg, dev, dt), device=dev, dtype=dt)
        zf = ffn_zero_fraction(m) if m.ffn_sparse else None
        print(json.dumps({"device": name, "shape": shape, "ffn_sparse": m.ffn_sparse, "ffn_zero_frac": zf}),
              flush=True)
        print(f"{shape:>5} ffn_sparse={m.ffn_sparse} zero fraction {zf}", file=sys.stderr, flush=True)
        for v in a.variants.split(","):
            if v.startswith("layer") and cfg.n_embd > LAYER_MAX_EMBD:
                continue
            line = {"device": name, "shape": shape, "variant": v, "tg": a.tg}
            try:
                rate, toks = run_variant(m, v, a.tg, a.reps)
                line["tokens_per_s"] = round(rate, 1)
                line["first_tokens"] = toks
                line["same_tokens_as_first_variant"] = first.setdefault(shape, toks) == toks
            except Exception as e:  # noqa: BLE001 - a failed variant must not end the sweep
                line["error"] = f"{type(e).__name__}: {e}"[:300]
            print(json.dumps(line), flush=True)
            print(f"{shape:>5} {v:<22} {line.get('tokens_per_s', line.get('error'))}"
                  f"{'' if line.get('same_tokens_as_first_variant', True) else '  (tokens differ)'}",
                  file=sys.stderr, flush=True)
        del m
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
