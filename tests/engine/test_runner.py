"""DecodeRunner: batched decode over state slots (eager on CPU; CUDA graphs on a GPU)."""
from __future__ import annotations

import pytest
import torch

from rwkvrt.engine.runner import DecodeRunner, _hash32, _open_uniform, counter_noise
from rwkvrt.errors import SamplingError, StateError
from rwkvrt.models.rwkv7 import RWKV7
from rwkvrt.models.rwkv7_fast import RWKV7Fast
from rwkvrt.models.shapes import make_config, random_state_dict
from rwkvrt.sampling import SamplingParams
from rwkvrt.state import State

from conftest import needs_cuda, rel_err

_cache: dict = {}


def setup(device="cpu", dtype=torch.float32, L=2, C=128, V=301):
    key = (device, dtype, L, C, V)
    if key not in _cache:
        cfg = make_config(L, C, V)
        sd = random_state_dict(cfg, seed=3)
        _cache[key] = (cfg, sd, RWKV7Fast(cfg, sd, device=device, dtype=dtype))
    return _cache[key]


def gpu_ckpt():
    if "gpu" not in _cache:
        cfg = make_config(12, 768, 65536)
        _cache["gpu"] = (cfg, random_state_dict(cfg, seed=5))
    return _cache["gpu"]


PROMPTS = [[5, 17, 200, 3], [99], [1, 2, 3, 4, 5, 6, 7], [250, 250]]


def greedy_alone(runner, prompt, n):
    s = runner.alloc()
    tok = int(runner.prefill(s, prompt).argmax())
    out = [tok]
    for _ in range(n - 1):
        tok = int(runner.step([s], [tok])[0])
        out.append(tok)
    runner.free(s)
    return out


def test_runner_greedy_equals_rwkv7_argmax_step_by_step():
    cfg, sd, fast = setup()
    ref = RWKV7(cfg, sd)
    runner = DecodeRunner(fast, 4)
    got = greedy_alone(runner, PROMPTS[0], 8)
    st = State.zeros(cfg, 1)
    logits = ref.forward(torch.tensor([PROMPTS[0]]), st)
    want = []
    for _ in range(8):
        want.append(int(logits[0].argmax()))
        logits = ref.forward(torch.tensor([[want[-1]]]), st)
    assert got == want


def test_runner_batched_equals_singles_and_buckets_pad():
    _, _, fast = setup()
    runner = DecodeRunner(fast, 4, buckets=(1, 2, 4))
    singles = [greedy_alone(runner, p, 6) for p in PROMPTS[:3]]
    slots = [runner.alloc() for _ in range(3)]  # batch of 3 pads to bucket 4 with the hidden slot
    toks = [int(runner.prefill(s, p).argmax()) for s, p in zip(slots, PROMPTS)]
    outs = [[t] for t in toks]
    for _ in range(5):
        nxt = runner.step(slots, toks)
        assert nxt.shape == (3,) and nxt.dtype == torch.int64 and nxt.device.type == "cpu"
        toks = nxt.tolist()
        for o, t in zip(outs, toks):
            o.append(t)
    assert outs == singles
    # one more batched step: each row's logits equal a lone forward of that row's state
    pre = runner.pool.clone()
    runner.step(slots, toks)
    lg = runner.last_logits(3)
    for b, s in enumerate(slots):
        one = fast.forward(torch.tensor([[toks[b]]]), pre.select([s]))[0]
        assert rel_err(lg[b], one) < 1e-5


