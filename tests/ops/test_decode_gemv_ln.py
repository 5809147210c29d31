"""Fused decode GEMV + residual add + LayerNorm + token-shift lerps (``gemv_add_ln_lerp``) vs its reference.

The Triton kernel runs on a GPU or under the Triton interpreter (kernel_device fixture); the
interpreter runs the programs one after another, so it checks the arithmetic and the counter
protocol (last program runs the epilogue, counter left 0), not the memory ordering: that is
checked on the sm_90 PTX below (the release/acquire atomic, the barrier before it, the L2 reads).
Sizes are small: the interpreter is slow."""
from __future__ import annotations

import pytest
import torch
from conftest import TOL, rel_err
from test_timemix_triton import sm90_ptxas_report

from rwkvrt.ops.decode import RowGroups, gemv_add_ln_lerp_reference

POOL = 5
SLOTS = [2, 0, 3]
EPS = 1e-5


def _fused():
    return pytest.importorskip("rwkvrt.ops.decode.triton_gemv_ln").gemv_add_ln_lerp_triton


def _case(B, Mx, C, K, dtype, device, seed=0):
    """Inputs of one call at realistic scales: xs [1, B, K], W [C, K] (activation dtype), res
    [B, 1, C] fp32, LayerNorm weights fp32, a non-zero x_prev pool [POOL, C] and mix [Mx, C]."""
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    act = lambda t: t.to(device, dtype)  # noqa: E731
    xs, W = act(rnd(1, B, K)), act(rnd(C, K) / K ** 0.5)
    res = (2 * rnd(B, 1, C)).to(device)
    ln = ((1 + 0.3 * rnd(C)).to(device), (0.3 * rnd(C)).to(device))
    pool = act(rnd(POOL, C))
    mix = act(torch.rand(Mx, C, generator=gen))
    return xs, W, res, ln, pool, mix


def _nan(B, C, dtype, device):
    return torch.full((B, C), float("nan"), dtype=dtype, device=device)


def _both(xs, W, res, ln, pool, mix, slots, counter, **kw):
    """(fused outputs, reference outputs), each (lerps, new_res, x_scratch, pool after)."""
    B, C = xs.shape[1], W.shape[0]
    g = RowGroups.single(C)
    p_f, p_r = pool.clone(), pool.clone()
    s_f = _nan(B, C, W.dtype, W.device)
    lf, rf = _fused()(xs, W, g, s_f, res, ln[0], ln[1], p_f, mix, eps=EPS, slots=slots, counter=counter, **kw)
    s_r = torch.empty(B, C, dtype=W.dtype, device=W.device)
    lr, rr = gemv_add_ln_lerp_reference(xs, W, g, s_r, res, ln[0], ln[1], p_r, mix, eps=EPS, slots=slots)
    return (lf, rf, s_f, p_f), (lr, rr, s_r, p_r)


def _check(fused, ref, dtype, pool0, slots):
    (lf, rf, sf, pf), (lr, rr, sr, pr) = fused, ref
    assert lf.shape == lr.shape and lf.dtype == lr.dtype and rf.shape == rr.shape and rf.dtype == torch.float32
    for t in (lf, rf, sf, pf):
        assert torch.isfinite(t.float()).all()
    tol = 1e-5 if dtype == torch.float32 else TOL[dtype]  # half: one-ulp flips of the rounded rows
    for name, a, b in (("lerps", lf, lr), ("new_res", rf, rr), ("x_scratch", sf, sr), ("x_prev", pf, pr)):
        assert rel_err(a, b) < tol, (name, rel_err(a, b))
    untouched = [i for i in range(POOL) if i not in slots.tolist()]
    assert torch.equal(pf[untouched], pool0[untouched])  # rows outside ``slots`` untouched


