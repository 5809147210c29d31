"""Sampling: official parity (penalties, sample_logits), filter masks, draws, seeds, errors, stops."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from rwkvrt.errors import SamplingError
from rwkvrt.sampling import (BatchedParams, SamplingParams, StopChecker, apply_penalties, apply_token_ban,
                             ban_mask, filtered_logprobs, occurrence_weights, official_filtered_probs, sample,
                             sample_logits_official, update_occurrence)

OFF = dict(temperature=1.0, top_p=1.0, top_k=0, min_p=0.0)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- penalties: run the real official PIPELINE.generate on a fake model and tokenizer ---

TEXTS = ["a", "b", " ", "7", "12", "21", "c", "\n", "dd", "0123456789", "e", "f"]


class FakeTok:  # no "Tokenizer" in the class name, so PIPELINE.encode calls .encode(x) directly
    def encode(self, x):
        return [0, 1]

    def decode(self, ids):
        return "".join(TEXTS[i] for i in ids)


class FakeModel:
    def __init__(self, logits):
        self.logits = logits

    def forward(self, tokens, state):
        return self.logits.clone(), state


def run_official(base, script, args):
    from rwkv.utils import PIPELINE
    pipe = object.__new__(PIPELINE)
    pipe.model, pipe.tokenizer = FakeModel(base), FakeTok()
    seen_logits, it = [], iter(script)

    def fake_sample(out, **kw):
        seen_logits.append(out.clone())
        return next(it)

    pipe.sample_logits = fake_sample
    pipe.generate("x", token_count=len(script), args=args)
    return seen_logits


def test_occurrence_weights_follow_official_substring_rule():
    w = occurrence_weights(FakeTok().decode, len(TEXTS))
    zero = {i for i, t in enumerate(TEXTS) if w[i] == 0}
    assert zero == {2, 3, 4, 9}  # ' ', '7', '12', '0123456789'; '21' is not a substring


def test_penalties_match_official_generate():
    from rwkv.utils import PIPELINE_ARGS
    V = len(TEXTS)
    base = torch.randn(V, generator=gen(0))
    script = [0, 2, 0, 3, 4, 5, 0, 6, 2, 9, 9, 1, 0, 11]  # 11 is a stop token: never counted
    args = PIPELINE_ARGS(alpha_presence=0.3, alpha_frequency=0.7, alpha_decay=0.9, token_ban=[8, 10],
                         token_stop=[11])
    official = run_official(base, script, args)
    assert len(official) == len(script)
    weights = occurrence_weights(FakeTok().decode, V)
    occ = torch.zeros(1, V)
    seen = torch.zeros(1, V, dtype=torch.bool)
    mask = ban_mask(args.token_ban, V)
    for tok, want in zip(script, official):
        got = apply_penalties(apply_token_ban(base[None], mask), occ, 0.3, 0.7, seen=seen)
        torch.testing.assert_close(got[0], want, rtol=0, atol=1e-5)
        if tok in args.token_stop:
            break
        update_occurrence(occ, torch.tensor([tok]), 0.9, weights=weights, seen=seen)


def test_penalties_batched_rows_equal_single_rows():
    B, V = 3, 40
    logits = torch.randn(B, V, generator=gen(1))
    pres, freq, decay = torch.tensor([0.0, 0.2, 1.0]), torch.tensor([0.5, 0.2, 0.0]), torch.tensor([1.0, 0.996, 0.5])
    occ, seen = torch.zeros(B, V), torch.zeros(B, V, dtype=torch.bool)
    singles = [(torch.zeros(1, V), torch.zeros(1, V, dtype=torch.bool)) for _ in range(B)]
    steps = torch.randint(0, 6, (10, B), generator=gen(2))
    active_steps = torch.rand(10, B, generator=gen(3)) > 0.2
    for toks, act in zip(steps, active_steps):
        update_occurrence(occ, toks, decay, seen=seen, active=act)
        for b, (o, s) in enumerate(singles):
            if act[b]:
                update_occurrence(o, toks[b:b + 1], float(decay[b]), seen=s)
    out = apply_penalties(logits, occ, pres, freq, seen=seen)
    for b, (o, s) in enumerate(singles):
        torch.testing.assert_close(occ[b], o[0])
        assert torch.equal(seen[b], s[0])
        torch.testing.assert_close(out[b], apply_penalties(logits[b:b + 1], o, float(pres[b]), float(freq[b]),
                                                           seen=s)[0])
    assert logits.dtype == torch.float32 and not torch.equal(out, logits)  # out of place


# --- sample(): greedy, filters, distribution ---

def test_greedy_and_top_k_1_are_argmax():
    x = torch.randn(16, 1000, generator=gen(4)) * 3
    x[3, 7] = x[3, 9] = x[3].max() + 1  # exact tie: lowest id wins, like argmax
    want = x.argmax(-1)
    g = gen(5)
    assert torch.equal(sample(x, **{**OFF, "temperature": 0.0}, generator=g), want)
    assert torch.equal(sample(x, temperature=torch.zeros(16), top_p=0.9, top_k=5, min_p=0.1, generator=g), want)
    for t in (0.5, 1.0, 3.0):
        assert torch.equal(sample(x, **{**OFF, "temperature": t, "top_k": 1}, generator=g), want)
    assert torch.equal(sample(x.half(), **{**OFF, "top_k": torch.ones(16, dtype=torch.long)}, generator=g),
                       x.half().float().argmax(-1))


def test_tiny_top_p_only_draws_the_max():
    x = torch.randn(1, 300, generator=gen(6)).expand(4000, 300)
    toks = sample(x, **{**OFF, "top_p": 1e-6, "temperature": 2.0}, generator=gen(7))
    assert torch.equal(toks, x.argmax(-1))
    toks = sample(x, **{**OFF, "top_p": 0.0}, generator=gen(8))  # official spelling of greedy
    assert torch.equal(toks, x.argmax(-1))


@pytest.mark.parametrize("kw", [OFF, dict(temperature=0.6, top_p=0.8, top_k=0, min_p=0.0),
                                dict(temperature=1.5, top_p=1.0, top_k=4, min_p=0.05)])
def test_draw_frequencies_match_the_distribution(kw):
    logits = torch.tensor([2.0, 1.5, 1.0, 0.3, -0.5, -1.0])
    n = 20000
    toks = sample(logits.expand(n, 6), **kw, generator=gen(9))
    freq = torch.bincount(toks, minlength=6).double() / n
    want = filtered_logprobs(logits[None], **kw)[0].exp().double()
    if kw is OFF:
        torch.testing.assert_close(want, torch.softmax(logits.double(), -1), rtol=0, atol=1e-6)
    assert (freq - want).abs().max() < 0.015, (freq, want)
    assert (freq[want == 0] == 0).all()


def slow_reference(x: torch.Tensor, t: float, top_p: float, top_k: int, min_p: float) -> torch.Tensor:
    """Kept-token probabilities for one row [V], written as the module docstring states it."""
    p = torch.softmax(x.float(), -1).double().tolist()
    V = len(p)
    order = sorted(range(V), key=lambda i: (-p[i], i))
    keep = set(range(V))
    if top_p < 1:
        cum, cutoff = 0.0, p[order[-1]]
        for i in order:
            cum += p[i]
            if cum >= top_p:
                cutoff = p[i]
                break
        keep &= {i for i in range(V) if p[i] >= cutoff}
    if 0 < top_k < V:
        keep &= set(order[:top_k])
    if min_p > 0:
        keep &= {i for i in range(V) if p[i] >= min_p * p[order[0]]}
    if t == 0:
        keep = {order[0]}
        t = 1.0
    w = torch.zeros(V, dtype=torch.float64)
    for i in keep:
        w[i] = p[i] ** (1 / t)
    return w / w.sum()


SETTINGS = [(1.0, 1.0, 0, 0.0), (0.0, 1.0, 0, 0.0), (0.7, 0.9, 0, 0.0), (1.3, 0.5, 0, 0.0), (1.0, 1.0, 7, 0.0),
            (1.0, 1.0, 0, 0.2), (0.5, 0.95, 20, 0.01), (2.0, 0.3, 3, 0.5), (1.0, 0.0, 0, 0.0), (1.0, 1.0, 200, 1.0)]


@pytest.mark.parametrize("setting", SETTINGS)
def test_filters_mask_exactly_the_reference_tokens(setting):
    x = torch.randn(5, 200, generator=gen(10)) * torch.tensor([0.5, 1, 2, 4, 8])[:, None]
    got = filtered_logprobs(x, temperature=setting[0], top_p=setting[1], top_k=setting[2], min_p=setting[3]).exp()
    for b in range(5):
        want = slow_reference(x[b], *setting)
        assert torch.equal(got[b] > 0, want > 0), (b, setting)
        torch.testing.assert_close(got[b].double(), want, rtol=1e-4, atol=1e-7)


def test_top_p_keeps_ties_with_the_cutoff():
    x = torch.tensor([[2.0, 2.0, 1.0, 1.0, 0.0]])
    keep = filtered_logprobs(x, temperature=1.0, top_p=0.3, top_k=0, min_p=0.0).isfinite()
    assert keep.tolist() == [[True, True, False, False, False]]
    keep = filtered_logprobs(x, temperature=1.0, top_p=1.0, top_k=1, min_p=0.0).isfinite()
    assert keep.tolist() == [[True, False, False, False, False]]


def test_per_row_settings_equal_separate_calls():
    x = torch.randn(len(SETTINGS), 300, generator=gen(11)) * 2
    cols = [torch.tensor(c) for c in zip(*SETTINGS)]
    batched = sample(x, temperature=cols[0], top_p=cols[1], top_k=cols[2].long(), min_p=cols[3], generator=gen(12))
    lp = filtered_logprobs(x, temperature=cols[0], top_p=cols[1], top_k=cols[2].long(), min_p=cols[3])
    for b, (t, p, k, m) in enumerate(SETTINGS):
        # The noise is drawn in vocabulary order whatever the settings: same stream, same token.
        single = sample(x, temperature=t, top_p=p, top_k=k, min_p=m, generator=gen(12))
        assert batched[b] == single[b]
        torch.testing.assert_close(lp[b], filtered_logprobs(x[b:b + 1], temperature=t, top_p=p, top_k=k,
                                                            min_p=m)[0])
    # One generator per row: each row equals a B=1 call with that row's generator.
    per_row = sample(x, temperature=cols[0], top_p=cols[1], top_k=cols[2].long(), min_p=cols[3],
                     generator=[gen(100 + b) for b in range(len(SETTINGS))])
    for b, (t, p, k, m) in enumerate(SETTINGS):
        assert per_row[b] == sample(x[b:b + 1], temperature=t, top_p=p, top_k=k, min_p=m, generator=gen(100 + b))[0]


def test_seeded_reproducibility():
    x = torch.randn(32, 1000, generator=gen(13))
    kw = dict(temperature=1.0, top_p=0.95, top_k=0, min_p=0.0)
    a, b, c = (sample(x, **kw, generator=gen(s)) for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert sample_logits_official(x[0], 1.0, 0.95, generator=gen(3)) == sample_logits_official(
        x[0], 1.0, 0.95, generator=gen(3))


def test_sample_makes_no_host_round_trip(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("host sync inside sample()")

    x = torch.randn(4, 100)
    kw = dict(temperature=torch.tensor([0.0, 1, 2, 1]), top_p=torch.tensor([1.0, 0.5, 0.9, 0]),
              top_k=torch.tensor([0, 3, 0, 2]), min_p=torch.tensor([0.0, 0, 0.1, 0]))
    for name in ("item", "cpu", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, boom)
    monkeypatch.setattr(torch, "multinomial", boom)
    out = sample(x, **kw, generator=gen(0))
    monkeypatch.undo()
    assert out.shape == (4,) and out.dtype == torch.int64


# --- official PIPELINE.sample_logits parity (distributions recomputed, not sampled) ---

def official_probs(monkeypatch, logits, **kw) -> np.ndarray:
    from rwkv.utils import PIPELINE
    captured = {}

    def fake_choice(a, p):
        captured["p"] = np.array(p, dtype=np.float64)
        return 0

    monkeypatch.setattr(np.random, "choice", fake_choice)
    PIPELINE.sample_logits(None, logits.clone(), **kw)
    monkeypatch.undo()
    return captured["p"]


@pytest.mark.parametrize("kw", [dict(), dict(temperature=1.0, top_p=0.85), dict(temperature=0.6, top_p=0.5),
                                dict(temperature=1.7, top_p=0.95, top_k=40), dict(temperature=1.0, top_p=1.0),
                                dict(temperature=0.0, top_p=0.7), dict(temperature=1.0, top_p=0.0),
                                dict(temperature=2.0, top_p=0.99, top_k=1000)])
def test_official_filtered_probs_match_official(monkeypatch, kw):
    for V, scale in ((500, 2.0), (65536, 3.0)):
        x = torch.randn(V, generator=gen(V)) * scale
        want = official_probs(monkeypatch, x, **kw)
        got = official_filtered_probs(x, **kw).double().numpy()
        assert np.array_equal(got > 0, want > 0), kw
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-9)
        tok = sample_logits_official(x, **kw, generator=gen(1))
        assert isinstance(tok, int) and want[tok] > 0


def test_official_top_p_one_quirk_is_reproduced(monkeypatch):
    # On CPU the official float32 cumsum of a 65536-way softmax stays below 1.0: top_p=1 -> greedy.
    x = torch.randn(65536, generator=gen(14))
    want = official_probs(monkeypatch, x, temperature=1.0, top_p=1.0)
    got = official_filtered_probs(x, 1.0, 1.0).numpy()
    assert np.array_equal(got > 0, want > 0)
    assert filtered_logprobs(x[None], **OFF).isfinite().all()  # sample(): top_p=1 is off


# --- parameter errors ---

BAD = [dict(temperature=-0.1), dict(temperature=float("nan")), dict(temperature=float("inf")),
       dict(temperature="1"), dict(top_p=1.5), dict(top_p=-0.1), dict(top_p=float("nan")), dict(top_k=-1),
       dict(top_k=2.5), dict(top_k=True), dict(min_p=1.1), dict(min_p=-0.5), dict(presence_penalty=float("nan")),
       dict(frequency_penalty=float("inf")), dict(penalty_decay=1.01), dict(penalty_decay=-0.1),
       dict(token_ban=[1, -1]), dict(token_ban=[100]), dict(token_ban=["a"]), dict(token_ban=list(range(100))),
       dict(seed=-1), dict(seed=1.5), dict(seed=2**64)]


@pytest.mark.parametrize("kw", BAD, ids=[str(k)[:40] for k in BAD])
def test_bad_parameters_raise_sampling_error(kw):
    with pytest.raises(SamplingError, match="expected") as err:
        SamplingParams(**kw).validate(100)
    assert "\n" not in str(err.value) and "Fix:" in str(err.value)


def test_other_errors_and_valid_params():
    p = SamplingParams(temperature=0, top_p=0, top_k=0, min_p=1, penalty_decay=0, token_ban=[0, 99], seed=7)
    assert p.validate(100) is p and p.token_ban == (0, 99)
    for call in (lambda: sample_logits_official(torch.zeros(5), -1.0),
                 lambda: StopChecker([""]),
                 lambda: sample(torch.zeros(2, 5), **OFF, generator=[gen(0)]),
                 lambda: p.validate(0)):
        with pytest.raises(SamplingError, match="expected"):
            call()


def test_batched_params_stack():
    from rwkv.utils import PIPELINE_ARGS
    ps = [SamplingParams(), SamplingParams.from_pipeline_args(PIPELINE_ARGS(temperature=0.5, token_ban=[3])),
          SamplingParams(top_k=5, token_ban=(1, 2))]
    bp = BatchedParams.stack(ps, 10)
    assert bp.temperature.tolist() == [1.0, 0.5, 1.0] and bp.top_k.tolist() == [0, 0, 5]
    assert bp.ban.nonzero().tolist() == [[1, 3], [2, 1], [2, 2]]
    assert torch.isclose(bp.decay, torch.tensor(0.996)).all()
    x = apply_token_ban(torch.zeros(3, 10), bp.ban)
    toks = sample(x, temperature=bp.temperature, top_p=bp.top_p, top_k=bp.top_k, min_p=bp.min_p, generator=gen(0))
    assert not bp.ban[torch.arange(3), toks].any()
    assert BatchedParams.stack(ps[:1], 10).ban is None


# --- stop strings and tokens ---

def test_stop_string_split_across_pieces():
    c = StopChecker(["\n\nUser:", "END"])
    out = [c.feed(p) for p in ["Hello", " wor", "ld\n", "\nUs", "er: more"]]
    assert out == [("Hello", False), (" wor", False), ("ld", False), ("", False), ("", True)]
    assert c.reason == "\n\nUser:" and c.feed("x") == ("", True)


def test_false_prefix_is_released_and_earliest_stop_wins():
    c = StopChecker(["abc", "cd"])
    assert c.feed("xab") == ("x", False)
    assert c.feed("x") == ("abx", False)
    assert c.feed("abcd") == ("", True) and c.reason == "abc"
    c = StopChecker(["world"], stop_tokens=[0])
    assert c.feed("hi wor") == ("hi ", False)
    assert c.feed("<eos>", token=0) == ("wor", True) and c.reason == 0
    c = StopChecker(["zz"])
    assert c.feed("az") == ("a", False) and c.flush() == "z"


def test_stop_checker_random_streams():
    rng = random.Random(0)
    stops = ["ab", "bab", "\n\n"]
    for _ in range(300):
        text = "".join(rng.choice("ab\nc") for _ in range(rng.randint(0, 30)))
        c, emitted, stopped = StopChecker(stops), "", False
        i = 0
        while i < len(text) and not stopped:
            n = rng.randint(1, 4)
            e, stopped = c.feed(text[i:i + n])
            emitted, i = emitted + e, i + n
        if not stopped:
            emitted += c.flush()
        hits = [j for s in stops if (j := text.find(s)) >= 0]
        assert emitted == (text[:min(hits)] if hits else text)
        assert stopped == bool(hits)


# --- GPU: no sync, graph capture ---

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_sample_no_sync_and_graph_capture():
    B, V = 8, 65536
    x = torch.randn(B, V, device="cuda") * 3
    kw = dict(temperature=torch.tensor([0, 1, 0.7, 1, 2, 1, 0, 1.0], device="cuda"),
              top_p=torch.tensor([1, 0.9, 0.5, 1, 0.99, 0, 1, 1.0], device="cuda"),
              top_k=torch.tensor([0, 0, 50, 1, 0, 0, 0, 0], device="cuda"),
              min_p=torch.tensor([0, 0, 0, 0, 0.05, 0, 0, 0.0], device="cuda"))
    sample(x, **kw)  # warm up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = sample(x, **kw)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    greedy = torch.tensor([0, 3, 5, 6])
    assert torch.equal(out[greedy].cpu(), x.argmax(-1)[greedy].cpu())
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        sample(x, **kw)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = sample(x, **kw)
    draws = []
    for _ in range(50):
        graph.replay()
        draws.append(static_out.clone())
    draws = torch.stack(draws).cpu()
    assert (draws[:, greedy] == x.argmax(-1)[greedy].cpu()).all()
    assert len(set(draws[:, 1].tolist())) > 1  # the noise changes between replays
    ref = sample_logits_official(x[1], 1.0, 0.9)
    assert 0 <= ref < V and math.isfinite(float(x[1, ref]))
