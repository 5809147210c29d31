"""Decode-step ops (grouped GEMV, time-mix core with fused LoRA-up) vs their plain references.

Triton versions run on a GPU or under the Triton interpreter (kernel_device fixture)."""
from __future__ import annotations

import pytest
import torch
from conftest import TOL, rel_err

from rwkvrt.ops.decode import (ACT_NONE, ACT_RELU2, ACT_SIGMOID, ACT_TANH, RowGroups, grouped_gemv_reference,
                               ln_gemv_reference, sparse_rows_gemv_reference, tmix_lora_step_reference)


def _gemv():
    return pytest.importorskip("rwkvrt.ops.decode.triton_gemv").grouped_gemv_triton


def _tmix():
    return pytest.importorskip("rwkvrt.ops.decode.triton_tmix_lora").tmix_lora_step_triton


def test_row_groups_tables_and_reference_acts():
    g = RowGroups((64, 32, 40), (0, 2, 1), (ACT_NONE, ACT_TANH, ACT_SIGMOID))
    xr, ac = g.tables(torch.device("cpu"), 16)
    assert xr.tolist() == [0] * 4 + [2] * 2 + [1] * 3 and ac.tolist() == [0] * 4 + [2] * 2 + [3] * 3
    assert g.tables(torch.device("cpu"), 64) is None  # 32 rows cannot be a whole 64-row block
    gen = torch.Generator().manual_seed(0)
    xs, W = torch.randn(3, 2, 48, generator=gen), torch.randn(136, 48, generator=gen)
    out = grouped_gemv_reference(xs, W, g, torch.full((2, 136), float("nan")))
    assert torch.allclose(out[:, :64], xs[0] @ W[:64].t(), atol=1e-5)
    assert torch.allclose(out[:, 64:96], torch.tanh(xs[2] @ W[64:96].t()), atol=1e-5)
    assert torch.allclose(out[:, 96:], torch.sigmoid(xs[1] @ W[96:].t()), atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("M", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("block_n", [None, 4, 16])
def test_grouped_gemv_matches_reference(kernel_device, M, dtype, block_n):
    gemv = _gemv()
    gen = torch.Generator().manual_seed(M * 7 + (block_n or 0))
    K = 128
    g = RowGroups((64, 64, 32, 48), (0, 1, 3, 2), (ACT_NONE, ACT_RELU2, ACT_TANH, ACT_SIGMOID))
    xs = torch.randn(4, M, K, generator=gen).to(kernel_device, dtype)
    W = (torch.randn(g.n_rows, K, generator=gen) / K ** 0.5).to(kernel_device, dtype)
    ref = grouped_gemv_reference(xs, W, g, torch.empty(M, g.n_rows, dtype=torch.float32, device=kernel_device))
    out = gemv(xs, W, g, torch.full((M, g.n_rows), float("nan"), dtype=dtype, device=kernel_device),
               block_n=block_n, block_k=64)
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) < (1e-5 if dtype == torch.float32 else 5e-3)  # fp16: output rounding


@pytest.mark.gpu
def test_grouped_gemv_ragged_rows_strided_input_and_fp32_out(kernel_device):
    """N not a multiple of block_n (a head with vocab 301), xs a strided view, fp32 output."""
    gemv = _gemv()
    gen = torch.Generator().manual_seed(3)
    K, N = 64, 301
    big = torch.randn(2, 5, 2 * K, generator=gen).to(kernel_device, torch.float16)
    xs = big[:, :, :K].transpose(0, 1)[:1]  # [1, 2, K] with free strides
    W = (torch.randn(N, K, generator=gen) / 8).to(kernel_device, torch.float16)
    g = RowGroups.single(N)
    out = gemv(xs, W, g, torch.full((2, N), float("nan"), device=kernel_device), block_n=8, block_k=32)
    ref = grouped_gemv_reference(xs, W, g, torch.empty(2, N, device=kernel_device))
    assert out.dtype == torch.float32 and rel_err(out, ref) < 1e-3


@pytest.mark.gpu
@pytest.mark.parametrize("M,persist", [(1, False), (3, False), (1, True), (1, "interleave")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("K,block_n", [(96, None), (256, None), (128, 8)])
def test_ln_gemv_matches_reference_chained(kernel_device, M, persist, dtype, K, block_n, monkeypatch):
    """ln_gemv == add_ln_lerp + grouped_gemv (references) over 3 chained calls that alternate
    two token-shift pools as the model's sites do: each call's xn_out is the next call's pending
    copy into the pool it read. Outputs poisoned, res / x_prev not mutated, rows outside ``slots``
    untouched; K = 96 is not a power of two (padded statistics) and takes pick_blocks' tile, K = 256
    the default LN_TILE. persist: the batch-1 persistent kernel (several blocks per program, blocks
    of one program in two groups; "interleave": its blocks p, p + G, ...)."""
    tg = pytest.importorskip("rwkvrt.ops.decode.triton_gemv")
    ln_gemv = tg.ln_gemv_triton
    if persist == "interleave":
        monkeypatch.setattr(tg, "LNP_INTERLEAVE", True)
        persist = True
    gen = torch.Generator().manual_seed(M * 5 + K)
    dev = kernel_device
    rnd = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    g = RowGroups((64, 32, 32, 16), (0, 3, 1, 2), (ACT_NONE, ACT_TANH, ACT_SIGMOID, ACT_RELU2))
    W = (rnd(g.n_rows, K) / K ** 0.5).to(dev, dtype)
    mix = torch.rand(4, K, generator=gen).to(dev, dtype)
    ln_w, ln_b = (1 + 0.2 * rnd(K)).to(dev), (0.1 * rnd(K)).to(dev)
    slots = torch.tensor([3, 0, 4][:M], device=dev)
    pools0 = [rnd(6, K).to(dev, dtype) for _ in range(2)]
    ref_pools, pools = [p.clone() for p in pools0], [p.clone() for p in pools0]
    res = (3 * rnd(M, K) + 1).to(dev)
    nan = lambda n, dt=dtype: torch.full((M, n), float("nan"), device=dev, dtype=dt)  # noqa: E731
    ref_pend = pend = None
    for step in range(3):
        x = rnd(M, K).to(dev, dtype)
        cur = step % 2   # this call reads pools[cur]; the pending copy goes to the other one
        ref_out, ref_res, ref_xn = ln_gemv_reference(x, res, ln_w, ln_b, ref_pools[cur], slots, mix, W, g,
                                                     nan(g.n_rows), nan(K, torch.float32), nan(K), ref_pend, eps=1e-5)
        before = (res.clone(), pools[cur].clone())
        out, new_res, xn = ln_gemv(x, res, ln_w, ln_b, pools[cur], slots, mix, W, g, nan(g.n_rows),
                                   nan(K, torch.float32), nan(K), pend, eps=1e-5, block_n=block_n, persist=persist)
        assert torch.equal(res, before[0]) and torch.equal(pools[cur], before[1])
        assert torch.equal(new_res, ref_res)
        assert torch.isfinite(out).all() and rel_err(out, ref_out) < (1e-5 if dtype == torch.float32 else 5e-3)
        assert torch.allclose(xn.float(), ref_xn.float(), atol=1e-5 if dtype == torch.float32 else 2e-3)
        for a, b in zip(pools, ref_pools):
            assert torch.allclose(a.float(), b.float(), atol=1e-5 if dtype == torch.float32 else 2e-3)
        if step:
            assert torch.equal(pools[1 - cur][slots], pend[0]), "the pending rows landed in the other pool"
            rest = [r for r in range(6) if r not in slots.tolist()]
            assert torch.equal(pools[1 - cur][rest], pools0[1 - cur][rest])
        # as the model's sites: the rows of the pool this call read are written by the next call
        ref_pend, pend = (ref_xn, ref_pools[cur], slots), (xn, pools[cur], slots)
        res = new_res


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("C,rows", [(256, None), (512, 32)])
def test_ffn_fused_matches_reference_chained(kernel_device, dtype, C, rows):
    """ffn_fused == ln_gemv (relu^2 key rows) + sparse_rows_gemv references over 3 chained calls
    with the pending copy, outputs poisoned, res / x_prev not mutated, the accumulator and ticket
    back at 0 (so the next call reduces again), the same bits when called again; about half the
    hidden rows are zero, and one program's rows are all zero (its value rows never read)."""
    tf = pytest.importorskip("rwkvrt.ops.decode.triton_ffn")
    from rwkvrt.ops.decode import ffn_fused_reference
    gen = torch.Generator().manual_seed(C)
    dev, F = kernel_device, 4 * C
    rnd = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    Wk = (rnd(F, C) / C ** 0.5)
    Wk[:32] = 0   # h = 0 on these rows: a whole program's rows (R <= 32) are skipped
    Wk, WvT = Wk.to(dev, dtype), (rnd(F, C) / F ** 0.5).to(dev, dtype)
    mix = torch.rand(1, C, generator=gen).to(dev, dtype)
    ln_w, ln_b = (1 + 0.2 * rnd(C)).abs().to(dev), (0.1 * rnd(C)).to(dev)
    slots = torch.tensor([2], device=dev)
    pools0 = [rnd(4, C).to(dev, dtype) for _ in range(2)]
    ref_pools, pools = [p.clone() for p in pools0], [p.clone() for p in pools0]
    scratch = tf.FfnScratch(F, C, dev, rows=rows)
    res = (3 * rnd(1, C) + 1).to(dev)
    nan = lambda dt=dtype: torch.full((1, C), float("nan"), device=dev, dtype=dt)  # noqa: E731
    ref_pend = pend = None
    for step in range(3):
        x = rnd(1, C).to(dev, dtype)
        cur = step % 2
        ref = ffn_fused_reference(x, res, ln_w, ln_b, ref_pools[cur], slots, mix, Wk, WvT, nan(), nan(torch.float32),
                                  nan(), ref_pend, None, eps=1e-5)
        before = (res.clone(), pools[cur].clone())
        out, new_res, xn = tf.ffn_fused_triton(x, res, ln_w, ln_b, pools[cur], slots, mix, Wk, WvT, nan(),
                                               nan(torch.float32), nan(), pend, scratch, eps=1e-5)
        assert torch.equal(res, before[0]) and torch.equal(pools[cur], before[1])
        assert torch.equal(new_res, ref[1]) and torch.allclose(xn.float(), ref[2].float(), atol=2e-3)
        assert torch.isfinite(out).all() and rel_err(out, ref[0]) < (1e-5 if dtype == torch.float32 else 5e-3)
        assert int(scratch.count.abs().sum()) == 0 and int(scratch.acc.abs().sum()) == 0, "scratch back at zero"
        again = tf.ffn_fused_triton(x, res, ln_w, ln_b, pools[cur].clone(), slots, mix, Wk, WvT, nan(),
                                    nan(torch.float32), nan(), None, scratch, eps=1e-5)[0]
        assert torch.equal(again, out), "the fixed-point sum gives the same bits on every call"
        for a, b in zip(pools, ref_pools):
            assert torch.allclose(a.float(), b.float(), atol=2e-3)
        ref_pend, pend = (ref[2], ref_pools[cur], slots), (xn, pools[cur], slots)
        res = new_res


def test_ffn_fused_plan():
    tf = pytest.importorskip("rwkvrt.ops.decode.triton_ffn")
    assert tf.plan(8192) == 64 and tf.plan(3072) == 16 and tf.plan(16384) == 64 and tf.plan(1024, 32) == 32
    with pytest.raises(ValueError):
        tf.plan(1024, 24)


def _lora_case(B, H, N, has_v, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    C = H * N
    D = {"w": 32, "a": 32, "g": 64, "v": 32}
    names = ["v", "a", "w", "g"] if has_v else ["a", "w", "g"]
    lora, off = {}, 3 * C
    for n in names:
        lora[n] = (off, D[n])
        off += D[n]
    rkvh = torch.randn(B, off, generator=gen)
    for n in ("w", "g"):  # activated hidden rows, as grouped_gemv leaves them
        o, d = lora[n]
        rkvh[:, o:o + d] = torch.tanh(rkvh[:, o:o + d]) if n == "w" else torch.sigmoid(rkvh[:, o:o + d])
    # up weights as RWKV7Fast keeps them: [n, C, Dmax] zero-padded, one row stride
    up_all = torch.zeros(4, C, max(D.values()))
    up = {}
    for j, n in enumerate(["v", "a", "w", "g"]):
        up_all[j, :, :D[n]] = torch.randn(C, D[n], generator=gen) * 0.3
    up_all = up_all.to(device, dtype)
    for j, n in enumerate(["v", "a", "w", "g"]):
        up[n] = up_all[j, :, :D[n]]
    f32 = lambda t: t.to(device, torch.float32).contiguous()  # noqa: E731
    params = dict(w0=f32(torch.randn(C, generator=gen) - 0.5), a0=f32(torch.randn(C, generator=gen)),
                  v0=f32(torch.randn(C, generator=gen)) if has_v else None,
                  k_k=f32(0.5 + torch.rand(C, generator=gen)), k_a=f32(torch.rand(C, generator=gen) * 2),
                  r_k=f32(torch.randn(H, N, generator=gen) * 0.5), ln_w=f32(1 + 0.3 * torch.randn(C, generator=gen)),
                  ln_b=f32(0.3 * torch.randn(C, generator=gen)))
    v_first = torch.randn(B, C, generator=gen).to(device, dtype) if has_v else None
    return rkvh.to(device, dtype), lora, up, v_first, params


@pytest.mark.gpu
@pytest.mark.parametrize("has_v", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("early", [False, True])
def test_tmix_lora_step_matches_reference_chained(kernel_device, has_v, dtype, early):
    """early: state rows read before the PDL wait (safe here: other launches and copies come
    between the chained calls, as in the decode step)."""
    step = _tmix()
    B, H, N = 3, 2, 16
    slots = torch.tensor([4, 0, 2], device=kernel_device)
    pool0 = (0.3 * torch.randn(5, H, N, N, generator=torch.Generator().manual_seed(9))).to(kernel_device)
    pool_t, pool_r = pool0.clone(), pool0.clone()
    for t in range(3):  # chained calls: the state carries over in place
        rkvh, lora, up, vf, params = _lora_case(B, H, N, has_v, dtype, kernel_device, seed=t)
        out = step(rkvh, pool_t, slots, lora=lora, up=up, v_first=vf, early_state=early, **params)
        ref = tmix_lora_step_reference(rkvh.float(), pool_r, slots, lora=lora, up={n: u.float() for n, u in up.items()},
                                       v_first=None if vf is None else vf.float(), **params)
        assert out.dtype == dtype and torch.isfinite(out).all()
        assert rel_err(out, ref) < TOL[dtype], (t, rel_err(out, ref))
    assert rel_err(pool_t, pool_r) < TOL[dtype]
    assert torch.equal(pool_t[[1, 3]], pool0[[1, 3]])  # rows outside ``slots`` untouched


def test_pdl_prefetch_budget_and_switch(monkeypatch):
    pdl = pytest.importorskip("rwkvrt.ops._pdl")
    assert pdl.prefetch_lines(2048, 2048 * 2, 16 << 20) == 32         # 8 MB matrix, 16 MB budget: whole rows
    assert pdl.prefetch_lines(2048, 2048 * 2, 4 << 20) == 16 and pdl.prefetch_lines(8, 4096, 0) == 0
    assert pdl.prefetch_lines(16384, 4096 * 2) * 16384 * 128 <= pdl.PREFETCH_BUDGET
    assert pdl.prefetch_lines(10, 100) == 1                            # shorter than a line: one
    assert not pdl.enabled(torch.device("cpu"))
    monkeypatch.setenv("RWKVRT_PDL", "0")
    assert not pdl.enabled(torch.device("cuda"))


def _sparse():
    return pytest.importorskip("rwkvrt.ops.decode.triton_sparse")


def _relu2_rows(M, K, zero_frac, gen, dtype, device):
    """[M, K] like the FFN's relu^2 output: exact zeros at ~zero_frac of the positions."""
    h = torch.randn(M, K, generator=gen) ** 2
    h[torch.rand(M, K, generator=gen) < zero_frac] = 0
    return h.to(device, dtype)


@pytest.mark.parametrize("M", [1, 3, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("reduce_elems,early_mask", [(4096, True), (64, True), (4096, False)])
def test_sparse_rows_gemv_matches_reference_chained(kernel_device, M, dtype, reduce_elems, early_mask, monkeypatch):
    """Split-K partials + last-program sum == h @ WT; three chained calls on one scratch (the
    counters reset themselves), NaN-poisoned outputs, N not a multiple of the column block;
    the partials summed in one chunk of splits, or in two (reduce_elems 64: 2 splits a chunk); the
    row masks of all tiles computed up front (early_mask) or from each tile's h."""
    mod = _sparse()
    monkeypatch.setattr(mod, "REDUCE_ELEMS", reduce_elems)
    monkeypatch.setattr(mod, "EARLY_MASK", early_mask)
    gen = torch.Generator().manual_seed(M)
    K, N = 192, 80
    WT = (torch.randn(K, N, generator=gen) / K ** 0.5).to(kernel_device, dtype)
    scratch = mod.SparseScratch(N, K, kernel_device, block_n=32, splits=3)
    assert scratch.block_k == 32 and scratch.count.numel() == 3
    for zero_frac in (0.5, 0.9, 1.0):
        h = _relu2_rows(M, K, zero_frac, gen, dtype, kernel_device)
        ref = sparse_rows_gemv_reference(h, WT, torch.empty(M, N, device=kernel_device))
        out = mod.sparse_rows_gemv_triton(h, WT, torch.full((M, N), float("nan"), dtype=dtype, device=kernel_device),
                                          scratch)
        dense = mod.sparse_rows_gemv_triton(h, WT, torch.full((M, N), float("nan"), dtype=dtype,
                                                              device=kernel_device), scratch, skip=False)
        assert torch.equal(out, dense)  # skipping rows of zeros changes no sum
        if zero_frac == 1.0:
            assert (out == 0).all()
        else:
            assert rel_err(out, ref) < (1e-5 if dtype == torch.float32 else 5e-3)
        assert int(scratch.count.abs().sum()) == 0


def test_sparse_rows_gemv_plan_and_bad_requests():
    mod = _sparse()
    # the published FFN shapes: every program has >= 2 tiles, at most MAX_SPLITS splits (64 up to 2048)
    assert mod.plan(2048, 8192) == (256, 32, 64) and mod.plan(4096, 16384) == (256, 32, 32)
    for C in (768, 2048, 4096):
        bn, bk, s = mod.plan(C, 4 * C)
        assert (4 * C) % (bk * s) == 0 and (4 * C) // (bk * s) >= 2
        assert s <= (mod.WIDE_SPLITS if C <= mod.WIDE_MAX_N else mod.MAX_SPLITS)
    assert mod.plan(64, 32) == (128, 32, 1)
    with pytest.raises(ValueError, match="multiple of 16"):
        mod.plan(64, 40)
    with pytest.raises(ValueError, match="must divide"):
        mod.plan(64, 96, splits=2)


def test_sparse_kernel_compiles_for_sm90_without_spills():
    """The 1.5B FFN value at the default plan: the last program's sum of all 64 splits in one load
    round (REDUCE_ELEMS) fits the registers."""
    mod = _sparse()
    from test_timemix_triton import sm90_ptxas_report

    bn, bk, S = mod.plan(2048, 8192)
    sc = min(64, mod.REDUCE_ELEMS // bn)
    ce = dict(K_SPLIT=8192 // S, SPLITS=S, BLOCK_N=bn, BLOCK_K=bk, M_PAD=16, SKIP=True, IEEE=False, STAGES=mod.STAGES,
              USE_PDL=True, S_CHUNK=sc, N_CHUNKS=-(-S // sc), EARLY_MASK=True, TILES_PAD=8192 // S // bk)
    types = {"h_ptr": "*fp16", "wt_ptr": "*fp16", "out_ptr": "*fp16", "part_ptr": "*fp32", "count_ptr": "*i32"}
    rep = sm90_ptxas_report(mod.sparse_rows_gemv_kernel, types, ce, mod.NUM_WARPS, div16_extra=("N", "shm", "som", "sps"))
    assert S == 64 and sc == 64 and " 0 bytes spill stores" in rep, rep


@pytest.mark.parametrize("kernel", ["ln_gemv", "ln_gemv_persist", "ffn_fused"])
def test_ln_and_ffn_kernels_compile_for_sm90_without_spills(kernel):
    """Ahead-of-time sm_90 compile (no GPU needed) at the 1.5B shapes and default tiles: no spills
    (CI has no GPU: this at least catches a kernel that no longer compiles or starts spilling)."""
    pytest.importorskip("triton")
    from test_timemix_triton import sm90_ptxas_report

    from rwkvrt.ops.decode import triton_ffn, triton_gemv
    half = {n + "_ptr": "*fp16" for n in ("x", "prev", "mix", "w", "wk", "wvt", "out", "psrc", "pdst", "xn")}
    types = {**half, "slots_ptr": "*i64", "pslots_ptr": "*i64", "xrow_ptr": "*i32", "act_ptr": "*i32",
             "cnt_ptr": "*i32", "acc_ptr": "*i64", "eps": "fp32"}
    strides = ("sxm", "srm", "snm", "spb", "smix", "som", "sxn", "sps", "spd")
    common = dict(HAS_PENDING=True, USE_PDL=True, PF_LINES=4, LINE_ELEMS=64)
    if kernel == "ln_gemv":
        bn, bk = triton_gemv.LN_TILE
        ce = dict(K=2048, K_PAD=2048, BLOCK_N=bn, BLOCK_K=bk, M_PAD=1, HAS_ACT=True, EVEN_N=True,
                  STAGES=triton_gemv.LN_STAGES, **common)
        rep = sm90_ptxas_report(triton_gemv.ln_gemv_kernel, types, ce, triton_gemv.NUM_WARPS, div16_extra=strides)
    elif kernel == "ln_gemv_persist":   # at its largest default width (LNP_MAX_K)
        K = triton_gemv.LNP_MAX_K
        ce = dict(K=K, K_PAD=K, BLOCK_N=triton_gemv.LNP_BLOCK_N, NPP=4, HAS_ACT=True, STAGES=triton_gemv.LNP_STAGES,
                  PF_ROWS=32, INTERLEAVE=True, **common)
        rep = sm90_ptxas_report(triton_gemv.ln_gemv_persist_kernel, types, ce, triton_gemv.LNP_NUM_WARPS,
                                div16_extra=("spb", "smix", "sxn", "sps", "spd"))
    else:
        R = triton_ffn.plan(8192)
        ce = dict(C=2048, C_PAD=2048, F=8192, R=R, BLOCK_K=triton_ffn.BLOCK_K, BLOCK_C=triton_ffn.BLOCK_C,
                  IEEE=False, STAGES=triton_ffn.STAGES,
                  VSTAGES=triton_ffn.VSTAGES, **common)
        rep = sm90_ptxas_report(triton_ffn.ffn_fused_kernel, types, ce, triton_ffn.NUM_WARPS, div16_extra=strides)
    assert "0 bytes spill stores" in rep and "0 bytes spill loads" in rep, rep
