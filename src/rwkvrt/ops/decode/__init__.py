"""Decode-step (T = 1) layer ops: few, wide launches for the batch-1..few regime.

At batch 1 a layer's cost is its weight bytes plus, per launch, a few microseconds of
latency that no bandwidth hides. These ops cut a layer to seven launches
(add_ln_lerp, ``grouped_gemv`` for r/k/v and the four LoRA down-projections with their
activations, ``tmix_lora_step``, Wo, add_ln_lerp, ffn key with relu^2, ffn value), or five
with ``ln_gemv`` (each add_ln_lerp made inside the product that consumes it).

    out = grouped_gemv(xs, W, groups, out)

    xs     : [G, M, K] activation dtype, unit stride along K (other strides free), not mutated:
             G input rows per batch row (e.g. the six token-shift lerps), M batch rows
    W      : [N, K] contiguous ([out, in], ``F.linear`` layout), the row groups stacked
    groups : ``RowGroups``: consecutive row ranges of W, each with the xs row it multiplies and
             an activation applied in fp32 before the single rounding (ACT_NONE, ACT_RELU2,
             ACT_TANH, ACT_SIGMOID)
    out    : [M, N] (any float dtype; e.g. fp32 for logits) WRITTEN and returned:
             out[m, rows of group i] = act_i(xs[xrow_i, m] @ W[rows of group i].T)
    pdl    : (keyword, both ops) programmatic dependent launch (``rwkvrt.ops._pdl``): None =
             the device default, False = off; the references ignore it

    out, new_res, xn_out = ln_gemv(x, res, ln_w, ln_b, x_prev, slots, mix, W, groups, out, new_res, xn_out,
                                   pending=None, *, eps)

    grouped_gemv whose input rows are add_ln_lerp's, made inside the product's programs (one
    launch instead of two: no normed rows written and read back, one dependency hop fewer).
    x      : [M, C] activation dtype (the branch output to add), res [M, C] fp32 or activation
             dtype: neither mutated; unit stride along C
    ln_w, ln_b : [C] LayerNorm; mix [G, C] lerp rows (groups.xrows index them)
    x_prev : [S, C] token-shift pool, rows ``slots`` ([M] int64) read as the shift, NOT updated
             (the launch's programs all read them): the new rows go to xn_out, and the caller
             copies them into the pool later, e.g. as the ``pending`` of a later call
    new_res: [M, C] WRITTEN = res + x in new_res's dtype (a buffer other than res)
    xn_out : [M, C] activation dtype, WRITTEN = LayerNorm(res + x) (the pool's next rows)
    pending: None or (src [M, C], pool [S', C], slots [M]): pool[slots] = src is done first
             (an earlier call's xn_out; pool must not be this call's x_prev)
    out    = act_i(lerp(xn, x_prev, mix[xrow_i]) @ W[rows of group i].T), exactly add_ln_lerp's
             rows (rounded to the activation dtype) fed to grouped_gemv

    out, new_res, xn_out = ffn_fused(x, res, ln_w, ln_b, x_prev, slots, mix, Wk, WvT, out, new_res, xn_out,
                                     pending, scratch, *, eps)

    A batch-1 decode FFN in one launch: ln_gemv's arguments for the LayerNorm / lerp / pending
    copy (mix [1, C]), then out = relu(xk @ Wk.T) ** 2 @ WvT with Wk [F, C] and WvT [F, C]
    (W_value transposed, as ``ffn_sparse`` keeps it); h is rounded to the activation dtype as
    the two-launch path stores it, rows of WvT that h zeroes are not read. out [1, C] WRITTEN.
    scratch: ``FfnScratch(F, C, device)`` (the kernel's fixed-point accumulator and ticket; the
    reference's factory returns None). Opt-in (``RWKV7Fast(ffn_fused=True)``): H100 1.5B decode
    b1 0.9x the two-launch FFN at its best tile (docs/perf.md, session 7).

    out = tmix_lora_step(rkvh, state, slots, *, lora, up, w0, a0, v0, v_first, k_k, k_a, r_k, ln_w, ln_b)

    rkvh   : [B, 3C + sum(D)] activation dtype, grouped_gemv's output: r | k | v | the LoRA
             hidden rows (already activated), not mutated
    state  : [S, H, N, N] fp32 pool, rows ``slots`` ([B] int64) UPDATED IN PLACE
    lora   : {name: (column offset in rkvh, D)} for "w", "a", "g" and (layers > 0) "v"
    up     : {name: [C, D] up-projection in [out, in] layout (unit stride along D)}
    v_first: [B, C] (layers > 0; None in layer 0, which has no value residual)
    out    : [B, C] activation dtype (new tensor) = the time-mix core (``rwkvrt.ops.timemix``)
             with w = w0 + hw @ up_w.T, a = sigmoid(a0 + ha @ up_a.T), g = hg @ up_g.T,
             v = v + (v_first - v) * sigmoid(v0 + hv @ up_v.T)

    out = sparse_rows_gemv(h, WT, out, scratch)

    h      : [M, K] (M <= 8) activation dtype, unit stride along K: the FFN's relu^2 output,
             mostly exact zeros
    WT     : [K, N] contiguous: the FFN value weight TRANSPOSED (row k is what h[:, k] scales)
    out    : [M, N] WRITTEN and returned: h @ WT, rows of WT that every batch row multiplies by
             zero are never read (the saving at decode: weight bytes)
    scratch: the kernel's partial sums and counters (``SparseScratch(N, K, device)``, once per
             model; the reference's factory returns None)

    out, rkvh = decode_layer(x, res, p, att_x, ffn_x, wkv, slots, v_first, scratch, *, layer, eps)

    The whole layer (the seven ops above, FFN value dense) as one launch for 1..4 sequences.
    x      : [B, C] activation dtype, contiguous: the previous layer's output (the embedding in
             layer 0), not mutated
    res    : [B, C] fp32 residual stream, UPDATED IN PLACE (res + x + attention output)
    p      : the layer's weights as ``RWKV7Fast`` lays them out for decode: ln1, mix6, W_in,
             in_groups, lora_cols, up_views, w0, a0, v0, k_k, k_a, r_k, ln_x, Wo, ln2,
             ffn_mix, ffn_key, ffn_value ([C, 4C])
    att_x, ffn_x : [S, C] token-shift pools, wkv [S, H, N, N] fp32: rows ``slots`` UPDATED IN PLACE
    v_first: [B, C] (layer 0's value; None in layer 0)
    scratch: the step's buffers and counters (``LayerScratch``; None for the reference);
             ``scratch.begin()`` once per step before layer 0, and layers in order 0, 1, ...
    out    : [B, C] the layer's output (in the scratch: valid until the next layer's call);
    rkvh   : [B, 3C + sum D] r | k | v | LoRA hidden (layer 0's v is the later layers' v_first)
"""
from __future__ import annotations