@pytest.mark.gpu
@pytest.mark.parametrize("B", [1, 2, 3])
@pytest.mark.parametrize("Mx", [6, 1])
def test_gemv_ln_matches_reference(kernel_device, B, Mx):
    xs, W, res, ln, pool, mix = _case(B, Mx, 96, 64, torch.float32, kernel_device, seed=B * 10 + Mx)
    slots = torch.tensor(SLOTS[:B], device=kernel_device)
    counter = torch.zeros(1, dtype=torch.int32, device=kernel_device)
    out = _both(xs, W, res, ln, pool, mix, slots, counter)
    _check(*out, torch.float32, pool, slots)
    assert counter.item() == 0


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gemv_ln_half_dtypes_and_mix_vector(kernel_device, dtype):
    """Half activations (lerps, x_scratch, x_prev rounded as add_ln_lerp rounds them), mix given as [C]."""
    xs, W, res, ln, pool, mix = _case(2, 1, 128, 128, dtype, kernel_device, seed=7)
    slots = torch.tensor(SLOTS[:2], device=kernel_device)
    counter = torch.zeros(1, dtype=torch.int32, device=kernel_device)
    out = _both(xs, W, res, ln, pool, mix[0], slots, counter)
    _check(*out, dtype, pool, slots)
    assert out[0][0].dtype == dtype and counter.item() == 0


@pytest.mark.gpu
def test_gemv_ln_equals_unfused_triton_ops_bitwise(kernel_device):
    """One epilogue chunk: the same arithmetic as grouped_gemv_triton + add_ln_lerp_triton. Under the
    interpreter that is bit for bit; on a GPU the row sums may be reduced in another order."""
    fused = _fused()
    gemv = pytest.importorskip("rwkvrt.ops.decode.triton_gemv").grouped_gemv_triton
    add_ln_lerp = pytest.importorskip("rwkvrt.ops.token_shift.triton_lerp").add_ln_lerp_triton
    B, C = 3, 128
    xs, W, res, ln, pool, mix = _case(B, 6, C, 64, torch.float16, kernel_device, seed=3)
    slots = torch.tensor(SLOTS, device=kernel_device)
    counter = torch.zeros(1, dtype=torch.int32, device=kernel_device)
    g = RowGroups.single(C)
    p_f, p_u = pool.clone(), pool.clone()
    s_f = _nan(B, C, torch.float16, kernel_device)
    lf, rf = fused(xs, W, g, s_f, res, ln[0], ln[1], p_f, mix, eps=EPS, slots=slots, counter=counter)
    s_u = gemv(xs, W, g, _nan(B, C, torch.float16, kernel_device))
    lu, ru = add_ln_lerp(s_u.view(B, 1, C), res, ln[0], ln[1], p_u, mix, eps=EPS, slots=slots)
    assert torch.equal(s_f, s_u)  # the GEMV main loop is shared
    pairs = ((lf, lu), (rf, ru), (p_f, p_u))
    if kernel_device == "cpu":
        for a, b in pairs:
            assert torch.equal(a, b)
    else:
        for a, b in pairs:
            assert rel_err(a, b) < 2e-3


@pytest.mark.gpu
def test_gemv_ln_chained_calls_reuse_counter_and_several_chunks(kernel_device):
    """Three calls on ONE counter (each must leave it 0 for the next: otherwise no program sees itself
    last and the outputs stay unwritten), the residual and x_prev carried over, C = 96 walked in
    32-channel epilogue chunks; no slots (rows 0..B-1)."""
    fused = _fused()
    B, C, K = 3, 96, 64
    counter = torch.zeros(1, dtype=torch.int32, device=kernel_device)
    *_, pool, _ = _case(B, 6, C, K, torch.float32, kernel_device, seed=0)
    pool = pool[:B].clone()
    res_f = res_r = _case(B, 6, C, K, torch.float32, kernel_device, seed=1)[2]
    pool_f, pool_r = pool.clone(), pool.clone()
    g = RowGroups.single(C)
    for step in range(3):
        xs, W, _, ln, _, mix = _case(B, 6, C, K, torch.float32, kernel_device, seed=10 + step)
        lf, res_f = fused(xs, W, g, _nan(B, C, torch.float32, kernel_device), res_f, ln[0], ln[1], pool_f, mix,
                          eps=EPS, slots=None, counter=counter, ln_chunk=32)
        assert counter.item() == 0, step
        lr, res_r = gemv_add_ln_lerp_reference(xs, W, g, torch.empty(B, C, device=kernel_device), res_r, ln[0],
                                               ln[1], pool_r, mix, eps=EPS, slots=None)
        assert torch.isfinite(lf).all() and rel_err(lf, lr) < 1e-5, (step, rel_err(lf, lr))
        assert rel_err(res_f, res_r) < 1e-5 and rel_err(pool_f, pool_r) < 1e-5, step