def test_runner_alloc_free_reuse_leaves_other_slots_untouched():
    _, _, fast = setup()
    runner = DecodeRunner(fast, 3)
    a, b = runner.alloc(), runner.alloc()
    runner.prefill(a, PROMPTS[0])
    runner.prefill(b, PROMPTS[2])
    snap = runner.pool.clone()
    runner.free(b)
    c = runner.alloc()
    assert c == b  # lowest free id is reused, and comes back zeroed
    assert all(float(t[:, c].abs().max()) == 0 for t in (runner.pool.att_x, runner.pool.wkv, runner.pool.ffn_x))
    runner.prefill(c, PROMPTS[1])
    runner.step([c], [7])
    for n in ("att_x", "wkv", "ffn_x"):
        assert torch.equal(getattr(runner.pool, n)[:, a], getattr(snap, n)[:, a])
    with pytest.raises(StateError):
        runner.step([a, a], [1, 2])
    runner.free(a)
    with pytest.raises(StateError):
        runner.step([a], [1])
    with pytest.raises(StateError):
        runner.free(a)
    runner.alloc(), runner.alloc()
    with pytest.raises(StateError):
        runner.alloc()


def test_runner_seeded_sampling_is_batch_independent_and_filtered():
    _, _, fast = setup()
    runner = DecodeRunner(fast, 4)
    params = SamplingParams(temperature=1.3, top_p=0.9, top_k=5, presence_penalty=0, frequency_penalty=0, seed=42)

    def run(batch_prompts, n=6):
        slots = [runner.alloc(params) for _ in batch_prompts]
        toks = [runner.sample_next(s, runner.prefill(s, p)) for s, p in zip(slots, batch_prompts)]
        outs = [[] for _ in slots]
        for _ in range(n):
            logits_before = None
            toks = runner.step(slots, toks).tolist()
            logits_before = runner.last_logits(len(slots), greedy=False)
            for b, t in enumerate(toks):
                # the draw is inside the top-5 of that step's logits
                assert t in logits_before[b].topk(5).indices.tolist()
                outs[b].append(t)
        for s in slots:
            runner.free(s)
        return outs

    alone = run([PROMPTS[0]])[0]
    assert len(set(alone)) > 1  # really sampling (temperature 1.3 over a top-5)
    together = run([PROMPTS[1], PROMPTS[0], PROMPTS[2]])
    assert together[1] == alone
    with pytest.raises(SamplingError):
        runner.alloc(SamplingParams(temperature=1.0, presence_penalty=0.5))
    assert runner.slots.in_use == 0  # a refused request does not leak a slot


def test_runner_token_ban_with_greedy():
    _, _, fast = setup()
    runner = DecodeRunner(fast, 2)
    free = runner.alloc()
    first = int(runner.prefill(free, PROMPTS[0]).argmax())
    want = int(runner.step([free], [first])[0])
    ban = SamplingParams(temperature=0.0, top_p=0.0, presence_penalty=0, frequency_penalty=0, token_ban=[want])
    banned = runner.alloc(ban)
    runner.prefill(banned, PROMPTS[0])
    got = int(runner.step([banned], [first])[0])
    assert got != want
    assert got == int(runner.last_logits(1, greedy=False)[0].masked_fill(
        torch.arange(fast.cfg.vocab_size) == want, float("-inf")).argmax())


def test_counter_noise_is_exponential_and_distinct_per_counter():
    th = _hash32(torch.arange(4096, dtype=torch.int64))
    e0 = counter_noise(torch.tensor([7, 7]), torch.tensor([0, 1]), th)
    assert e0.shape == (2, 4096) and bool((e0 > 0).all())
    assert abs(float(e0.mean()) - 1.0) < 0.06 and not torch.equal(e0[0], e0[1])
    assert torch.equal(e0[:1], counter_noise(torch.tensor([7]), torch.tensor([0]), th))


