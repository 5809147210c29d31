"""The fused Triton time-mix core vs the plain-torch reference (GPU, or the Triton interpreter on CPU)."""
from __future__ import annotations

import pytest
import torch
from conftest import TOL, rel_err

from rwkvrt.ops.timemix.reference import tmix_core_reference
from rwkvrt.ops.wkv7.reference import wkv7_reference
from rwkvrt.ops.wkv7.torch_chunked import wkv7_torch_chunked

POOL = 5
SLOTS = [3, 0, 4]


def _core():
    return pytest.importorskip("rwkvrt.ops.timemix.triton_fused").tmix_core_triton


def _inputs(B, T, H, N, dtype, device, seed=0):
    """Activations [B,T,C] at realistic scales and the layer parameters (fp32)."""
    gen = torch.Generator().manual_seed(seed)
    C = H * N
    rnd = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    r, w, k, v, g = rnd(B, T, C), rnd(B, T, C) - 0.5, rnd(B, T, C), rnd(B, T, C), rnd(B, T, C)
    a = torch.sigmoid(rnd(B, T, C))
    acts = [t.to(device=device, dtype=dtype) for t in (r, w, k, v, a, g)]
    params = dict(k_k=0.5 + torch.rand(C, generator=gen), k_a=torch.rand(C, generator=gen) * 2,
                  r_k=rnd(H, N) * 0.5, ln_w=1 + 0.3 * rnd(C), ln_b=0.3 * rnd(C))
    params = {n: p.to(device) for n, p in params.items()}
    return acts, params


def _pool(H, N, device, seed=1):
    """Pool of POOL rows of random fp32 state [POOL, H, N, N]."""
    gen = torch.Generator().manual_seed(seed)
    return (0.3 * torch.randn(POOL, H, N, N, generator=gen)).to(device)


def _reference(acts, params, s0):
    out, s = tmix_core_reference(*(t.float() for t in acts), s0.clone(), **params)
    return out, s


def _check(out, state, ref_out, ref_state, dtype):
    assert out.dtype == dtype and state.dtype == torch.float32
    assert torch.isfinite(out).all()
    tol = TOL[dtype]
    assert rel_err(out, ref_out) < tol, rel_err(out, ref_out)
    assert rel_err(state, ref_state) < tol, rel_err(state, ref_state)


@pytest.mark.gpu
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("T", [1, 2, 15, 16, 17, 63, 100])
def test_tmix_triton_matches_reference(kernel_device, B, T):
    core = _core()
    H, N = 2, 16
    acts, params = _inputs(B, T, H, N, torch.float32, kernel_device, seed=T * 10 + B)
    pool = _pool(H, N, kernel_device)
    slots = torch.tensor(SLOTS[:B], device=kernel_device)
    others = [i for i in range(POOL) if i not in SLOTS[:B]]
    pool[others] = float("nan")
    untouched = pool[others].clone()
    ref_out, ref_state = _reference(acts, params, pool[slots])
    out, st = core(*acts, pool, **params, slots=slots, wkv=wkv7_reference)
    assert st is pool
    _check(out, pool[slots], ref_out, ref_state, torch.float32)
    # rows outside the slots: not read (NaN would spread), not written (bit-for-bit)
    assert torch.equal(pool[others].view(torch.int32), untouched.view(torch.int32))


