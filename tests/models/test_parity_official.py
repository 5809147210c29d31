"""Parity with BlinkDL's official ``rwkv`` package (RWKV_V7_ON=1, 'cpu fp32') on random-weight checkpoints."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import rwkvrt
from conftest import FIXTURES, PARITY_SHAPES, TOL, rel_err


def _tokens(n: int, vocab: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(vocab) for _ in range(n)]


@pytest.mark.parametrize("shape", PARITY_SHAPES, ids=lambda s: "L%d-C%d-V%d" % s)
def test_gpt_rnn_and_splits_match_official(shape, ckpt_factory, official_factory):
    L, C, V = shape
    official = official_factory(L, C, V)
    ours = rwkvrt.RWKV(model=str(ckpt_factory(L, C, V)), strategy="cpu fp32")
    toks = _tokens(37, V, seed=L * 1000 + C)

    ref_all, ref_state = official.forward(toks, None, full_output=True)
    ref_state = [t.clone() for t in ref_state]

    # GPT mode, whole sequence, all positions
    out, st = ours.forward(toks, None, full_output=True)
    assert rel_err(out, ref_all) < TOL[torch.float32]
    for j in range(len(ref_state)):
        assert rel_err(st[j], ref_state[j]) < TOL[torch.float32], f"state part {j}"

    # RNN mode, token by token
    st = None
    for i, t in enumerate(toks):
        out, st = ours.forward(t, st)
        assert rel_err(out, ref_all[i]) < TOL[torch.float32], f"RNN step {i}"

    # mixed splits, including single tokens and a long tail
    st = None
    pos = 0
    for n in (1, 5, 1, 13, 17):
        out, st = ours.forward(toks[pos:pos + n], st)
        pos += n
        assert rel_err(out, ref_all[pos - 1]) < TOL[torch.float32], f"split ending at {pos}"
    assert pos == len(toks)
    for j in range(len(ref_state)):
        assert rel_err(st[j], ref_state[j]) < TOL[torch.float32]


def test_official_state_continues_in_rwkvrt(ckpt_factory, official_factory):
    """A state made by the official package can be handed to rwkvrt (its flat list) and vice versa."""
    L, C, V = PARITY_SHAPES[0]
    official = official_factory(L, C, V)
    ours = rwkvrt.RWKV(model=str(ckpt_factory(L, C, V)), strategy="cpu fp32")
    toks = _tokens(20, V, seed=7)
    _, off_state = official.forward(toks[:12], None)
    off_state = [t.clone() for t in off_state]
    ref, _ = official.forward(toks[12:], [t.clone() for t in off_state])
    out, _ = ours.forward(toks[12:], off_state)
    assert rel_err(out, ref) < TOL[torch.float32]
    _, our_state = ours.forward(toks[:12], None)
    ref2, _ = official.forward(toks[12:], our_state.as_list())
    assert rel_err(ref2, ref) < TOL[torch.float32]


def test_batch_equals_singles_native_api(ckpt_factory, official_factory):
    """B > 1 through the native API: each row equals the official package run alone."""
    L, C, V = PARITY_SHAPES[1]
    official = official_factory(L, C, V)
    model = rwkvrt.load(ckpt_factory(L, C, V), "cpu fp32")
    rows = [_tokens(11, V, seed=s) for s in range(3)]
    logits, state = model.forward(rows, None, full_output=True)
    assert logits.shape == (3, 11, V)
    more = [_tokens(4, V, seed=10 + s) for s in range(3)]
    logits2, state = model.forward(more, state)
    for b in range(3):
        ref, ref_state = official.forward(rows[b], None, full_output=True)
        assert rel_err(logits[b], ref) < TOL[torch.float32]
        ref2, _ = official.forward(more[b], ref_state)
        assert rel_err(logits2[b], ref2) < TOL[torch.float32]


def test_fixture_reproduces_expected_logits():
    expected = np.fromfile(FIXTURES / "expected-logits-7v0-834K.bin", dtype=np.float32)
    model = rwkvrt.RWKV(model=str(FIXTURES / "tiny-rwkv-7v0-834K"), strategy="cpu fp32")
    out, _ = model.forward([34, 105, 110], None)
    assert np.abs(out.numpy() - expected).max() < 1e-5
    st = None
    for t in (34, 105, 110):
        out, st = model.forward(t, st)
    assert np.abs(out.numpy() - expected).max() < 1e-5


def test_cpu_bf16_close_to_official_fp32(ckpt_factory, official_factory):
    """'cpu bf16': activations bf16, WKV state float32; GPT and RNN mode near the fp32 official logits."""
    L, C, V = PARITY_SHAPES[0]
    official = official_factory(L, C, V)
    model = rwkvrt.load(ckpt_factory(L, C, V), "cpu bf16")
    toks = _tokens(40, V, seed=3)
    ref, _ = official.forward(toks, None, full_output=True)
    out, state = model.forward(toks, None, full_output=True)
    assert out.dtype == torch.bfloat16 and state.wkv.dtype == torch.float32
    assert state.att_x.dtype == torch.bfloat16
    err = rel_err(out[0], ref)
    assert err < TOL[torch.bfloat16], err
    st = None
    for i, t in enumerate(toks):
        step, st = model.forward(t, st)
        assert rel_err(step[0], ref[i]) < TOL[torch.bfloat16], f"RNN step {i}"
    agree = (out[0].float().argmax(-1) == ref.argmax(-1)).float().mean()
    assert agree >= 0.9, agree