def test_counter_noise_is_never_zero():
    """Regression: the old 24-bit uniform rounded (2**24 - 1) + 0.5 up to 2**24, so u = 1 and the
    noise was exactly 0 once in 2**24 draws (seed 7, counter 204, token 51178 is one). Then
    logp - log(noise) was -inf + inf = NaN on every removed token and argmax returned one of them:
    a greedy row drew a token that was not its argmax, at random (unseeded rows get random seeds),
    which is what the graph-vs-eager runner test kept catching."""
    h = torch.tensor([0, 0x1FF, 0xFFFFFE00, 0xFFFFFFFF], dtype=torch.int64)
    u = _open_uniform(h)
    assert bool(((u > 0) & (u < 1)).all()) and float(u[-1]) == 1 - 2 ** -24
    th = _hash32(torch.arange(65536))
    e = counter_noise(torch.tensor([7, 7]), torch.tensor([204, 205]), th)
    assert bool((e > 0).all()) and bool(torch.isfinite(e).all())
    # the runner's draw for a greedy row (only the argmax kept): always the argmax
    logits = torch.randn(2, 65536, generator=torch.Generator().manual_seed(0))
    logp = torch.full_like(logits, float("-inf")).scatter_(1, logits.argmax(1, keepdim=True), 0.0)
    assert torch.equal((logp - e.log()).argmax(-1), logits.argmax(-1))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rows", [3, 5], ids=["decode-ops", "gemm-path"])
def test_gpu_graph_replay_equals_eager(dtype, rows):
    """Mixed greedy + sampled rows: graph replay == eager, tokens and state, bit for bit."""
    cfg, sd = gpu_ckpt()
    fast = RWKV7Fast(cfg, sd, device="cuda", dtype=dtype)
    graphed, eager = DecodeRunner(fast, 8), DecodeRunner(fast, 8, use_graphs=False)
    prompts = [[(i * 37 + j) % 65536 for j in range(5 + 3 * i)] for i in range(rows)]
    outs = []
    for r in (graphed, eager):
        slots = [r.alloc(SamplingParams(temperature=0.8, top_p=0.9, presence_penalty=0, frequency_penalty=0, seed=i))
                 if i % 2 else r.alloc() for i in range(rows)]
        toks = [int(r.prefill(s, p).argmax()) for s, p in zip(slots, prompts)]
        seq = []
        for _ in range(20):
            toks = r.step(slots, toks).tolist()
            seq.append(toks)
        outs.append((seq, r.pool.clone()))
    assert outs[0][0] == outs[1][0]
    # the hidden padding slot (the pool's last row) is scratch: several padding rows race on it
    real = graphed.max_batch
    for n in ("att_x", "wkv", "ffn_x"):
        assert torch.equal(getattr(outs[0][1], n)[:, :real], getattr(outs[1][1], n)[:, :real]), n


@pytest.mark.gpu
@needs_cuda
def test_gpu_runner_batched_equals_singles_greedy():
    cfg, sd = gpu_ckpt()
    fast = RWKV7Fast(cfg, sd, device="cuda", dtype=torch.float16)
    r = DecodeRunner(fast, 8)
    prompts = [[(i * 101 + j * 7) % 65536 for j in range(4 + i)] for i in range(6)]
    singles = [greedy_alone(r, p, 12) for p in prompts]
    slots = [r.alloc() for _ in prompts]
    toks = [int(r.prefill(s, p).argmax()) for s, p in zip(slots, prompts)]
    outs = [[t] for t in toks]
    for _ in range(11):
        toks = r.step(slots, toks).tolist()
        for o, t in zip(outs, toks):
            o.append(t)
    # fp16 GEMMs of different M may round differently: near-ties can flip, so count agreement
    agree = sum(a == b for s, o in zip(singles, outs) for a, b in zip(s, o)) / (12 * len(prompts))
    print(f"batched vs singles greedy agreement: {agree * 100:.1f}%")
    assert agree >= 0.95


