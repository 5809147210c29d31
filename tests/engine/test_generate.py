"""engine.Generator: greedy parity with a plain argmax loop, official PIPELINE.generate parity with
penalties, chunked prefill, state kept across calls, stops, end-of-text, bad inputs."""
from __future__ import annotations

import pytest
import torch

import rwkvrt
from rwkvrt.engine import Generation, Generator
from rwkvrt.errors import SamplingError, TokenError
from rwkvrt.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0, presence_penalty=0, frequency_penalty=0)


def greedy_tokens(model, tokens, n):
    logits, st = model.forward(tokens)
    out = []
    for _ in range(n):
        out.append(int(logits[0].argmax()))
        logits, st = model.forward([out[-1]], st)
    return out, st


@pytest.mark.parametrize("which", ["byte", "world"])
def test_greedy_equals_argmax_loop(which, byte_model, world_model):
    model = byte_model if which == "byte" else world_model
    prompt = "ROMEO: But soft, what light"
    res = Generation()
    text = "".join(Generator(model).stream(prompt, max_tokens=25, params=GREEDY, result=res))
    ref, ref_state = greedy_tokens(model, model.tokenizer.encode(prompt), 25)
    if which == "world" and model.tokenizer.eot_id in ref:
        ref = ref[:ref.index(model.tokenizer.eot_id)]
    assert res.tokens == ref
    assert text == res.text == model.tokenizer.decode(ref)
    assert res.prompt_tokens == len(model.tokenizer.encode(prompt))
    assert res.finish_reason == "length"
    # the state has read the prompt and every generated token
    assert torch.equal(res.state.wkv, ref_state.wkv)


def test_penalties_match_official_pipeline(world_model):
    """Same model logits, official rwkv.utils.PIPELINE.generate vs Generator: same token sequence."""
    utils = pytest.importorskip("rwkv.utils")

    class Recorder:
        """Hands rwkvrt's logits to the official loop and records the tokens it feeds back."""

        def __init__(self, m):
            self.m, self.fed = m, []

        def forward(self, tokens, state):
            self.fed.append(list(tokens))
            out, state = world_model.forward(tokens, state)
            return out[0].clone(), state

    rec = Recorder(world_model)
    pipe = utils.PIPELINE(rec, "rwkv_vocab_v20230424")
    n = 30
    # a negative presence penalty makes tokens repeat, so frequency counts and decay matter too
    args = utils.PIPELINE_ARGS(temperature=1.0, top_p=0.0, top_k=0, alpha_frequency=0.5, alpha_presence=-0.8,
                               alpha_decay=0.9, token_ban=[0])
    prompt = "The quick brown fox"
    pipe.generate(prompt, token_count=n, args=args)
    official = [t[0] for t in rec.fed[1:]]  # the loop feeds sampled token i at step i + 1
    assert len(official) == n - 1
    params = SamplingParams(temperature=1.0, top_p=0.0, presence_penalty=-0.8, frequency_penalty=0.5,
                            penalty_decay=0.9, token_ban=(0,))
    res = Generation()
    list(Generator(world_model).stream(prompt, max_tokens=n, params=params, result=res))
    assert res.tokens[: n - 1] == official
    # the penalties did something: plain greedy differs
    plain, _ = greedy_tokens(world_model, world_model.tokenizer.encode(prompt), n)
    assert plain != res.tokens
    assert len(set(official)) < len(official)  # some tokens repeated


def test_generator_accepts_compat_rwkv(ckpt_factory, byte_model):
    model = rwkvrt.RWKV(str(ckpt_factory(2, 64, 256, 0)), "cpu fp32")  # its forward returns [V], not [B, V]
    a, b = Generation(), Generation()
    list(Generator(model).stream("Once upon a time", max_tokens=10, params=GREEDY, result=a))
    list(Generator(byte_model).stream("Once upon a time", max_tokens=10, params=GREEDY, result=b))
    assert a.tokens == b.tokens and len(a.tokens) == 10


def test_compat_pipeline_generate_matches_generator(world_path):
    model = rwkvrt.RWKV(str(world_path), "cpu fp32")
    pipe = rwkvrt.PIPELINE(model, "rwkv_vocab_v20230424")
    args = rwkvrt.PIPELINE_ARGS(temperature=1.0, top_p=0.0, alpha_frequency=0.4, alpha_presence=0.3,
                                alpha_decay=0.9, token_ban=[0], chunk_len=4)
    pieces = []
    out = pipe.generate("Once upon a time", token_count=20, args=args, callback=pieces.append)
    params = SamplingParams(temperature=1.0, top_p=0.0, presence_penalty=0.3, frequency_penalty=0.4,
                            penalty_decay=0.9, token_ban=(0,))
    res = Generation()
    list(Generator(model, chunk_len=4).stream("Once upon a time", max_tokens=20, params=params, result=res))
    # the official loop prints only complete UTF-8 text, and stops feeding the last sampled token
    assert out == "".join(pieces) and len(out) > 0
    assert res.text.startswith(out)