@pytest.mark.gpu
@pytest.mark.parametrize("T", [1, 17])
def test_tmix_triton_head_size_64(kernel_device, T):
    core = _core()
    B, H, N = 1, 2, 64
    acts, params = _inputs(B, T, H, N, torch.float32, kernel_device, seed=64 + T)
    pool = _pool(H, N, kernel_device)
    ref_out, ref_state = _reference(acts, params, pool[:B])
    out, _ = core(*acts, pool, **params, wkv=wkv7_torch_chunked)
    _check(out, pool[:B], ref_out, ref_state, torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("wkv", [None, wkv7_torch_chunked], ids=["step", "torch_chunked"])
def test_tmix_triton_prefill_wkv_choices(kernel_device, wkv):
    core = _core()
    B, T, H, N = 3, 40, 2, 16
    acts, params = _inputs(B, T, H, N, torch.float32, kernel_device, seed=5)
    pool = _pool(H, N, kernel_device)
    slots = torch.tensor(SLOTS, device=kernel_device)
    ref_out, ref_state = _reference(acts, params, pool[slots])
    out, _ = core(*acts, pool, **params, slots=slots, wkv=wkv)
    _check(out, pool[slots], ref_out, ref_state, torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("B,T,H,N", [(1, 100, 1, 64), (2, 40, 2, 16)])
def test_tmix_triton_prefill_with_triton_wkv(kernel_device, B, T, H, N):
    """The production prefill pairing: pre-kernel + the Triton wkv7 dispatcher + post-kernel, with slots."""
    core = _core()
    wkv7_triton = pytest.importorskip("rwkvrt.ops.wkv7.triton_dispatch").wkv7_triton
    acts, params = _inputs(B, T, H, N, torch.float32, kernel_device, seed=N + T)
    pool = _pool(H, N, kernel_device)
    slots = torch.tensor(SLOTS[:B], device=kernel_device)
    ref_out, ref_state = _reference(acts, params, pool[slots])
    out, _ = core(*acts, pool, **params, slots=slots, wkv=wkv7_triton)
    _check(out, pool[slots], ref_out, ref_state, torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("N,block_v,num_warps,T", [(16, 4, None, 1), (16, 8, None, 15), (16, 4, None, 15),
                                                   (64, 16, None, 2), (64, 32, 8, 1), (64, 64, 4, 1)])
def test_tmix_triton_split_rows(kernel_device, N, block_v, num_warps, T):
    """block_v < N: step kernel on row blocks + the post-kernel for the group norm; other warp counts."""
    core = _core()
    B, H = 3, 2
    acts, params = _inputs(B, T, H, N, torch.float32, kernel_device, seed=block_v + T)
    pool = _pool(H, N, kernel_device)
    slots = torch.tensor(SLOTS, device=kernel_device)
    ref_out, ref_state = _reference(acts, params, pool[slots])
    out, _ = core(*acts, pool, **params, slots=slots, block_v=block_v, num_warps=num_warps)
    _check(out, pool[slots], ref_out, ref_state, torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("split", [(8, 8), (20, 20), (1, 1, 1, 1, 1), (3, 30)])
def test_tmix_triton_chained_calls(kernel_device, split):
    """Calls over consecutive pieces == one call over the whole sequence (state carried in place)."""
    core = _core()
    B, H, N = 2, 2, 16
    T = sum(split)
    acts, params = _inputs(B, T, H, N, torch.float32, kernel_device, seed=T)
    pool = _pool(H, N, kernel_device)
    ref_out, ref_state = _reference(acts, params, pool[:B])
    outs, t0 = [], 0
    for n in split:
        piece = [x[:, t0:t0 + n] for x in acts]
        outs.append(core(*piece, pool, **params, wkv=wkv7_reference)[0])
        t0 += n
    _check(torch.cat(outs, 1), pool[:B], ref_out, ref_state, torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("T", [1, 17])
def test_tmix_triton_strided_inputs(kernel_device, T):
    """r, k, v as column slices of one wider projection output (no copies needed)."""
    core = _core()
    B, H, N = 2, 2, 16
    C = H * N
    acts, params = _inputs(B, T, H, N, torch.float32, kernel_device, seed=7)
    rkv = torch.cat([acts[0], acts[2], acts[3]], dim=-1)
    strided = [rkv[..., :C], acts[1], rkv[..., C:2 * C], rkv[..., 2 * C:], acts[4], acts[5]]
    pool = _pool(H, N, kernel_device)
    ref_out, ref_state = _reference(acts, params, pool[:B])
    out, _ = core(*strided, pool, **params, wkv=wkv7_reference)
    _check(out, pool[:B], ref_out, ref_state, torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("T", [1, 17])
def test_tmix_triton_half_dtypes(kernel_device, dtype, T):
    """Half activations vs the fp32 reference on the same (rounded) inputs; the state stays fp32."""
    core = _core()
    B, H, N = 3, 2, 16
    acts, params = _inputs(B, T, H, N, dtype, kernel_device, seed=11)
    pool = _pool(H, N, kernel_device)
    slots = torch.tensor(SLOTS, device=kernel_device)
    ref_out, ref_state = _reference(acts, params, pool[slots])
    out, _ = core(*acts, pool, **params, slots=slots, wkv=wkv7_reference)
    _check(out, pool[slots], ref_out, ref_state, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("T,block_v,prefill", [(1, 16, True), (3, 4, True), (17, 16, True), (17, 16, False)],
                         ids=["T1", "T3-split", "T17-wkv", "T17-step"])
def test_tmix_triton_fused_inputs(kernel_device, T, block_v, prefill):
    """w0 add, a = sigmoid(a + a0) and the value residual folded into the core == doing them first."""
    core = _core()
    B, H, N = 3, 2, 16
    C = H * N
    acts, params = _inputs(B, T, H, N, torch.float32, kernel_device, seed=T + block_v)
    r, w_lora, k, v, a_raw, g = acts
    gen = torch.Generator().manual_seed(2)
    w0, a0, v0 = (torch.randn(C, generator=gen).to(kernel_device) for _ in range(3))
    v_first, v_gate = (torch.randn(B, T, C, generator=gen).to(kernel_device) for _ in range(2))
    pool = _pool(H, N, kernel_device)
    slots = torch.tensor(SLOTS, device=kernel_device)
    unfused = [r, w_lora + w0, k, v + (v_first - v) * torch.sigmoid(v_gate + v0), torch.sigmoid(a_raw + a0), g]
    ref_out, ref_state = _reference(unfused, params, pool[slots])
    out, _ = core(r, w_lora, k, v, a_raw, g, pool, **params, slots=slots, block_v=block_v,
                  wkv=wkv7_reference if prefill else None, w0=w0, a0=a0, v0=v0, v_first=v_first, v_gate=v_gate)
    _check(out, pool[slots], ref_out, ref_state, torch.float32)


@pytest.fixture
def nan_empty(monkeypatch):
    """torch.empty returns NaN-filled float tensors: every output element must be written."""
    real = torch.empty

    def empty(*args, **kwargs):
        t = real(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", empty)


@pytest.mark.gpu
@pytest.mark.parametrize("T,block_v", [(1, 16), (5, 4), (40, 16)], ids=["fused", "split", "prefill"])
def test_tmix_triton_outputs_fully_written(kernel_device, T, block_v, request):
    core = _core()
    B, H, N = 3, 2, 16
    acts, params = _inputs(B, T, H, N, torch.float32, kernel_device, seed=T)
    pool = _pool(H, N, kernel_device)
    ref_out, ref_state = _reference(acts, params, pool[:B])
    request.getfixturevalue("nan_empty")
    out, _ = core(*acts, pool, **params, block_v=block_v, wkv=wkv7_reference)
    _check(out, pool[:B], ref_out, ref_state, torch.float32)


def test_tmix_resolve_returns_triton():
    pytest.importorskip("triton")
    from rwkvrt.ops import timemix

    assert timemix.resolve("cuda", "triton") is _core()


def sm90_ptxas_report(kernel, types: dict, constexprs: dict, num_warps: int, div16_extra: tuple = ()) -> str:
    """Compile ``kernel`` ahead of time for sm_90 (no GPU needed) and return ptxas's -v report.

    Pointers and the [B, T, C] strides are marked 16-divisible, as the JIT specialises them
    for real tensors (without that the layouts, and the register counts, differ)."""
    import os
    import subprocess

    import triton
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError:
        pytest.skip("this triton has no ASTSource / GPUTarget")
    if not isinstance(kernel, triton.runtime.JITFunction):
        # the interpreter patches triton.language while it runs kernels; compile in a plain run
        pytest.skip("compile check runs without TRITON_INTERPRET=1")
    names = kernel.arg_names
    sig = {n: types.get(n, "constexpr" if n in constexprs else ("*fp32" if n.endswith("_ptr") else "i32"))
           for n in names}
    div16 = [n for n in names if n.endswith("_ptr") or (len(n) == 3 and n[0] == "s" and n[-1] in "bt")
             or n in div16_extra]
    src = ASTSource(fn=kernel, signature=sig, attrs={(names.index(n),): [["tt.divisibility", 16]] for n in div16},
                    constexprs={(names.index(n),): v for n, v in constexprs.items()})
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(ptxas):
        pytest.skip("triton's bundled ptxas is missing")
    ptx = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"rwkvrt_{kernel.__name__}_{os.getpid()}.ptx")
    with open(ptx, "w") as f:
        f.write(compiled.asm["ptx"])
    try:
        res = subprocess.run([ptxas, "-arch=sm_90a", "-v", ptx, "-o", os.devnull], capture_output=True, text=True)
    finally:
        os.unlink(ptx)
    assert res.returncode == 0, res.stderr
    return res.stderr


@pytest.mark.parametrize("block_v,num_warps,fused_inputs", [(64, 8, True), (64, 8, False), (64, 4, True),
                                                            (16, 4, True)])
def test_tmix_step_kernel_compiles_for_sm90_without_spills(block_v, num_warps, fused_inputs):
    """The real-GPU compile of the decode kernel (bf16 activations, N = 64): no register spills."""
    kernel = pytest.importorskip("rwkvrt.ops.timemix.triton_fused").tmix_step_fwd_kernel
    fuse = block_v == 64
    acts = {n: "*bf16" for n in ("r_ptr", "w_ptr", "k_ptr", "v_ptr", "a_ptr", "g_ptr", "vf_ptr", "vg_ptr")}
    types = acts | {"out_ptr": "*bf16" if fuse else "*fp32", "slots_ptr": "*i64",
                    "decay_scale": "fp32", "gn_eps": "fp32", "l2_eps": "fp32"}
    flags = dict.fromkeys(("HAS_W0", "HAS_A0", "HAS_VRES"), fused_inputs)
    report = sm90_ptxas_report(kernel, types, {"HAS_SLOTS": True, "FUSE_NORM": fuse, "N": 64,
                                                "BLOCK_V": block_v, **flags}, num_warps)
    assert " 0 bytes spill stores" in report, report


@pytest.mark.parametrize("fused_inputs", [False, True])
def test_tmix_pre_post_kernels_compile_for_sm90_without_spills(fused_inputs):
    tf = pytest.importorskip("rwkvrt.ops.timemix.triton_fused")
    bf = "*bf16"
    pre = sm90_ptxas_report(tf.tmix_pre_fwd_kernel, {n: bf for n in ("k_ptr", "a_ptr", "w_ptr", "v_ptr", "vf_ptr", "vg_ptr",
                                                                    "kp_ptr", "nkk_ptr", "kka_ptr", "weff_ptr", "veff_ptr")}
                            | {"l2_eps": "fp32"}, {"HAS_W0": fused_inputs, "HAS_A0": fused_inputs,
                                                   "HAS_VRES": fused_inputs, "BLOCK_T": 16, "N": 64}, 4)
    post = sm90_ptxas_report(tf.tmix_post_fwd_kernel, {n: bf for n in ("r_ptr", "k_ptr", "v_ptr", "a_ptr", "g_ptr",
                                                                      "vf_ptr", "vg_ptr", "out_ptr")}
                             | {"gn_eps": "fp32"}, {"HAS_A0": fused_inputs, "HAS_VRES": fused_inputs,
                                                    "BLOCK_T": 16, "N": 64}, 4)
    assert " 0 bytes spill stores" in pre and " 0 bytes spill stores" in post, pre + post
