"""Triton WKV7 (step kernel, chunked kernels, dispatcher) against the fp32 reference loop.

Runs on a GPU, or on CPU with TRITON_INTERPRET=1 (correctness only; sizes kept small
because the interpreter is slow, one N=64 case per kernel).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import TOL, rel_err
from rwkvrt.ops.wkv7.reference import wkv7_reference

pytestmark = pytest.mark.gpu


def make_inputs(B, T, H, N, device, *, dtype=torch.float32, seed=0, hard=False):
    """Inputs like a real layer's: a = -kk, b = kk * a_lr (kk unit-norm per head, a_lr in
    (0, 1)), raw decay logits in about [-8, 4] plus saturating extremes, k scaled so the
    state stays O(1), and a non-zero fp32 initial state. ``hard``: the ill-conditioned case
    for a chunk's (I - A_ab)^{-1}: strongly correlated kk over time, a_lr ~ 1, almost no
    decay (a Neumann-series inverse loses all fp32 accuracy there at C >= 32)."""
    g = torch.Generator().manual_seed(seed)

    def rn(*s):
        return torch.randn(*s, generator=g)

    r, v = rn(B, T, H, N), rn(B, T, H, N)
    k = rn(B, T, H, N) / N ** 0.5
    w = torch.rand(B, T, H, N, generator=g) * 12 - 8
    w[..., 0] = 30.0    # fastest decay (0.545)
    w[..., 1] = -30.0   # no decay
    kk = F.normalize(rn(B, T, H, N), dim=-1)
    a_lr = torch.rand(B, T, H, N, generator=g)
    if hard:
        w = torch.full((B, T, H, N), -30.0)
        kk = F.normalize(rn(B, 1, H, N) + 0.3 * rn(B, T, H, N), dim=-1)
        a_lr = 1 - 0.01 * a_lr
    xs = tuple(x.to(device=device, dtype=dtype) for x in (r, w, k, v, -kk, kk * a_lr))
    return xs, (rn(B, H, N, N) * 0.3).to(device)


def check(fn, B, T, H, N, device, *, dtype=torch.float32, split=None, **kw):
    """Run fn over [0, T) (in two calls at ``split`` if given) and compare with the reference."""
    xs, s0 = make_inputs(B, T, H, N, device, dtype=dtype)
    y_ref, s_ref = wkv7_reference(*(x.cpu() for x in xs), s0.cpu())
    state = s0.clone()
    if split is None:
        y, s = fn(*xs, state, **kw)
        assert s is state, "state must be updated in place"
    else:
        y1, s = fn(*(x[:, :split].contiguous() for x in xs), state, **kw)
        y2, s = fn(*(x[:, split:].contiguous() for x in xs), s, **kw)
        y = torch.cat([y1, y2], dim=1)
    assert y.dtype == dtype and y.shape == (B, T, H, N) and s.dtype == torch.float32
    assert torch.isfinite(y).all() and torch.isfinite(s).all()
    # fp32: the interpreter's dot is exact fp32; on a GPU allow tf32x3 rounding
    tol = (1e-4 if device == "cpu" else 1e-3) if dtype == torch.float32 else TOL[dtype]
    assert rel_err(y, y_ref) < tol, ("y", rel_err(y, y_ref))
    assert rel_err(s, s_ref) < tol, ("state", rel_err(s, s_ref))


@pytest.fixture
def nan_poison(monkeypatch):
    """Fresh buffers (outputs and scratch) come back full of NaN, so an unwritten element shows."""
    empty, empty_like = torch.empty, torch.empty_like
    monkeypatch.setattr(torch, "empty", lambda *a, **k: empty(*a, **k).fill_(float("nan")))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: empty_like(*a, **k).fill_(float("nan")))


def _recurrent():
    from rwkvrt.ops.wkv7.triton_recurrent import wkv7_recurrent_triton
    return wkv7_recurrent_triton


def _skip_refused(variant, C):
    if variant[1] != "scan" and C > 32:
        pytest.skip("output='parallel'/'pairs' are refused at chunk 64 (illegal address seen on an H100)")


def test_wkv7_chunk_refuses_three_kernel_outputs_at_chunk_64():
    pytest.importorskip("triton")
    from rwkvrt.ops.wkv7.triton_chunk import wkv7_chunk_triton
    xs = [torch.zeros(1, 4, 1, 16) for _ in range(6)]
    with pytest.raises(AssertionError, match="chunk_size <= 32"):
        wkv7_chunk_triton(*xs, torch.zeros(1, 1, 16, 16), chunk_size=64, output="pairs")


def _chunk(variant=None):
    """The chunked kernel; ``variant`` = (inverse, output) pins those keyword arguments."""
    import functools

    from rwkvrt.ops.wkv7.triton_chunk import wkv7_chunk_triton
    if variant is None:
        return wkv7_chunk_triton
    return functools.partial(wkv7_chunk_triton, inverse=variant[0], output=variant[1])


# (inverse, output) of wkv7_chunk_triton: the default first
VARIANTS = [("loop", "scan"), ("doubling", "scan"), ("loop", "parallel"), ("doubling", "parallel"),
            ("doubling", "pairs")]
VARIANT_IDS = ["-".join(v) for v in VARIANTS]


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("T", [1, 2, 15, 63, 100])
def test_wkv7_recurrent_triton_matches_reference(kernel_device, nan_poison, B, T):
    check(_recurrent(), B, T, 2, 16, kernel_device)


@pytest.mark.parametrize("B,T,H,N,kw", [
    (1, 1000, 1, 16, {}),
    (1, 20, 1, 64, {}),
    (2, 9, 1, 64, {"block_v": 32}),
])
def test_wkv7_recurrent_triton_shapes(kernel_device, nan_poison, B, T, H, N, kw):
    check(_recurrent(), B, T, H, N, kernel_device, **kw)


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("T", [1, 2, 15, 63, 100])
def test_wkv7_chunk_triton_matches_reference(kernel_device, nan_poison, B, T, variant):
    check(_chunk(variant), B, T, 2, 16, kernel_device, chunk_size=16)


@pytest.mark.parametrize("B,T,H,N,C", [
    (1, 1000, 1, 16, 16),
    (1, 100, 1, 32, 32),
    (2, 77, 1, 16, 64),
    (1, 130, 1, 64, 64),
    (1, 45, 2, 64, 32),
])
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_wkv7_chunk_triton_shapes(kernel_device, nan_poison, B, T, H, N, C, variant):
    _skip_refused(variant, C)
    check(_chunk(variant), B, T, H, N, kernel_device, chunk_size=C)


@pytest.mark.parametrize("C", [32, 64])
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_wkv7_chunk_triton_ill_conditioned(kernel_device, C, variant):
    """Correlated keys, a_lr ~ 1, no decay: every inverse variant must stay fp32-tight."""
    _skip_refused(variant, C)
    xs, s0 = make_inputs(1, 2 * C + 5, 1, 64, kernel_device, hard=True)
    y_ref, s_ref = wkv7_reference(*(x.cpu() for x in xs), s0.cpu())
    y, s = _chunk(variant)(*xs, s0.clone(), chunk_size=C)
    tol = 1e-4 if kernel_device == "cpu" else 1e-3
    assert rel_err(y, y_ref) < tol and rel_err(s, s_ref) < tol, (rel_err(y, y_ref), rel_err(s, s_ref))


@pytest.mark.parametrize("impl,split", [("recurrent", 7), ("chunk", 37), ("chunk", 32)]
                         + [(v, 37) for v in VARIANT_IDS[1:]])
def test_wkv7_triton_chained_calls(kernel_device, impl, split):
    fn, kw = (_recurrent(), {}) if impl == "recurrent" else (_chunk(_variant(impl)), {"chunk_size": 16})
    check(fn, 2, 70 if impl == "chunk" else 20, 2, 16, kernel_device, split=split, **kw)


def _variant(impl):
    """"chunk" -> None (defaults); "doubling-parallel" -> ("doubling", "parallel")."""
    return None if impl == "chunk" else tuple(impl.split("-"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("impl", ["recurrent", "chunk"] + VARIANT_IDS[1:])
def test_wkv7_triton_half_inputs(kernel_device, impl, dtype):
    fn, kw = (_recurrent(), {}) if impl == "recurrent" else (_chunk(_variant(impl)), {"chunk_size": 32})
    check(fn, 2, 40, 2, 32, kernel_device, dtype=dtype, **kw)


@pytest.mark.parametrize("T", [0, 5, 50])
def test_wkv7_triton_dispatch(kernel_device, T):
    from rwkvrt.ops.wkv7 import resolve
    fn = resolve(kernel_device if kernel_device == "cuda" else "cuda", "triton")
    if T == 0:
        xs, s0 = make_inputs(1, 0, 2, 16, kernel_device)
        y, s = fn(*xs, s0.clone())
        assert y.shape == (1, 0, 2, 16) and torch.equal(s, s0)
        return
    check(fn, 2, T, 2, 16, kernel_device)


@pytest.mark.parametrize("B,T,output", [(2, 100, "scan"), (1, 20, "scan"), (2, 5, "scan"), (2, 37, "parallel")])
def test_wkv7_triton_slots_update_pool_rows_in_place(kernel_device, nan_poison, B, T, output):
    """slots=: the pool's rows slots[b] are read and updated in place (the chunk scan addresses
    them; T <= CROSSOVER and the three-kernel outputs gather / scatter), two chained calls,
    the other rows untouched."""
    import functools

    from rwkvrt.ops.wkv7.triton_chunk import wkv7_chunk_triton
    from rwkvrt.ops.wkv7.triton_dispatch import wkv7_triton
    fn = wkv7_triton if output == "scan" else functools.partial(wkv7_chunk_triton, chunk_size=16, output=output)
    xs, s0 = make_inputs(B, T, 2, 16, kernel_device)
    pool = (torch.randn(5, 2, 16, 16, generator=torch.Generator().manual_seed(9)) * 0.3).to(kernel_device)
    slots = torch.tensor([3, 0][:B], device=kernel_device)
    pool[slots] = s0
    before = pool.clone()
    y_ref, s_ref = wkv7_reference(*(x.cpu() for x in xs), s0.cpu())
    cut = T // 2
    y1, p1 = fn(*(x[:, :cut].contiguous() for x in xs), pool, slots=slots)
    y2, p2 = fn(*(x[:, cut:].contiguous() for x in xs), pool, slots=slots)
    assert p1 is pool and p2 is pool, "the pool itself is updated and returned"
    assert rel_err(torch.cat([y1, y2], dim=1), y_ref) < 1e-3 and rel_err(pool[slots], s_ref) < 1e-3
    rest = [i for i in range(5) if i not in slots.tolist()]
    assert torch.equal(pool[rest], before[rest])


def test_wkv7_triton_dispatch_noncontiguous(kernel_device):
    from rwkvrt.ops.wkv7.triton_dispatch import wkv7_triton
    xs, s0 = make_inputs(1, 40, 2, 16, kernel_device)
    y_ref, s_ref = wkv7_reference(*(x.cpu() for x in xs), s0.cpu())
    # [B, H, T, N] storage viewed as [B, T, H, N]; a state with transposed storage
    xs_nc = tuple(x.transpose(1, 2).contiguous().transpose(1, 2) for x in xs)
    s_nc = s0.mT.contiguous().mT
    y, s = wkv7_triton(*xs_nc, s_nc)
    assert rel_err(y, y_ref) < 1e-3 and rel_err(s, s_ref) < 1e-3


def _round_tf32(x):
    """fp32 -> tf32 (10-bit mantissa), round to nearest, as numpy float32."""
    import numpy as np
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x1000) & 0xFFFFE000).astype(np.uint32).view(np.float32)


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_wkv7_chunk_triton_default_precision_under_tf32(kernel_device, monkeypatch, dtype, hard,
                                                        variant):
    """The interpreter's tl.dot is exact fp32; emulate the GPU's tf32 / tf32x3 tensor-core
    rounding there, to check the default input_precision (tf32x3 for fp32 inputs, tf32 for
    half) meets the tolerances. (Plain tf32 gives ~2.6e-3 on fp32 inputs: too coarse.)"""
    if kernel_device != "cpu":
        pytest.skip("tf32 emulation is for the interpreter; on a GPU the hardware rounds")
    import triton.runtime.interpreter as interp

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        A, B = a.data.astype("float32"), b.data.astype("float32")
        p = str(input_precision).upper()
        if p.endswith("TF32X3"):
            ah, bh = _round_tf32(A), _round_tf32(B)
            out = ah @ bh + (ah @ _round_tf32(B - bh) + _round_tf32(A - ah) @ bh)
        elif p.endswith("TF32"):
            out = _round_tf32(A) @ _round_tf32(B)
        else:
            out = A @ B
        return interp.TensorHandle(out.astype("float32") + d.data, d.dtype.scalar)

    monkeypatch.setattr(interp.InterpreterBuilder, "create_dot", create_dot)
    xs, s0 = make_inputs(1, 100, 1, 64, kernel_device, dtype=dtype, hard=hard)
    y_ref, s_ref = wkv7_reference(*xs, s0)
    y, s = _chunk(variant)(*xs, s0.clone(), chunk_size=32)
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    assert rel_err(y, y_ref) < tol and rel_err(s, s_ref) < tol, (rel_err(y, y_ref), rel_err(s, s_ref))


@pytest.mark.parametrize("T", [1, 8, 70])
def test_wkv7_triton_cuda_graph_capture(kernel_device, T):
    """The dispatcher makes no host sync: it can be captured in a CUDA graph and replayed."""
    if kernel_device != "cuda":
        pytest.skip("CUDA graphs need a GPU")
    from rwkvrt.ops.wkv7.triton_dispatch import wkv7_triton
    xs, s0 = make_inputs(2, T, 2, 64, "cuda")
    y_ref, s_ref = wkv7_reference(*(x.cpu() for x in xs), s0.cpu())
    state = s0.clone()
    wkv7_triton(*xs, state.clone())  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y, s = wkv7_triton(*xs, state)
    state.copy_(s0)
    graph.replay()
    torch.cuda.synchronize()
    assert s is state
    assert rel_err(y, y_ref) < 1e-3 and rel_err(state, s_ref) < 1e-3


def _load_sweep():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "wkv7_sweep.py"
    spec = importlib.util.spec_from_file_location("wkv7_sweep", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_wkv7_sweep_without_cuda_exits_cleanly(monkeypatch, capsys):
    if torch.cuda.is_available():
        pytest.skip("checks the no-CUDA message")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert _load_sweep().main([]) == 0
    assert "no CUDA device" in capsys.readouterr().out


def test_wkv7_sweep_smoke(kernel_device, monkeypatch, capsys):
    """benchmarks/wkv7_sweep.py --smoke runs every variant, reports a failing config (chunk 128
    is rejected) as a JSON line with "error" and goes on, and ends with the best-config table."""
    import json
    sweep = _load_sweep()
    monkeypatch.setattr(sweep, "CHUNKS", (16, 128))
    monkeypatch.setattr(sweep, "PREP_WARPS", (4,))
    monkeypatch.setattr(sweep, "SCAN_STAGES", (1, 2))
    monkeypatch.setattr(sweep, "SCAN_WARPS", (4,))
    assert sweep.main(["--smoke"]) == 0
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert rows[0]["kind"] == "meta"
    rows = [r for r in rows if "impl" in r]        # (on a GPU: also "compiled" kernel lines)
    ok = [r for r in rows if "us_per_call" in r]
    failed = [r for r in rows if "error" in r]
    assert {r["variant"] for r in ok if r["impl"] == "chunk"} == {f"{i}/{o}" for i, o in sweep.VARIANTS}
    assert {r["chunk"] for r in failed} == {128} and all(r["chunk"] == 16 or r["impl"] == "recurrent"
                                                         for r in ok)
    assert any(r["impl"] == "recurrent" for r in ok)
    tol = TOL[torch.float16]
    assert all(r["y_rel_err"] < tol and r["s_rel_err"] < tol for r in ok)
    assert [(r["scan_warps"], r["scan_stages"]) for r in ok if r.get("scan_stages", 2) != 2] == [(4, 1)]
    assert "best per shape" in out