@pytest.mark.parametrize("chunk_len", [1, 3, 7])
def test_chunked_prefill_same_output(byte_model, chunk_len):
    prompt = "Now is the winter of our discontent"
    a, b = Generation(), Generation()
    list(Generator(byte_model).stream(prompt, max_tokens=20, params=GREEDY, result=a))
    list(Generator(byte_model, chunk_len=chunk_len).stream(prompt, max_tokens=20, params=GREEDY, result=b))
    assert a.tokens == b.tokens
    torch.testing.assert_close(a.state.wkv, b.state.wkv, rtol=0, atol=1e-5)


def test_state_kept_across_stream_calls(byte_model):
    tok = byte_model.tokenizer
    g = Generator(byte_model)
    st = byte_model.zero_state(1)
    r1, r2 = Generation(), Generation()
    list(g.stream("First part.", state=st, max_tokens=10, params=GREEDY, result=r1))
    list(g.stream(" Second part.", state=st, max_tokens=10, params=GREEDY, result=r2))
    assert r1.state is st and r2.state is st
    full = tok.encode("First part.") + r1.tokens + tok.encode(" Second part.")
    ref, _ = greedy_tokens(byte_model, full, 10)
    assert r2.tokens == ref


def test_seeded_sampling_reproducible(byte_model):
    params = SamplingParams(temperature=1.2, top_p=0.95, seed=123)
    g = Generator(byte_model)
    a = "".join(g.stream("abc", max_tokens=30, params=params))
    b = "".join(g.stream("abc", max_tokens=30, params=params))
    assert a == b


def test_stop_string_not_emitted_and_fed(byte_model):
    tok = byte_model.tokenizer
    ref, _ = greedy_tokens(byte_model, tok.encode("abc"), 30)
    text = tok.decode(ref)
    stop = text[10:12]
    j = text.find(stop)
    res = Generation()
    out = "".join(Generator(byte_model).stream("abc", max_tokens=30, params=GREEDY, stop=(stop,), result=res))
    assert out == text[:j] and res.finish_reason == "stop"
    # the stop string's tokens were read: the state is ready for the next turn
    _, ref_state = byte_model.forward(tok.encode("abc") + res.tokens)
    assert tok.decode(res.tokens).startswith(text[:j] + stop)
    assert torch.equal(res.state.wkv, ref_state.wkv) or torch.allclose(res.state.wkv, ref_state.wkv, atol=1e-5)


def test_stop_token_not_fed_and_not_printed(byte_model):
    tok = byte_model.tokenizer
    ref, _ = greedy_tokens(byte_model, tok.encode("abc"), 30)
    stop_tok = ref[5]
    k = ref.index(stop_tok)
    res = Generation()
    out = "".join(Generator(byte_model).stream("abc", max_tokens=30, params=GREEDY, stop_tokens=(stop_tok,),
                                               result=res))
    assert res.tokens == ref[:k] and res.finish_reason == "stop"
    assert out == tok.decode(ref[:k])


def test_end_of_text_ends_generation(world_model):
    tok = world_model.tokenizer
    g = Generator(world_model)
    # mark the end-of-text id as seen and give it a huge negative presence penalty (a reward): it wins
    g.occurrence[0, tok.eot_id] = 1.0
    g.seen[0, tok.eot_id] = True
    params = SamplingParams(temperature=0, presence_penalty=-1e9, frequency_penalty=0)
    res = Generation()
    out = "".join(g.stream("Hi", max_tokens=5, params=params, result=res, keep_occurrence=True))
    assert res.finish_reason == "end" and res.tokens == [] and out == ""
    _, ref = world_model.forward(tok.encode("Hi"))
    assert torch.equal(res.state.wkv, ref.wkv)  # the end-of-text token was not fed


def test_max_tokens_zero_reads_prompt(byte_model):
    res = Generation()
    assert list(Generator(byte_model).stream("abc", max_tokens=0, result=res)) == []
    _, ref = byte_model.forward(list(b"abc"))
    assert torch.equal(res.state.wkv, ref.wkv)


@pytest.mark.parametrize("bad", [-1, 1.5, None])
def test_bad_max_tokens(byte_model, bad):
    st = byte_model.zero_state(1)
    with pytest.raises(SamplingError, match="max_tokens"):
        list(Generator(byte_model).stream("abc", state=st, max_tokens=bad))
    assert not st.wkv.any()


def test_empty_prompt_is_token_error(byte_model):
    st = byte_model.zero_state(1)
    with pytest.raises(TokenError, match="empty prompt"):
        list(Generator(byte_model).stream("", state=st))
    assert not st.wkv.any()


def test_official_pipeline_runs_on_rwkvrt_model(world_path):
    utils = pytest.importorskip("rwkv.utils")
    model = rwkvrt.RWKV(str(world_path), "cpu fp32")
    pipe = utils.PIPELINE(model, "rwkv_vocab_v20230424")
    out = pipe.generate("Hello", token_count=5, args=utils.PIPELINE_ARGS(top_p=0.0, token_ban=[0]))
    assert isinstance(out, str)