def test_gemv_ln_reference_is_the_composition():
    """The reference == grouped_gemv_reference then add_ln_lerp_reference (plain torch, CPU)."""
    from rwkvrt.ops.decode import grouped_gemv_reference
    from rwkvrt.ops.token_shift import add_ln_lerp_reference

    B, C = 2, 64
    xs, W, res, ln, pool, mix = _case(B, 6, C, 32, torch.float32, "cpu", seed=5)
    slots = torch.tensor(SLOTS[:B])
    p1, p2 = pool.clone(), pool.clone()
    g = RowGroups.single(C)
    s1 = torch.empty(B, C)
    l1, r1 = gemv_add_ln_lerp_reference(xs, W, g, s1, res, ln[0], ln[1], p1, mix, eps=EPS, slots=slots,
                                        counter=None, pdl=True)
    s2 = grouped_gemv_reference(xs, W, g, torch.empty(B, C))
    l2, r2 = add_ln_lerp_reference(s2.view(B, 1, C), res, ln[0], ln[1], p2, mix, eps=EPS, slots=slots)
    for a, b in ((l1, l2), (r1, r2), (p1, p2), (s1, s2)):
        assert torch.equal(a, b)
    assert l1.shape == (6, B, 1, C) and r1.shape == (B, 1, C)


def test_resolve_gemv_ln():
    from rwkvrt.ops import decode

    assert decode.resolve_gemv_ln("cpu") is gemv_add_ln_lerp_reference
    assert decode.resolve_gemv_ln("cuda", "reference") is gemv_add_ln_lerp_reference
    assert len(decode.resolve("cpu")) == 2  # RWKV7Fast unpacks resolve's pair
    pytest.importorskip("triton")
    assert decode.resolve_gemv_ln("cuda", "triton") is _fused()


# ---- model level: decode_fuse_ln on == off ----------------------------------------------------------

def _fuse_ln_vs_unfused(device, backend, steps, batches=(1, 3)):
    from rwkvrt.models.rwkv7_fast import RWKV7Fast
    from rwkvrt.models.shapes import make_config, random_state_dict
    from rwkvrt.state import State

    cfg = make_config(2, 128, 301)
    sd = random_state_dict(cfg, seed=11)
    kw = dict(device=device, dtype=torch.float32, decode_fused=True, decode_max_batch=4)
    # the unfused side on the reference decode ops when the device is the interpreter's CPU (half the
    # interpreter time; tests/models/test_fast_model.py checks triton decode == reference decode)
    plain = RWKV7Fast(cfg, sd, backend="reference" if device == "cpu" else backend, **kw)
    fused = RWKV7Fast(cfg, sd, backend=backend, decode_fuse_ln=True, **kw)
    assert fused.decode_fuse_ln and not plain.decode_fuse_ln
    g = torch.Generator().manual_seed(5)
    for B in batches:
        tok = torch.randint(0, cfg.vocab_size, (B, steps), generator=g)
        pool = State.zeros(cfg, POOL)
        gs = torch.Generator().manual_seed(B)
        for t in (pool.att_x, pool.wkv, pool.ffn_x):  # a non-zero state in every row
            t.copy_(torch.randn(t.shape, generator=gs) * 0.5)
        pool = State(*(t.to(device) for t in (pool.att_x, pool.wkv, pool.ffn_x)))
        p_plain, p_fused = pool.clone(), pool.clone()
        slots = torch.tensor(SLOTS[:B], device=device)
        for t in range(steps):
            step = tok[:, t:t + 1].to(device)
            a = plain.forward(step, p_plain, slots=slots)
            b = fused.forward(step, p_fused, slots=slots)
            assert b.shape == (B, cfg.vocab_size) and rel_err(b, a) < 1e-5, (B, t, rel_err(b, a))
        for n in ("att_x", "wkv", "ffn_x"):
            assert rel_err(getattr(p_fused, n), getattr(p_plain, n)) < 1e-5, n
        untouched = [i for i in range(POOL) if i not in SLOTS[:B]]
        assert torch.equal(p_fused.wkv[:, untouched], pool.wkv[:, untouched])
    if device != "cpu" or backend == "triton":
        assert int(fused._ln_counters.abs().sum()) == 0  # every counter left 0


