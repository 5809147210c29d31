"""RWKV7Fast: same function as RWKV7 (CPU, reference backends) and, on a GPU, fp16/bf16 accuracy vs fp32."""
from __future__ import annotations

import pytest
import torch

from rwkvrt.models.rwkv7 import RWKV7
from rwkvrt.models.rwkv7_fast import RWKV7Fast
from rwkvrt.models.shapes import make_config, random_state_dict
from rwkvrt.state import State

from conftest import needs_cuda, rel_err

SHAPES = [(2, 128, 1000), (2, 128, 301)]
_cache: dict = {}


def models(L, C, V, *, device="cpu", dtype=torch.float32, **kw):
    key = (L, C, V)
    if key not in _cache:
        cfg = make_config(L, C, V)
        _cache[key] = (cfg, random_state_dict(cfg, seed=L * 7 + V))
    cfg, sd = _cache[key]
    return cfg, RWKV7(cfg, sd, device=device, dtype=torch.float32), RWKV7Fast(cfg, sd, device=device, dtype=dtype, **kw)


def rand_state(cfg, B, seed=0):
    g = torch.Generator().manual_seed(seed)
    st = State.zeros(cfg, B)
    for t in (st.att_x, st.wkv, st.ffn_x):
        t.copy_(torch.randn(t.shape, generator=g) * 0.5)
    return st


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rkv_bmm", [True, False])
def test_fast_matches_rwkv7_gpt_mode(shape, rkv_bmm):
    cfg, ref, fast = models(*shape, rkv_bmm=rkv_bmm)
    tok = torch.randint(0, cfg.vocab_size, (2, 37), generator=torch.Generator().manual_seed(1))
    s_ref, s_fast = rand_state(cfg, 2), rand_state(cfg, 2)
    a = ref.forward(tok, s_ref, full_output=True)
    b = fast.forward(tok, s_fast, full_output=True)
    assert b.shape == (2, 37, cfg.vocab_size) and b.dtype == torch.float32
    assert rel_err(b, a) < 1e-5
    for n in ("att_x", "wkv", "ffn_x"):
        assert rel_err(getattr(s_fast, n), getattr(s_ref, n)) < 1e-5, n
    last = fast.forward(tok[:, :3], s_fast)
    assert last.shape == (2, cfg.vocab_size)


def test_fast_rnn_mode_and_splits_match_gpt_mode():
    cfg, ref, fast = models(*SHAPES[0])
    tok = torch.randint(0, cfg.vocab_size, (1, 23), generator=torch.Generator().manual_seed(2))
    s_gpt = State.zeros(cfg, 1)
    whole = fast.forward(tok, s_gpt, full_output=True)[0]
    s_rnn = State.zeros(cfg, 1)
    steps = torch.stack([fast.forward(tok[:, t:t + 1], s_rnn)[0] for t in range(tok.shape[1])])
    assert rel_err(steps, whole) < 1e-5
    assert rel_err(s_rnn.wkv, s_gpt.wkv) < 1e-5
    # a forward longer than prefill_chunk runs in chunks: same logits, same state
    _, _, chunked = models(*SHAPES[0], prefill_chunk=5)
    s_ch = State.zeros(cfg, 1)
    out = chunked.forward(tok, s_ch, full_output=True)[0]
    assert rel_err(out, whole) < 1e-5 and rel_err(s_ch.wkv, s_gpt.wkv) < 1e-5
    s_ch2 = State.zeros(cfg, 1)
    assert rel_err(chunked.forward(tok, s_ch2)[0], whole[-1]) < 1e-5


def test_fast_slots_address_pool_rows_and_leave_others_untouched():
    cfg, ref, fast = models(*SHAPES[0])
    g = torch.Generator().manual_seed(3)
    tok = torch.randint(0, cfg.vocab_size, (2, 9), generator=g)
    pool = rand_state(cfg, 5, seed=4)
    before = pool.clone()
    slots = torch.tensor([3, 1])
    out = fast.forward(tok, pool, slots=slots, full_output=True)
    singles = []
    for b, s in enumerate(slots.tolist()):
        st = before.select([s])
        singles.append(ref.forward(tok[b:b + 1], st, full_output=True)[0])
        for n in ("att_x", "wkv", "ffn_x"):
            assert rel_err(getattr(pool, n)[:, s], getattr(st, n)[:, 0]) < 1e-5
    assert rel_err(out, torch.stack(singles)) < 1e-5
    for s in (0, 2, 4):
        for n in ("att_x", "wkv", "ffn_x"):
            assert torch.equal(getattr(pool, n)[:, s], getattr(before, n)[:, s])