def test_runner_triton_backend_eager_matches_reference(kernel_device):
    """Eager runner over the fused kernels (interpreter on CPU / a GPU): same greedy tokens, close logits."""
    cfg, sd, _ = setup()
    runs = []
    for backend in ("reference", "triton"):
        fast = RWKV7Fast(cfg, sd, device=kernel_device, dtype=torch.float32, backend=backend)
        r = DecodeRunner(fast, 2, use_graphs=False)
        slots = [r.alloc(), r.alloc()]
        toks = [int(r.prefill(s, p).argmax()) for s, p in zip(slots, PROMPTS[:2])]
        seq = []
        for _ in range(3):
            toks = r.step(slots, toks).tolist()
            seq.append(toks)
        runs.append((seq, r.last_logits(2).clone()))
    assert runs[0][0] == runs[1][0]
    assert rel_err(runs[1][1], runs[0][1]) < 1e-4


def _gpu_random_sd(cfg, dtype):
    """Random weights generated on the GPU (speed does not depend on values; avoids a slow CPU randn)."""
    from rwkvrt.models.config import expected_shapes

    g = torch.Generator(device="cuda").manual_seed(0)
    sd = {}
    for name, shape in expected_shapes(cfg).items():
        t = torch.randn(shape, generator=g, device="cuda", dtype=torch.float32)
        sd[name] = (t * (0.5 / shape[-1] ** 0.5) if len(shape) == 2 and "emb" not in name else t * 0.1).to(dtype)
    return sd


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("name,rkv_bmm,fold", [("0.1B", True, False), ("0.1B", False, False), ("0.1B", True, True),
                                               ("1.5B", True, False), ("1.5B", False, True), ("7.2B", True, False)])
def test_gpu_decode_speed_printed(name, rkv_bmm, fold):
    """Not a pass/fail benchmark: prints graphed batch-1 greedy decode tok/s and % of the bandwidth floor."""
    import time

    from rwkvrt.models.shapes import published_config

    cfg = published_config(name)
    dtype = torch.float16
    fast = RWKV7Fast(cfg, _gpu_random_sd(cfg, dtype), device="cuda", dtype=dtype, rkv_bmm=rkv_bmm,
                     fold_lora_act=fold)
    r = DecodeRunner(fast, 1)
    s = r.alloc()
    tok = int(r.prefill(s, [1, 2, 3]).argmax())
    for _ in range(20):
        tok = int(r.step([s], [tok])[0])
    torch.cuda.synchronize()
    n = 200
    t0 = time.perf_counter()
    for _ in range(n):
        tok = int(r.step([s], [tok])[0])
    dt = (time.perf_counter() - t0) / n
    C, L, V = cfg.n_embd, cfg.n_layer, cfg.vocab_size
    lora = cfg.d_decay + cfg.d_aaa + cfg.d_mv + cfg.d_gate
    weight_bytes = 2 * (fast.head.numel() + L * (4 * C * C + 2 * C * cfg.d_ffn + 2 * C * lora))
    floor = 3.0e12 / weight_bytes
    print(f"{name} fp16 rkv_bmm={rkv_bmm} fold_lora_act={fold} batch-1 graphed greedy decode: {1 / dt:.0f} tok/s ({dt * 1e6:.0f} us/token), "
          f"floor at 3.0 TB/s {floor:.0f} tok/s ({100 / dt / floor:.0f}%)")


def test_prefill_pieces_are_exact():
    """Prompts are cut into prefill_chunk pieces plus the binary digits of the rest (one graph per
    length on a GPU); the logits and state equal one forward over the whole prompt."""
    cfg, sd, fast = setup()
    runner = DecodeRunner(fast, 2, prefill_chunk=8, use_graphs=False)
    assert runner.prefill_pieces(29) == [8, 8, 8, 4, 1]
    assert runner.prefill_pieces(7) == [4, 2, 1] and runner.prefill_pieces(16) == [8, 8]
    prompt = [(i * 7 + 3) % cfg.vocab_size for i in range(29)]
    s = runner.alloc()
    got = runner.prefill(s, prompt)
    st = State.zeros(cfg, 1)
    want = RWKV7(cfg, sd).forward(torch.tensor([prompt]), st)[0]
    assert rel_err(got, want) < 1e-5
    assert rel_err(runner.pool.wkv[:, s], st.wkv[:, 0]) < 1e-5


