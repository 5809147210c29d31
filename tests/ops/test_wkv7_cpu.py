"""CPU WKV7: the chunkwise torch implementation against the plain fp32 loop (the spec)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rwkvrt.errors import BackendError
from rwkvrt.ops import wkv7 as wkv7_ops
from rwkvrt.ops.wkv7.reference import wkv7_reference
from rwkvrt.ops.wkv7.torch_chunked import wkv7_torch_chunked


def make_inputs(B, T, H, N, *, seed=0, dtype=torch.float32, extreme_w=True):
    """Inputs shaped like a real RWKV-7 layer's: a = -kk, b = kk * a_lr with kk unit-norm per
    head, w a raw decay logit (incl. saturating extremes), non-zero initial state."""
    g = torch.Generator().manual_seed(seed)

    def rn(*s, std=1.0):
        return torch.randn(*s, generator=g) * std

    r = rn(B, T, H, N)
    k = rn(B, T, H, N)
    v = rn(B, T, H, N)
    w = rn(B, T, H, N, std=2.0) - 1.0
    if extreme_w:
        w[..., 0] = 30.0    # sigmoid -> 1: fastest decay
        w[..., 1] = -30.0   # sigmoid -> 0: no decay
        w[..., 2] = 1e4
        w[..., 3] = -1e4
    kk = F.normalize(rn(B, T, H, N), dim=-1, p=2.0)
    a_lr = torch.sigmoid(rn(B, T, H, N))
    a = -kk
    b = kk * a_lr
    state = rn(B, H, N, N, std=0.5)
    cast = lambda x: x.to(dtype)  # noqa: E731
    return tuple(cast(x) for x in (r, w, k, v, a, b)), state.to(torch.float64 if dtype == torch.float64 else torch.float32)


def rel(x, ref):
    x, ref = x.double(), ref.double()
    return ((x - ref).abs().max() / ref.std().clamp_min(1e-30)).item()


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("T", [1, 2, 15, 63, 64, 65, 100])
def test_matches_reference_fp32(B, T):
    ins, s0 = make_inputs(B, T, 2, 64, seed=T * 10 + B)
    s0_copy = s0.clone()
    ins_copy = [x.clone() for x in ins]
    y, s = wkv7_torch_chunked(*ins, s0)
    y_ref, s_ref = wkv7_reference(*ins, s0)
    assert y.shape == (B, T, 2, 64) and y.dtype == torch.float32
    assert s.shape == (B, 2, 64, 64) and s.dtype == torch.float32
    assert rel(y, y_ref) < 1e-4
    assert rel(s, s_ref) < 1e-4
    # neither the state nor the inputs are mutated
    assert torch.equal(s0, s0_copy)
    assert all(torch.equal(x, c) for x, c in zip(ins, ins_copy))
    assert s.data_ptr() != s0.data_ptr()


def test_long_sequence():
    ins, s0 = make_inputs(2, 1000, 1, 16, seed=7)
    y, s = wkv7_torch_chunked(*ins, s0)
    y_ref, s_ref = wkv7_reference(*ins, s0)
    assert rel(y, y_ref) < 1e-4
    assert rel(s, s_ref) < 1e-4


def test_slow_decay_long_sequence():
    # all channels at the slowest and at the fastest decay: e^{+-G} at its chunk extremes
    for wv in (30.0, -30.0):
        ins, s0 = make_inputs(1, 300, 1, 32, seed=3)
        ins = list(ins)
        ins[1] = torch.full_like(ins[1], wv)
        y, s = wkv7_torch_chunked(*ins, s0)
        y_ref, s_ref = wkv7_reference(*ins, s0)
        assert torch.isfinite(y).all() and torch.isfinite(s).all()
        assert rel(y, y_ref) < 1e-4 and rel(s, s_ref) < 1e-4


@pytest.mark.parametrize("chunk_size", [1, 7, 16, 32, 64])
def test_chunk_sizes(chunk_size):
    ins, s0 = make_inputs(2, 100, 2, 32, seed=chunk_size)
    y, s = wkv7_torch_chunked(*ins, s0, chunk_size=chunk_size)
    y_ref, s_ref = wkv7_reference(*ins, s0)
    assert rel(y, y_ref) < 1e-4
    assert rel(s, s_ref) < 1e-4


@pytest.mark.parametrize("T,split", [(100, 50), (130, 64), (65, 1), (3, 2), (70, 69)])
def test_chained_calls(T, split):
    ins, s0 = make_inputs(3, T, 2, 32, seed=T + split)
    y_all, s_all = wkv7_torch_chunked(*ins, s0)
    y1, s1 = wkv7_torch_chunked(*(x[:, :split] for x in ins), s0)
    y2, s2 = wkv7_torch_chunked(*(x[:, split:] for x in ins), s1)
    assert rel(torch.cat([y1, y2], 1), y_all) < 1e-4
    assert rel(s2, s_all) < 1e-4


def test_token_by_token_equals_whole():
    ins, s0 = make_inputs(1, 20, 2, 32, seed=11)
    y_all, s_all = wkv7_torch_chunked(*ins, s0)
    s, ys = s0, []
    for t in range(20):
        y, s = wkv7_torch_chunked(*(x[:, t:t + 1] for x in ins), s)
        ys.append(y)
    assert rel(torch.cat(ys, 1), y_all) < 1e-4
    assert rel(s, s_all) < 1e-4


def test_empty_sequence():
    ins, s0 = make_inputs(2, 0, 2, 16)
    y, s = wkv7_torch_chunked(*ins, s0)
    assert y.shape == (2, 0, 2, 16)
    assert torch.equal(s, s0) and s.data_ptr() != s0.data_ptr()


@pytest.mark.parametrize("T", [1, 40, 100])
def test_bf16_inputs(T):
    ins, s0 = make_inputs(2, T, 2, 64, seed=5, dtype=torch.bfloat16)
    y, s = wkv7_torch_chunked(*ins, s0)
    y_ref, s_ref = wkv7_reference(*ins, s0)  # same bf16 inputs, fp32 math
    assert y.dtype == torch.bfloat16 and s.dtype == torch.float32
    # the math is fp32 in both; only the bf16 rounding of y differs
    assert rel(y, y_ref) < 2e-2
    assert rel(s, s_ref) < 1e-4


@pytest.mark.parametrize("T", [2, 70])
def test_float64(T):
    ins, s0 = make_inputs(2, T, 2, 16, seed=9, dtype=torch.float64)
    y, s = wkv7_torch_chunked(*ins, s0)
    assert y.dtype == torch.float64 and s.dtype == torch.float64
    # the reference computes in fp32, so compare against an fp64 run of the loop instead
    r, w, k, v, a, b = ins
    decay = torch.exp(-wkv7_ops.reference.DECAY_SCALE * torch.sigmoid(w))
    S = s0.clone()
    ys = []
    for t in range(T):
        sa = S @ a[:, t, :, :, None]
        S = S * decay[:, t, :, None, :] + sa @ b[:, t, :, None, :] + v[:, t, :, :, None] @ k[:, t, :, None, :]
        ys.append((S @ r[:, t, :, :, None])[..., 0])
    assert rel(y, torch.stack(ys, 1)) < 1e-10
    assert rel(s, S) < 1e-10


@pytest.mark.parametrize("T", [2, 9])
def test_gradients_match_reference(T):
    ins, s0 = make_inputs(1, T, 1, 8, seed=T, dtype=torch.float64, extreme_w=False)
    ins = [x.clone().requires_grad_(True) for x in ins]
    s0 = s0.clone().requires_grad_(True)
    g = torch.Generator().manual_seed(1)
    gy = torch.randn(1, T, 1, 8, generator=g, dtype=torch.float64)
    gs = torch.randn(1, 1, 8, 8, generator=g, dtype=torch.float64)

    def grads(fn):
        y, s = fn(*ins, s0, **({"chunk_size": 4} if fn is wkv7_torch_chunked else {}))
        loss = (y.double() * gy).sum() + (s.double() * gs).sum()
        return torch.autograd.grad(loss, [*ins, s0])

    got = grads(wkv7_torch_chunked)
    ref = grads(wkv7_reference)  # computes in fp32: compare at fp32 accuracy
    for gc, gr in zip(got, ref):
        assert torch.isfinite(gc).all()
        assert rel(gc, gr) < 1e-4


def test_resolve():
    assert wkv7_ops.resolve("cpu") is wkv7_torch_chunked
    assert wkv7_ops.resolve("cpu", "torch") is wkv7_torch_chunked
    assert wkv7_ops.resolve("cpu", "reference") is wkv7_reference
    with pytest.raises(BackendError):
        wkv7_ops.resolve("cpu", "nope")