def test_fast_fold_lora_act_matches():
    cfg, ref, fast = models(*SHAPES[0], fold_lora_act=True)
    assert fast.layers[1].lora["g"] == fast.layers[1].lora["w"] + 1
    tok = torch.randint(0, cfg.vocab_size, (2, 11), generator=torch.Generator().manual_seed(8))
    a = ref.forward(tok, State.zeros(cfg, 2), full_output=True)
    b = fast.forward(tok, State.zeros(cfg, 2), full_output=True)
    assert rel_err(b, a) < 1e-5


def test_fast_weights_layout():
    cfg, _, fast = models(*SHAPES[0])
    p0, p1 = fast.layers[0], fast.layers[1]
    assert not p0.has_v and p1.has_v
    assert p0.down.shape[0] == 3 and p1.down.shape[0] == 4
    assert p1.Wrkv.shape == (3, cfg.n_embd, cfg.n_embd) and p1.Wrkv.is_contiguous()


def test_fast_bf16_cpu_close_to_fp32():
    cfg, ref, fast = models(*SHAPES[0], dtype=torch.bfloat16)
    tok = torch.randint(0, cfg.vocab_size, (1, 20), generator=torch.Generator().manual_seed(5))
    a = ref.forward(tok, State.zeros(cfg, 1), full_output=True)
    b = fast.forward(tok, State.zeros(cfg, 1, dtype=torch.bfloat16), full_output=True)
    assert b.dtype == torch.bfloat16 and rel_err(b, a) < 0.1


# ---- GPU: accuracy of the fused fp16 / bf16 path against the fp32 reference, 0.1B-like shape ----

GPU_T = 2048
_gpu: dict = {}


def _gpu_setup():
    if not _gpu:
        cfg = make_config(12, 768, 65536)
        sd = random_state_dict(cfg, seed=11)
        # plain-torch fp32 reference (no Triton kernels on this side of the comparison)
        ref = RWKV7(cfg, sd, device="cuda", dtype=torch.float32, backend="torch")
        tok = torch.randint(0, cfg.vocab_size, (1, GPU_T), generator=torch.Generator().manual_seed(6)).cuda()
        with torch.inference_mode():
            want = ref.forward(tok, State.zeros(cfg, 1, device="cuda"), full_output=True)[0].float()
        _gpu.update(cfg=cfg, sd=sd, tok=tok, want=want)
    return _gpu


def _report(name, got, want):
    d = rel_err(got, want)
    agree = float((got.float().argmax(-1) == want.argmax(-1)).float().mean())
    print(f"{name}: max|d|/std = {d:.4f}, argmax agreement = {agree * 100:.2f}%")
    return d, agree


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_fast_gpt_and_rnn_vs_fp32(dtype):
    g = _gpu_setup()
    cfg, tok, want = g["cfg"], g["tok"], g["want"]
    fast = RWKV7Fast(cfg, g["sd"], device="cuda", dtype=dtype)
    with torch.inference_mode():
        gpt = fast.forward(tok, State.zeros(cfg, 1, device="cuda", dtype=dtype), full_output=True)[0]
        st = State.zeros(cfg, 1, device="cuda", dtype=dtype)
        rnn = torch.stack([fast.forward(tok[:, t:t + 1], st)[0] for t in range(GPU_T)])
    dg, ag = _report(f"{dtype} GPT", gpt, want)
    dr, ar = _report(f"{dtype} RNN", rnn, want)
    _report(f"{dtype} GPT vs RNN", rnn, gpt.float())
    if dtype == torch.float16:
        assert dg <= 0.05 and dr <= 0.05
        assert ag >= 0.995 and ar >= 0.995
    else:
        assert dg <= 0.2 and dr <= 0.2  # measured bound is printed; bf16 has 3 fewer mantissa bits


@pytest.mark.gpu
@needs_cuda
def test_gpu_fast_batched_equals_singles():
    g = _gpu_setup()
    cfg = g["cfg"]
    fast = RWKV7Fast(cfg, g["sd"], device="cuda", dtype=torch.float16)
    tok = g["tok"][0, :96].view(3, 32)
    with torch.inference_mode():
        pool = State.zeros(cfg, 4, device="cuda", dtype=torch.float16)
        out = fast.forward(tok, pool, slots=torch.tensor([2, 0, 3], device="cuda"), full_output=True)
        for b in range(3):
            one = fast.forward(tok[b:b + 1], State.zeros(cfg, 1, device="cuda", dtype=torch.float16),
                               full_output=True)[0]
            assert rel_err(out[b], one) < 0.01