@pytest.mark.gpu
@needs_cuda
def test_gpu_graphed_prefill_equals_eager():
    cfg, sd = gpu_ckpt()
    fast = RWKV7Fast(cfg, sd, device="cuda", dtype=torch.float16)
    prompt = [(i * 37 + 1) % 65536 for i in range(777)]
    longer = torch.tensor([(i * 91 + 5) % 65536 for i in range(1500)])
    runs = []
    for ug in (True, False):
        r = DecodeRunner(fast, 2, use_graphs=ug, prefill_chunk=256)
        s, s2 = r.alloc(), r.alloc()
        outs = [r.prefill(s, prompt), r.prefill(s, prompt[:100]),   # graphs reused, state chained
                r.prefill(s2, longer),                                # a CPU tensor; grows the id staging
                r.prefill(s2, longer[:300].cuda())]                   # ids already on the device
        torch.cuda.synchronize()
        runs.append(outs + [r.pool.wkv[:, s].clone(), r.pool.wkv[:, s2].clone()])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def decode_by_steps(runner, slots, toks, limits, stops):
    """What ``decode`` must yield, one plain ``step`` at a time over the rows still going."""
    B = len(slots)
    outs, live, count, cur = [], list(range(B)), [0] * B, list(toks)
    while live:
        nxt = runner.step([slots[r] for r in live], [cur[r] for r in live]).tolist()
        row = [None] * B
        for r, t in zip(live, nxt):
            row[r], cur[r] = t, t
            count[r] += 1
        outs.append(row)
        live = [r for r in live if count[r] < limits[r] and row[r] not in stops]
    return outs


def _slot_state(runner, slots):
    return [t[:, slots].clone() for t in runner.pool.tensors()] + [runner.counter[slots].clone()]


def _put_state(runner, slots, saved):
    """Write back what ``_slot_state`` took (states and sampling counters)."""
    for t, v in zip(runner.pool.tensors(), saved):
        t[:, slots] = v
    runner.counter[slots] = saved[3]


def _one_prefilled_row(max_batch):
    _, _, fast = setup()
    runner = DecodeRunner(fast, max_batch)
    s = runner.alloc()
    tok = int(runner.prefill(s, PROMPTS[0]).argmax())
    return runner, s, tok, _slot_state(runner, [s])


@pytest.mark.parametrize("lookahead", [None, True, False])
@pytest.mark.parametrize("sampled", [False, True])
def test_runner_decode_equals_stepping_with_stops_and_limits(lookahead, sampled):
    _, _, fast = setup()
    runner = DecodeRunner(fast, 4)
    params = None
    if sampled:
        params = SamplingParams(temperature=1.2, top_k=8, presence_penalty=0, frequency_penalty=0, seed=7)
    slots = [runner.alloc(params) for _ in range(3)]
    toks = [int(runner.prefill(s, p).argmax()) for s, p in zip(slots, PROMPTS)]
    before = _slot_state(runner, slots)
    # a dry run picks a stop token that row 1 meets at its 3rd token
    probe = decode_by_steps(runner, slots, toks, [8, 8, 8], set())
    stops = {probe[2][1]}
    limits = [8, 8, 5]

    def restore():
        _put_state(runner, slots, before)

    restore()
    want = decode_by_steps(runner, slots, toks, limits, stops)
    want_state = _slot_state(runner, slots)
    restore()
    got = list(runner.decode(slots, toks, limits, stop_tokens=stops, lookahead=lookahead))
    assert got == want
    assert any(r[1] is None for r in got) and got[-1][2] is None  # rows 1 (stop) and 2 (limit) end early
    *states, counter = _slot_state(runner, slots)
    assert torch.equal(counter, want_state[3])
    for g, w in zip(states, want_state):
        assert rel_err(g, w) < 1e-5
    # the next step after decode continues exactly as after stepping
    last = [next(r[b] for r in reversed(got) if r[b] is not None) for b in range(3)]
    nxt = runner.step(slots, last).tolist()
    restore()
    decode_by_steps(runner, slots, toks, limits, stops)
    assert runner.step(slots, last).tolist() == nxt


