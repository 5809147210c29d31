"""The one-token CPU fp32 path of RWKV7 (``_one_token``) against the plain T-generic path."""
from __future__ import annotations

import pytest
import torch

from conftest import TOL, rel_err
from rwkvrt.models.rwkv7 import RWKV7, _one_token
from rwkvrt.models.shapes import make_config, random_state_dict
from rwkvrt.state import State

L, C, V = 3, 128, 1000


@pytest.fixture(scope="module")
def cfg_sd():
    cfg = make_config(L, C, V)
    return cfg, random_state_dict(cfg, seed=3)


def _pair(cfg, sd, **kw):
    fast, plain = RWKV7(cfg, sd, **kw), RWKV7(cfg, sd, **kw)
    plain._fast = False
    return fast, plain


def _tokens(B, T, seed=0):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("fold_ln0", [True, False])
def test_chained_steps_match_plain_path(cfg_sd, B, fold_ln0):
    cfg, sd = cfg_sd
    fast, plain = _pair(cfg, sd, fold_ln0=fold_ln0)
    assert fast._fast
    s_fast, s_plain = State.zeros(cfg, B), State.zeros(cfg, B)
    toks = _tokens(B, 12, seed=B)
    with torch.no_grad():
        for t in range(toks.shape[1]):
            a = fast.forward(toks[:, t:t + 1], s_fast)
            b = plain.forward(toks[:, t:t + 1], s_plain)
            assert a.shape == b.shape == (B, V)
            assert rel_err(a, b) < TOL[torch.float32], f"step {t}"
    for part in ("att_x", "wkv", "ffn_x"):
        assert rel_err(getattr(s_fast, part), getattr(s_plain, part)) < TOL[torch.float32], part


def test_state_hands_over_between_paths(cfg_sd):
    """A prompt through the plain (T > 1) path, then fast steps, equals the whole sequence at once."""
    cfg, sd = cfg_sd
    fast, plain = _pair(cfg, sd)
    toks = _tokens(2, 10, seed=9)
    with torch.no_grad():
        ref = plain.forward(toks, State.zeros(cfg, 2), full_output=True)
        st = State.zeros(cfg, 2)
        fast.forward(toks[:, :6], st)  # T = 6: the plain path
        for t in range(6, 10):
            out = fast.forward(toks[:, t:t + 1], st, full_output=(t == 9))
        assert out.shape == (2, 1, V)
        assert rel_err(out[:, 0], ref[:, -1]) < TOL[torch.float32]
        # and back: fast steps first, then the plain path continues from that state
        st2 = State.zeros(cfg, 2)
        for t in range(4):
            fast.forward(toks[:, t:t + 1], st2)
        tail = plain.forward(toks[:, 4:], st2, full_output=True)
        assert rel_err(tail, ref[:, 4:]) < TOL[torch.float32]


def test_scripted_equals_eager(cfg_sd):
    cfg, sd = cfg_sd
    scripted, eager = RWKV7(cfg, sd), RWKV7(cfg, sd)
    eager._step = _one_token
    s1, s2 = State.zeros(cfg, 2), State.zeros(cfg, 2)
    toks = _tokens(2, 5, seed=4)
    with torch.no_grad():
        for t in range(5):
            a, b = scripted.forward(toks[:, t:t + 1], s1), eager.forward(toks[:, t:t + 1], s2)
    assert torch.allclose(a, b, rtol=0, atol=1e-5 * float(b.std()))
    assert torch.allclose(s1.wkv, s2.wkv, rtol=0, atol=1e-5 * float(s2.wkv.std()))


def test_fast_path_only_for_cpu_fp32_inference(cfg_sd):
    cfg, sd = cfg_sd
    assert not RWKV7(cfg, sd, dtype=torch.bfloat16)._fast  # bf16 keeps its own (faster) layout and path
    trainable = {k: v.clone().requires_grad_(True) for k, v in sd.items()}
    model = RWKV7(cfg, trainable, fold_ln0=False)
    assert not model._fast  # in-place state updates would break autograd
    with torch.no_grad():
        out = model.forward(_tokens(1, 1), State.zeros(cfg, 1))
        ref = RWKV7(cfg, sd, fold_ln0=False).forward(_tokens(1, 1), State.zeros(cfg, 1))
    assert rel_err(out, ref) < TOL[torch.float32]