@pytest.mark.parametrize("T", [1, 3, 20])
def test_fast_triton_backend_matches_reference_with_slots(kernel_device, T):
    """The fused kernels (Triton interpreter on CPU, or a GPU) through the model's calling conventions:
    w0 / a0 / value residual folded into the core, slot-addressed in-place state, chunked wkv at T > 16."""
    cfg = make_config(2, 128, 301)
    sd = random_state_dict(cfg, seed=1)
    ref = RWKV7Fast(cfg, sd, device=kernel_device, dtype=torch.float32, backend="reference")
    tri = RWKV7Fast(cfg, sd, device=kernel_device, dtype=torch.float32, backend="triton")
    g = torch.Generator().manual_seed(T)
    tok = torch.randint(0, cfg.vocab_size, (2, T), generator=g).to(kernel_device)
    p_ref = State.zeros(cfg, 4)
    for t in (p_ref.att_x, p_ref.wkv, p_ref.ffn_x):
        t.copy_(torch.randn(t.shape, generator=g) * 0.3)
    p_ref = p_ref.to(kernel_device)
    p_tri = p_ref.clone()
    slots = torch.tensor([2, 0], device=kernel_device)
    a = ref.forward(tok, p_ref, slots=slots, full_output=True)
    b = tri.forward(tok, p_tri, slots=slots, full_output=True)
    assert rel_err(b, a) < 1e-4
    for n in ("att_x", "wkv", "ffn_x"):
        assert rel_err(getattr(p_tri, n), getattr(p_ref, n)) < 1e-4, n


@pytest.mark.gpu
@needs_cuda
def test_gpu_fold_lora_act_fp16_accuracy():
    g = _gpu_setup()
    cfg = g["cfg"]
    fast = RWKV7Fast(cfg, g["sd"], device="cuda", dtype=torch.float16, fold_lora_act=True)
    with torch.inference_mode():
        got = fast.forward(g["tok"][:, :512], State.zeros(cfg, 1, device="cuda", dtype=torch.float16),
                           full_output=True)[0]
    d, agree = _report("fp16 fold_lora_act GPT", got, g["want"][:512])
    assert d <= 0.05 and agree >= 0.995


def _decode_fused_vs_plain(device, backend, sparse=None, layer=False, ln=None, ffn=False):
    """Single-token steps through the decode ops == through the general path (chained, B 1 and 3, slots).
    sparse: the fused model's ffn_sparse (B 1 through the sparse op, B 3 through cuBLAS on the
    transposed layout); the plain model keeps W_value as is. layer: the fused model runs each
    layer as one ``decode_layer`` launch (its FFN value dense, so sparse must be None). ln: the
    fused model's ln_fused (LayerNorm + lerps inside the next product, ``ln_gemv``)."""
    cfg = make_config(2, 128, 301)
    sd = random_state_dict(cfg, seed=11)
    plain = RWKV7Fast(cfg, sd, device=device, dtype=torch.float32, backend=backend, decode_fused=False)
    fused = RWKV7Fast(cfg, sd, device=device, dtype=torch.float32, backend=backend, decode_fused=True,
                      decode_max_batch=4, ffn_sparse=sparse, layer_fused=layer, ln_fused=ln, ffn_fused=ffn)
    assert not plain.ffn_sparse and plain.layers[0].ffn_value_t is None and not plain.layer_fused
    assert fused.ffn_sparse == bool(sparse) and fused.layer_fused == layer
    assert ln is None or fused.ln_fused == (ln and not layer)
    assert fused.ffn_fused == (ffn and fused.ln_fused and fused.ffn_sparse)
    assert (fused.layers[0].ffn_value is None) == fused.ffn_sparse  # one layout kept, never both
    g = torch.Generator().manual_seed(5)
    for B in (1, 3):
        tok = torch.randint(0, cfg.vocab_size, (B, 4), generator=g)
        pool = rand_state(cfg, 5, seed=B)
        pool = State(*(t.to(device) for t in (pool.att_x, pool.wkv, pool.ffn_x)))
        p_plain, p_fused = pool.clone(), pool.clone()
        slots = torch.tensor([4, 0, 2][:B], device=device)
        for t in range(tok.shape[1]):
            step = tok[:, t:t + 1].to(device)
            a = plain.forward(step, p_plain, slots=slots)
            b = fused.forward(step, p_fused, slots=slots)
            assert b.shape == (B, cfg.vocab_size) and rel_err(b, a) < 1e-5, (B, t, rel_err(b, a))
        for n in ("att_x", "wkv", "ffn_x"):
            assert rel_err(getattr(p_fused, n), getattr(p_plain, n)) < 1e-5, n
        assert torch.equal(p_fused.wkv[:, [1, 3]], pool.wkv[:, [1, 3]])


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("ln", [True, False])
def test_fast_decode_fused_reference_ops_match_general_path(sparse, ln):
    _decode_fused_vs_plain("cpu", "reference", sparse, ln=ln)