from .reference import (ACT_NONE, ACT_RELU2, ACT_SIGMOID, ACT_TANH, RowGroups, decode_layer_reference,
                        ffn_fused_reference, grouped_gemv_reference, ln_gemv_reference, no_layer_scratch, no_scratch, sparse_rows_gemv_reference,
                        tmix_lora_step_reference)

__all__ = ["ACT_NONE", "ACT_RELU2", "ACT_SIGMOID", "ACT_TANH", "RowGroups", "decode_layer_reference",
           "ffn_fused_reference", "grouped_gemv_reference", "ln_gemv_reference", "sparse_rows_gemv_reference", "tmix_lora_step_reference", "resolve",
           "resolve_ffn", "resolve_layer", "resolve_ln", "resolve_sparse"]


def resolve(device: str, backend: str = "auto"):
    """(grouped_gemv, tmix_lora_step) for ``device``; auto -> triton on cuda, reference elsewhere."""
    from .._backend import choose

    def triton():
        from .triton_gemv import grouped_gemv_triton
        from .triton_tmix_lora import tmix_lora_step_triton
        return grouped_gemv_triton, tmix_lora_step_triton

    return choose("the decode-step ops", device, backend, (grouped_gemv_reference, tmix_lora_step_reference),
                  triton)


def resolve_ffn(device: str, backend: str = "auto"):
    """(ffn_fused, scratch factory (F, C, device)) for ``device``, chosen as ``resolve`` chooses."""
    from .._backend import choose

    def triton():
        from .triton_ffn import FfnScratch, ffn_fused_triton
        return ffn_fused_triton, FfnScratch

    return choose("the fused decode FFN", device, backend, (ffn_fused_reference, no_scratch), triton)


def resolve_ln(device: str, backend: str = "auto"):
    """ln_gemv for ``device``, chosen as ``resolve`` chooses."""
    from .._backend import choose

    def triton():
        from .triton_gemv import ln_gemv_triton
        return ln_gemv_triton

    return choose("the LayerNorm + GEMV op", device, backend, ln_gemv_reference, triton)


def resolve_sparse(device: str, backend: str = "auto"):
    """(sparse_rows_gemv, scratch factory (N, K, device)) for ``device``, chosen as ``resolve`` chooses."""
    from .._backend import choose

    def triton():
        from .triton_sparse import SparseScratch, sparse_rows_gemv_triton
        return sparse_rows_gemv_triton, SparseScratch

    return choose("the sparse FFN value op", device, backend, (sparse_rows_gemv_reference, no_scratch), triton)


def resolve_layer(device: str, backend: str = "auto"):
    """(decode_layer, step scratch factory (keywords n_layer, batch, n_embd, d_ffn, n_in, device,
    dtype)) for ``device``, chosen as ``resolve`` chooses."""
    from .._backend import choose

    def triton():
        from .triton_layer import LayerScratch, decode_layer_triton
        return decode_layer_triton, LayerScratch

    return choose("the fused decode layer", device, backend, (decode_layer_reference, no_layer_scratch), triton)