@pytest.mark.parametrize("lookahead", [True, False])
def test_runner_decode_single_row_stop_ends_at_the_stop_token(lookahead):
    runner, s, tok, before = _one_prefilled_row(2)
    probe = [r[0] for r in decode_by_steps(runner, [s], [tok], [6], set())]
    stop = probe[2]
    n_want = probe.index(stop) + 1
    _put_state(runner, [s], before)
    decode_by_steps(runner, [s], [tok], [6], {stop})
    want_state = _slot_state(runner, [s])
    _put_state(runner, [s], before)
    got = list(runner.decode([s], [tok], 6, stop_tokens=[stop], lookahead=lookahead))
    assert got == [[t] for t in probe[:n_want]]  # no trailing all-None step
    for g, w in zip(_slot_state(runner, [s]), want_state):
        assert torch.equal(g, w) if g.dtype == torch.int64 else rel_err(g, w) < 1e-5


def test_runner_decode_closed_early_rolls_back_the_queued_step():
    runner, s, tok, before = _one_prefilled_row(4)
    want = [r[0] for r in decode_by_steps(runner, [s], [tok], [3], set())]
    want_state = _slot_state(runner, [s])  # has read tok and the first two tokens, not the third
    _put_state(runner, [s], before)
    gen = runner.decode([s], [tok], 50, stop_tokens=[runner.cfg.vocab_size - 1], lookahead=True)
    got = [next(gen)[0] for _ in range(3)]
    gen.close()  # the 4th step was queued ahead, fed the 3rd token: undone
    assert got == want
    *states, counter = _slot_state(runner, [s])
    assert torch.equal(counter, want_state[3])
    for g, w in zip(states, want_state):
        assert rel_err(g, w) < 1e-5


def test_runner_decode_refuses_bad_requests_before_running():
    _, _, fast = setup()
    runner = DecodeRunner(fast, 2)
    s = runner.alloc()
    pre = _slot_state(runner, [s])
    for bad in (0, -1, [3, 3], True):
        with pytest.raises(StateError):
            runner.decode([s], [1], bad)
    with pytest.raises(StateError):
        runner.decode([s, s], [1, 2], 4)
    for g, w in zip(_slot_state(runner, [s]), pre):
        assert torch.equal(g, w)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("rows", [1, 3])
def test_gpu_decode_lookahead_equals_plain_steps(rows):
    """Graphs: decode with the step queued ahead (and its roll-back at a stop) == decode one step at a
    time, bit for bit (same bucket, same kernels); and == stepping, token for token."""
    cfg, sd = gpu_ckpt()
    fast = RWKV7Fast(cfg, sd, device="cuda", dtype=torch.float16)
    r = DecodeRunner(fast, 4)
    slots = [r.alloc() for _ in range(rows)]
    toks = [int(r.prefill(s, [(b * 31 + j) % 65536 for j in range(3 + b)]).argmax()) for b, s in enumerate(slots)]
    before = _slot_state(r, slots)
    probe = list(r.decode(slots, toks, 12))
    stops = {probe[4][0]}
    limits = [12, 7, 12][:rows]
    outs = []
    for la in (True, False):
        _put_state(r, slots, before)
        got = list(r.decode(slots, toks, limits, stop_tokens=stops, lookahead=la))
        outs.append((got, _slot_state(r, slots)))
    assert outs[0][0] == outs[1][0]
    assert outs[0][0][-1][0] is None or len(outs[0][0]) <= 5  # row 0 stopped at its stop token
    for a, b in zip(outs[0][1], outs[1][1]):
        assert torch.equal(a, b)
    _put_state(r, slots, before)
    assert decode_by_steps(r, slots, toks, limits, stops) == outs[0][0]