def test_fast_decode_fuse_ln_reference_ops_match_unfused():
    _fuse_ln_vs_unfused("cpu", "reference", steps=3)


@pytest.mark.gpu
def test_fast_decode_fuse_ln_triton_ops_match_unfused(kernel_device):
    # the interpreter is slow (~6 s a step of the two models): B = 3 with slots, two chained steps
    _fuse_ln_vs_unfused(kernel_device, "triton", steps=2, batches=(3,) if kernel_device == "cpu" else (1, 3))


# ---- sm_90 compile: registers, spills and the memory-ordering instructions ----------------------------

def _sm90_types(act="*fp16"):
    types = {n: act for n in ("x_ptr", "w_ptr", "out_ptr", "prev_ptr", "mix_ptr", "lerp_ptr")}
    return types | {"xrow_ptr": "*i32", "slots_ptr": "*i64", "counter_ptr": "*i32", "eps": "fp32"}


def _sm90_constexprs(K, C, mix, chunk=None):
    ln = pytest.importorskip("rwkvrt.ops.decode.triton_gemv_ln")
    return dict(K=K, BLOCK_N=4, BLOCK_K=512, M_PAD=1, EVEN_N=True, STAGES=3, USE_PDL=True, PF_LINES=16,
                LINE_ELEMS=64, MIX=mix, HAS_SLOTS=True, CHUNK=min(C, chunk or ln.LN_CHUNK))


@pytest.mark.parametrize("K,mix", [(2048, 6), (2048, 1), (8192, 1)])
def test_gemv_ln_kernel_compiles_for_sm90_without_spills(K, mix):
    """fp16, 4 warps, batch 1: K 2048 is the 1.5B's Wo (mix 1, ln2) / its ffn value feeds K = 4C
    (mix 6, ln1); K 8192 the 2048-wide FFN value. Prints ptxas's register line (run with -s)."""
    ln = pytest.importorskip("rwkvrt.ops.decode.triton_gemv_ln")
    report = sm90_ptxas_report(ln.gemv_add_ln_lerp_kernel, _sm90_types(), _sm90_constexprs(K, 2048, mix), 4)
    print(f"\nsm_90 gemv_add_ln_lerp K={K} mix={mix}: " + " | ".join(
        line.strip() for line in report.splitlines() if "registers" in line or "spill" in line))
    assert " 0 bytes spill stores" in report, report


def test_gemv_ln_sm90_ptx_has_the_ordering_instructions():
    """The last-program protocol in the compiled code: bar.sync before ONE gpu-scope acq_rel atomic add,
    the epilogue's x reads through L2 (ld.global.cg), the counter reset by an atomic exchange."""
    triton = pytest.importorskip("triton")
    ln = pytest.importorskip("rwkvrt.ops.decode.triton_gemv_ln")
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError:
        pytest.skip("this triton has no ASTSource / GPUTarget")
    kernel = ln.gemv_add_ln_lerp_kernel
    if not isinstance(kernel, triton.runtime.JITFunction):
        pytest.skip("compile check runs without TRITON_INTERPRET=1")
    names = kernel.arg_names
    consts = _sm90_constexprs(2048, 2048, 6)
    types = _sm90_types()
    sig = {n: types.get(n, "constexpr" if n in consts else ("*fp32" if n.endswith("_ptr") else "i32")) for n in names}
    src = ASTSource(fn=kernel, signature=sig, constexprs={(names.index(n),): v for n, v in consts.items()},
                    attrs={(names.index(n),): [["tt.divisibility", 16]] for n in names if n.endswith("_ptr")})
    ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4}).asm["ptx"]
    lines = [ln_.strip() for ln_ in ptx.splitlines()]
    adds = [i for i, s in enumerate(lines) if s.startswith(("atom", "@")) and "atom" in s and ".add" in s]
    assert len(adds) == 1 and ".acq_rel" in lines[adds[0]] and ".gpu" in lines[adds[0]], [lines[i] for i in adds]
    assert any("bar.sync" in s for s in lines[:adds[0]]), "no barrier before the counter's atomic add"
    assert any("ld.global.cg" in s for s in lines[adds[0]:]), "the epilogue does not read x through L2"
    assert any("atom" in s and ".exch" in s for s in lines[adds[0]:]), "no counter reset after the epilogue"