def test_fast_decode_head_without_ln_gemv_matches_general_path(monkeypatch):
    import rwkvrt.models.rwkv7_fast as fast_mod
    monkeypatch.setattr(fast_mod, "HEAD_LN", False)   # add_layer_norm + index_copy + head GEMV
    _decode_fused_vs_plain("cpu", "reference", True, ln=True)


def test_fast_decode_ffn_fused_reference_matches_general_path():
    _decode_fused_vs_plain("cpu", "reference", True, ln=True, ffn=True)


@pytest.mark.gpu
def test_fast_decode_ffn_fused_triton_matches_general_path(kernel_device):
    _decode_fused_vs_plain(kernel_device, "triton", True, ln=True, ffn=True)


def test_fast_decode_layer_reference_matches_general_path():
    _decode_fused_vs_plain("cpu", "reference", None, layer=True)


@pytest.mark.gpu
def test_fast_decode_layer_triton_matches_general_path(kernel_device):
    _decode_fused_vs_plain(kernel_device, "triton", None, layer=True)


def test_fast_layer_fused_env_switch_and_limits(monkeypatch):
    cfg = make_config(1, 64, 50)
    sd = random_state_dict(cfg, seed=2)
    monkeypatch.delenv("RWKVRT_LAYER_FUSED", raising=False)
    assert not RWKV7Fast(cfg, sd, backend="reference", decode_fused=True).layer_fused
    monkeypatch.setenv("RWKVRT_LAYER_FUSED", "1")
    m = RWKV7Fast(cfg, sd, backend="reference", decode_fused=True, ffn_sparse=True)
    assert m.layer_fused and not m.ffn_sparse and m.layers[0].ffn_value is not None  # the layer needs W_value dense
    assert not RWKV7Fast(cfg, sd, backend="reference", decode_fused=False).layer_fused
    wide = make_config(1, 2560, 50)
    assert not RWKV7Fast(wide, random_state_dict(wide, seed=1), backend="reference", decode_fused=True).layer_fused


def test_fast_ffn_sparse_env_switch(monkeypatch):
    cfg = make_config(1, 64, 50)
    sd = random_state_dict(cfg, seed=2)
    monkeypatch.delenv("RWKVRT_FFN_SPARSE", raising=False)
    assert not RWKV7Fast(cfg, sd, backend="reference", decode_fused=True).ffn_sparse  # C 64 < SPARSE_MIN_EMBD
    monkeypatch.setenv("RWKVRT_FFN_SPARSE", "1")
    assert RWKV7Fast(cfg, sd, backend="reference", decode_fused=True).ffn_sparse
    monkeypatch.setenv("RWKVRT_FFN_SPARSE", "0")
    assert not RWKV7Fast(cfg, sd, backend="reference", decode_fused=True, ffn_sparse=None).ffn_sparse
    assert not RWKV7Fast(cfg, sd, backend="reference", decode_fused=False, ffn_sparse=True).ffn_sparse


@pytest.mark.gpu
@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("ln", [True, False])
def test_fast_decode_fused_triton_ops_match_general_path(kernel_device, sparse, ln):
    _decode_fused_vs_plain(kernel_device, "triton", sparse, ln=ln)


def test_fast_ln_fused_env_switch_and_limits(monkeypatch):
    cfg = make_config(1, 64, 50)
    sd = random_state_dict(cfg, seed=2)
    monkeypatch.delenv("RWKVRT_LN_FUSED", raising=False)
    assert RWKV7Fast(cfg, sd, backend="reference", decode_fused=True).ln_fused
    assert not RWKV7Fast(cfg, sd, backend="reference", decode_fused=False).ln_fused
    assert not RWKV7Fast(cfg, sd, backend="reference", decode_fused=True, layer_fused=True).ln_fused
    monkeypatch.setenv("RWKVRT_LN_FUSED", "0")
    assert not RWKV7Fast(cfg, sd, backend="reference", decode_fused=True).ln_fused
    monkeypatch.delenv("RWKVRT_LN_FUSED")
    wide = make_config(1, 2560, 50)
    assert not RWKV7Fast(wide, random_state_dict(wide, seed=1), backend="reference", decode_fused=True).ln_fused
