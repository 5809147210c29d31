"""Batched decode over a pool of state slots, one CUDA graph per batch-size bucket.

The whole decode step (embedding gather, every layer, head, sampling) is one graph
replay; the host copies B slot ids and B token ids in and reads B token ids back.
On CPU (or ``use_graphs=False``) the same step function runs eagerly.

``decode`` runs many steps with the host one step behind the device: each step's sampled
tokens are written where the next step reads its input, so step n+1 is queued before the
host has read step n's tokens, and the host work and the launch latency of each step hide
behind the previous step's GPU work. A row that samples a stop token has then been fed it
by the queued step; that step began by copying the batch's states aside, and the row's
state (and sampling counter) is put back from that copy, so the result equals stepping one
token at a time.

Random draws are counter-based, not a torch.Generator: row b's noise for step n is a hash
of (its seed, its step counter, token id), computed on the device. So a seeded sequence
draws the same tokens whatever batch it shares and whatever bucket it lands in
(batched == singles also when sampling), and the graph needs no generator registration.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..errors import SamplingError, StateError
from ..models.rwkv7_fast import RWKV7Fast
from ..ops import argmax as argmax_ops
from ..sampling import SamplingParams, filtered_logprobs
from ..state import State
from .slots import SlotPool

log = logging.getLogger(__name__)

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# decode(): the largest bucket that queues a step ahead when stop tokens are given (each such
# step first copies the rows' states aside: ~1% of a 1.5B step per row, and the host's share of
# a step, the part the lookahead hides, shrinks as the batch grows). Without stop tokens the
# lookahead needs no copy and is used at every batch size.
SNAPSHOT_MAX_BATCH = 8
_M32 = 0xFFFFFFFF


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer (Wellons' lowbias32) on int64 tensors holding values in [0, 2**32).

    The products overflow int64 and wrap, but their low 32 bits, all we keep, are exact."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def counter_noise(seed: torch.Tensor, counter: torch.Tensor, token_hash: torch.Tensor) -> torch.Tensor:
    """Exponential(1) noise [B, V] float32 from per-row seed [B] and counter [B] (int64, [0, 2**32)).

    token_hash [V] int64 = _hash32(arange(V)) (precomputed). Uniforms have 23 random bits."""
    key = _hash32(seed ^ _hash32(counter & _M32))  # [B]
    h = _hash32(token_hash[None, :] ^ key[:, None])  # [B, V]
    return -torch.log(_open_uniform(h))


def _open_uniform(h: torch.Tensor) -> torch.Tensor:
    """float32 uniforms strictly inside (0, 1) from 32-bit hashes: (top 23 bits + 0.5) / 2**23.

    Every value is exact in float32. (With 24 bits, (2**24 - 1) + 0.5 rounds up to 2**24 and u = 1:
    a noise of exactly 0, whose log is -inf, turned every removed token's -inf into NaN and argmax
    picked one, once in ~2**24 draws; that was the graph-vs-eager "defect" of the runner tests.)"""
    return ((h >> 9).to(torch.float32) + 0.5) * (1.0 / (1 << 23))


@dataclass
class _Bucket:
    """Static buffers of one batch-size bucket (their addresses are baked into its graphs)."""

    dev_in: torch.Tensor   # [2, n] int64 device: row 0 slot ids, row 1 token ids (one H2D copy)
    out: torch.Tensor      # [n] int64 device: the sampled tokens (a view of dev_in[1] in a runner's
                           # buckets, so the next step reads them in place)
    host_in: torch.Tensor | None  # [2, n] int64 (pinned on cuda), staging for dev_in
    graphs: dict          # (greedy, snapshot) -> torch.cuda.CUDAGraph (None: sampler runs eagerly)
    logits: dict          # (greedy, snapshot) -> logits [n, V] of that variant's last step
    host_np: object = None        # numpy view of host_in (cheap element writes)
    host_out: torch.Tensor | None = None  # [n] int64 (pinned on cuda), the step's tokens on the host
    snap: State | None = None     # the rows' states before the step (snapshot variants only)
    ring: list | None = None      # decode(): two (pinned host [n] int64, event) pairs
    last: tuple = (True, False)   # the variant the last step ran (for last_logits)
    h2d: object = None            # decode(): event after its copy out of host_in (cuda)


class DecodeRunner:
    """Decode many sequences at once with one state slot each.

    model: a RWKV7Fast. max_batch: number of usable slots (ids 0..max_batch-1); one more
    hidden slot absorbs the padding rows of a bucket. use_graphs: None = on cuda.
    prefill_chunk: tokens per prefill call. Sampling settings are per slot (``set_sampling``);
    default greedy.
    """

    def __init__(self, model: RWKV7Fast, max_batch: int, *, buckets=DEFAULT_BUCKETS,
                 use_graphs: bool | None = None, prefill_chunk: int = 1024):
        cfg = model.cfg
        self.model, self.cfg, self.device = model, cfg, model.device
        self.max_batch = int(max_batch)
        if self.max_batch < 1:
            raise StateError("max_batch must be positive", expected=">= 1", got=str(max_batch), fix="pass e.g. 8")
        bs = sorted({int(b) for b in buckets if int(b) < self.max_batch} | {self.max_batch})
        self.buckets = tuple(bs)
        self.use_graphs = (self.device.type == "cuda") if use_graphs is None else bool(use_graphs)
        self.prefill_chunk = int(prefill_chunk)
        S = self.max_batch + 1
        self.dummy = self.max_batch
        self.pool = State.zeros(cfg, S, device=self.device, dtype=model.dtype)
        self.slots = SlotPool(self.max_batch)
        dev = self.device
        # per-slot sampling settings, gathered by slot id inside the step
        self.temperature = torch.zeros(S, device=dev)
        self.top_p = torch.ones(S, device=dev)
        self.top_k = torch.zeros(S, device=dev, dtype=torch.int64)
        self.min_p = torch.zeros(S, device=dev)
        self.seed = torch.zeros(S, device=dev, dtype=torch.int64)
        self.counter = torch.zeros(S, device=dev, dtype=torch.int64)
        self.ban = torch.zeros(S, cfg.vocab_size, device=dev, dtype=torch.bool)
        self._greedy = [True] * S
        self._token_hash = _hash32(torch.arange(cfg.vocab_size, device=dev, dtype=torch.int64))
        # greedy picks and the sampler's last step: one argmax launch writing straight into bk.out
        argmax_rows, scratch = argmax_ops.resolve(dev.type)
        self._argmax_scratch = scratch(S, dev)
        self._argmax = lambda x, out: argmax_rows(x, out, self._argmax_scratch, pdl=getattr(model, "pdl", None))  # noqa: E731
        self._buckets: dict[int, _Bucket] = {}
        self._mempool = torch.cuda.graph_pool_handle() if self.use_graphs else None
        # prefill graphs keep their own pool: their outputs must not share memory with decode graphs
        self._prefill_mempool = torch.cuda.graph_pool_handle() if self.use_graphs else None
        self._prefill_graphs: dict[int, dict] = {}
        self._stage: dict | None = None   # prefill's pinned id staging (``_stage_prompt``)

    def alloc(self, params: SamplingParams | None = None) -> int:
        """A free slot id with a zeroed state (and the given sampling settings, default greedy)."""
        self._checked(params)
        s = self.slots.alloc()
        self.reset(s)
        self.set_sampling(s, params)
        return s

    def free(self, slot: int) -> None:
        self.slots.free(slot)

    def reset(self, slot: int) -> None:
        """Zero one slot's state (other slots untouched)."""
        self.slots.check(slot)
        for t in self.pool.tensors():
            t[:, slot].zero_()

    def _checked(self, params: SamplingParams | None) -> SamplingParams:
        p = params or SamplingParams(temperature=0.0, top_p=0.0, presence_penalty=0.0, frequency_penalty=0.0)
        p.validate(self.cfg.vocab_size)
        if p.presence_penalty or p.frequency_penalty:
            raise SamplingError("the decode runner does not apply repetition penalties",
                                expected="zero presence and frequency penalties",
                                got=f"presence={p.presence_penalty}, frequency={p.frequency_penalty}",
                                fix="pass SamplingParams with those at 0, or use rwkvrt.engine.Generator")
        return p

    def set_sampling(self, slot: int, params: SamplingParams | None = None) -> None:
        """Per-slot temperature / top_p / top_k / min_p / token_ban / seed (None: greedy).
        Repetition penalties are not applied here (use the Generator for those). An unseeded
        request gets a random seed."""
        self.slots.check(slot)
        p = self._checked(params)
        self.ban[slot] = False
        if p.token_ban:
            self.ban[slot, torch.tensor(p.token_ban, dtype=torch.int64, device=self.device)] = True
        seed = p.seed if p.seed is not None else int(torch.randint(0, 2**62, (1,)))
        self.temperature[slot] = p.temperature
        self.top_p[slot] = p.top_p
        self.top_k[slot] = p.top_k
        self.min_p[slot] = p.min_p
        self.seed[slot] = seed & _M32 ^ (seed >> 32) & _M32
        self.counter[slot] = 0
        # all-greedy batches run a graph with a bare argmax (no sort, no noise); bans need the masked path
        self._greedy[slot] = (p.temperature == 0 or p.top_p == 0 or p.top_k == 1) and not p.token_ban

    def prefill_pieces(self, T: int) -> list[int]:
        """How a prompt of T tokens is cut: full ``prefill_chunk`` pieces, then the binary digits of
        the rest (e.g. 1000 with chunk 1024 -> 512, 256, 128, 64, 32, 8). Each length is one CUDA
        graph, so a prompt costs a few replays instead of ~10 Python-launched kernels per layer;
        cutting is exact (the state carries over)."""
        pieces = [self.prefill_chunk] * (T // self.prefill_chunk)
        rem = T % self.prefill_chunk
        while rem:
            p = 1 << (rem.bit_length() - 1)
            pieces.append(p)
            rem -= p
        return pieces

    @torch.inference_mode()
    def prefill(self, slot: int, tokens) -> torch.Tensor:
        """Read prompt tokens (list[int] or 1-D tensor) into ``slot``; returns the last logits [V] (a copy).

        With graphs the host only stages the ids (pinned buffer, one asynchronous H2D copy) and
        queues a fill, a copy and a replay per piece: no blocking copy, so the GPU starts as
        soon as the first replay is queued (the blocking pageable copies cost ~0.4 ms a prompt
        on an H100, 8% of a 1.5B 512-token prefill)."""
        self.slots.check(slot)
        if not self.use_graphs:
            t = torch.as_tensor(tokens, dtype=torch.int64).reshape(1, -1).to(self.device)
            self._check_prompt(t.shape[1])
            sl = torch.tensor([slot], device=self.device, dtype=torch.int64)
            out, s = None, 0
            for n in self.prefill_pieces(t.shape[1]):
                out = self.model.forward(t[:, s:s + n], self.pool, slots=sl)
                s += n
            return out[0].clone()
        ids = self._stage_prompt(tokens)
        s = 0
        for n in self.prefill_pieces(ids.shape[0]):
            g = self._prefill_graph(n)
            g["tokens"][0].copy_(ids[s:s + n])
            g["slot"].fill_(slot)
            g["graph"].replay()
            s += n
        return g["logits"][0].clone()

    @staticmethod
    def _check_prompt(T: int) -> None:
        if T == 0:
            raise StateError("empty prompt", expected="at least one token", got="0", fix="pass some tokens")

    def _stage_prompt(self, tokens) -> torch.Tensor:
        """The prompt's ids on the device (int64 [T]) through a pinned staging buffer and one
        asynchronous copy. The buffer is reused once the previous prompt's copy has run."""
        if isinstance(tokens, torch.Tensor) and tokens.device.type != "cpu":
            ids = tokens.reshape(-1).to(self.device, torch.int64)   # "cuda" vs "cuda:0": compare types
            self._check_prompt(ids.shape[0])
            return ids
        ids = tokens.reshape(-1).numpy() if isinstance(tokens, torch.Tensor) else tokens
        T = len(ids)
        self._check_prompt(T)
        st = self._stage
        if st is None or st["host"].shape[0] < T:
            cap = max(T, 2 * (st["host"].shape[0] if st else 256))
            host = torch.zeros(cap, dtype=torch.int64, pin_memory=True)
            st = self._stage = {"host": host, "np": host.numpy(), "dev": torch.zeros(cap, dtype=torch.int64, device=self.device),
                                "copied": torch.cuda.Event()}
        else:
            st["copied"].synchronize()   # the previous prompt's H2D copy has read the buffer
        st["np"][:T] = ids
        st["dev"][:T].copy_(st["host"][:T], non_blocking=True)
        st["copied"].record()
        return st["dev"][:T]

    def _prefill_graph(self, n: int) -> dict:
        """The captured forward of n tokens into one slot (captured on the hidden slot, so no real state moves)."""
        if n not in self._prefill_graphs:
            dev = self.device
            g = {"tokens": torch.zeros(1, n, device=dev, dtype=torch.int64),
                 "slot": torch.full((1,), self.dummy, device=dev, dtype=torch.int64)}
            side = torch.cuda.Stream(device=dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):
                for _ in range(2):
                    self.model.forward(g["tokens"], self.pool, slots=g["slot"])
            torch.cuda.current_stream(dev).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._prefill_mempool):
                g["logits"] = self.model.forward(g["tokens"], self.pool, slots=g["slot"])
            g["graph"] = graph
            self._prefill_graphs[n] = g
            log.info("captured prefill graph: %d tokens", n)
        return self._prefill_graphs[n]

    @torch.inference_mode()
    def sample_next(self, slot: int, logits: torch.Tensor) -> int:
        """Draw ``slot``'s next token from logits [V] (e.g. prefill's) with its own settings, eagerly.

        Same sampler, seed and counter as ``step``, so a sequence's draws do not depend on
        whether a token came from prefill or decode, or on the batch it shared."""
        self.slots.check(slot)
        bk = _Bucket(dev_in=torch.tensor([[slot], [0]], device=self.device),
                     out=torch.zeros(1, device=self.device, dtype=torch.int64), host_in=None, graphs={}, logits={})
        lg = logits.reshape(1, -1).contiguous()
        if self._greedy[slot]:
            self._argmax(lg, bk.out)
        else:
            self._sample(bk, lg)
        return int(bk.out[0])

    def bucket_for(self, n: int) -> int:
        for b in self.buckets:
            if b >= n:
                return b
        raise StateError("batch larger than the runner", expected=f"<= {self.max_batch} rows", got=str(n),
                         fix="raise max_batch")

    @torch.inference_mode()
    def step(self, slots, last_tokens) -> torch.Tensor:
        """Feed one token per slot and return the next token of each: int64 [B] on the CPU.

        slots: B distinct allocated slot ids (list or tensor); last_tokens: B token ids.
        Each slot's state advances by one token (padding rows only touch the hidden slot).
        """
        sl = slots.tolist() if isinstance(slots, torch.Tensor) else slots
        tk = last_tokens.tolist() if isinstance(last_tokens, torch.Tensor) else last_tokens
        bk, greedy = self._prepare(sl, tk)
        self._launch(bk, greedy, False)
        # the staging buffers are pinned exactly when the runner is on cuda (``_bucket``)
        on_cuda = self.device.type == "cuda"
        bk.host_out.copy_(bk.out, non_blocking=on_cuda)
        if on_cuda:
            torch.cuda.current_stream(self.device).synchronize()
        return bk.host_out[:len(sl)].clone()

    def _prepare(self, slots, last_tokens) -> tuple[_Bucket, bool]:
        """Check a step batch and queue its ids into the bucket's dev_in; returns (bucket, all greedy)."""
        sl = [int(s) for s in slots]
        tk = [int(x) for x in last_tokens]
        B = len(sl)
        if B != len(tk) or B == 0 or len(set(sl)) != B:
            raise StateError("bad step batch", expected="as many distinct slots as tokens, at least one",
                             got=f"{B} slots ({len(set(sl))} distinct), {len(tk)} tokens",
                             fix="pass one token per slot")
        for s in sl:
            self.slots.check(s)
        n = self.bucket_for(B)
        bk = self._bucket(n)
        greedy = all(self._greedy[s] for s in sl)
        # host side kept small (it is exposed at batch 1: the GPU waits for the next replay):
        # write ids into the pinned staging buffer through numpy, one H2D copy, one D2H copy
        if bk.h2d is not None:  # a decode() call's copy out of host_in may still be queued
            bk.h2d.synchronize()
            bk.h2d = None
        hn = bk.host_np
        hn[0, :B] = sl
        hn[1, :B] = tk
        if B < n:
            hn[0, B:] = self.dummy
            hn[1, B:] = 0
        bk.dev_in.copy_(bk.host_in, non_blocking=True)
        return bk, greedy

    def decode(self, slots, last_tokens, max_tokens, *, stop_tokens=(), lookahead: bool | None = None):
        """Generate up to ``max_tokens`` tokens per slot; yields, per step, a list of B entries:
        the row's new token, or None once the row has finished.

        slots, last_tokens: as ``step`` (the last tokens are fed first). max_tokens: an int or one
        per row (>= 1). A row finishes when it samples a token of ``stop_tokens`` (yielded, not
        fed: its state has read the tokens before it) or after its max_tokens (the last one is
        yielded and not fed, ready to be the next call's last token, as with ``step``). The
        states and sampling counters end exactly as stepping one token at a time would leave them.
        lookahead: queue step n+1 before reading step n (default: on where it is exact and cheap,
        see ``SNAPSHOT_MAX_BATCH``). Closing the generator early: with stop tokens (or without
        lookahead) each row's state has read the tokens yielded so far except the last one, as
        with ``step``; without stop tokens a step queued ahead may already have fed that last one.
        """
        sl = [int(s) for s in (slots.tolist() if isinstance(slots, torch.Tensor) else slots)]
        B = len(sl)
        limits = [max_tokens] * B if isinstance(max_tokens, int) else [int(m) for m in max_tokens]
        if len(limits) != B or any(isinstance(m, bool) or m < 1 for m in limits):
            raise StateError("bad max_tokens", expected=f"an integer >= 1 or {B} of them (one per slot)",
                             got=repr(max_tokens), fix="pass e.g. max_tokens=128")
        stops = {int(t) for t in stop_tokens}
        tok0 = last_tokens.tolist() if isinstance(last_tokens, torch.Tensor) else list(last_tokens)
        with torch.inference_mode():
            bk, greedy = self._prepare(sl, tok0)  # checks the batch (raises before anything runs)
            if self.device.type == "cuda":
                # the staging buffer may not be rewritten until this copy has run (the generator
                # might never be iterated, and a later call would overwrite host_in under it)
                bk.h2d = torch.cuda.Event()
                bk.h2d.record(torch.cuda.current_stream(self.device))
        return self._decode_steps(bk, greedy, sl, limits, stops, lookahead)

    @torch.inference_mode()
    def _decode_steps(self, bk: _Bucket, greedy: bool, sl: list[int], limits: list[int], stops: set,
                      lookahead: bool | None):
        B, n = len(sl), bk.out.shape[0]
        if lookahead is None:
            lookahead = not stops or n <= SNAPSHOT_MAX_BATCH
        snap = bool(stops) and bool(lookahead)
        on_cuda = self.device.type == "cuda"
        if bk.ring is None:
            bk.ring = [(torch.zeros(n, dtype=torch.int64, pin_memory=on_cuda),
                        torch.cuda.Event() if on_cuda else None) for _ in range(2)]
        live = [True] * B            # the row's slot is real in dev_in: the next queued step feeds it
        count = [0] * B              # tokens yielded per row
        rows_in = [None, None]       # per ring entry: which rows took part in that step

        def launch(k: int) -> None:
            self._launch(bk, greedy, snap)
            host, ev = bk.ring[k % 2]
            host.copy_(bk.out, non_blocking=on_cuda)
            if ev is not None:
                ev.record(torch.cuda.current_stream(self.device))
            rows_in[k % 2] = list(live)

        def retire(r: int) -> None:  # no further steps for row r: its row runs on the hidden slot
            live[r] = False
            bk.dev_in[0, r].fill_(self.dummy)

        def roll_back(r: int, k: int) -> None:
            """Undo queued step k for row r (it fed a token the row must not read)."""
            for dst, src in zip(self.pool.tensors(), bk.snap.tensors()):
                dst[:, sl[r]].copy_(src[:, r])
            if not greedy:
                self.counter[sl[r]] -= 1
            rows_in[k % 2][r] = False
            retire(r)

        launch(0)
        k, ahead = 0, False
        try:
            while True:
                if not any(rows_in[k % 2]):  # every row was rolled back out of this step: all done
                    return
                for r in range(B):  # rows whose last token comes from step k take no step after it
                    if live[r] and count[r] + 1 >= limits[r]:
                        retire(r)
                ahead = bool(lookahead) and any(live)
                if ahead:
                    launch(k + 1)
                host, ev = bk.ring[k % 2]
                if ev is not None:
                    ev.synchronize()
                toks = host[:B].tolist()
                out: list = [None] * B
                for r in range(B):
                    if not rows_in[k % 2][r]:
                        continue
                    out[r] = toks[r]
                    count[r] += 1
                    if live[r] and toks[r] in stops:
                        if ahead:
                            roll_back(r, k + 1)
                        else:
                            retire(r)
                yield out
                if not ahead:
                    if not any(live):
                        return
                    launch(k + 1)
                k += 1
                ahead = False
        finally:
            if ahead and snap:  # closed early with a step queued ahead: undo it for its rows
                for r in range(B):
                    if rows_in[(k + 1) % 2][r]:
                        roll_back(r, k + 1)

    def _launch(self, bk: _Bucket, greedy: bool, snap: bool) -> None:
        """Queue one step of bucket ``bk`` (graph replay, or eagerly): reads dev_in, writes bk.out."""
        key = (greedy, snap)
        bk.last = key
        if not self.use_graphs:
            bk.logits[key] = self._step_body(bk, greedy, snap)
            return
        if key not in bk.graphs:
            self._capture(bk, greedy, snap)
        g = bk.graphs[key]
        if g is not None:
            g.replay()
        else:  # sampling could not be captured: graphed forward, eager sampler
            bk.graphs[(True, snap)].replay()
            bk.logits[key] = bk.logits[(True, snap)]
            self._sample(bk, bk.logits[key])

    def last_logits(self, n_rows: int, greedy: bool | None = None) -> torch.Tensor:
        """Logits [n_rows, V] of the last step run with ``n_rows``'s bucket (a view, overwritten next step).
        After ``decode`` stopped rows early, that is the step queued ahead (see ``decode``)."""
        bk = self._buckets[self.bucket_for(n_rows)]
        key = bk.last if greedy is None else (greedy, bk.last[1])
        return bk.logits[key][:n_rows]

    def _bucket(self, n: int) -> _Bucket:
        if n not in self._buckets:
            dev = self.device
            pin = dev.type == "cuda"
            host = torch.zeros(2, n, dtype=torch.int64, pin_memory=pin)
            dev_in = torch.zeros(2, n, device=dev, dtype=torch.int64)
            dev_in[0] = self.dummy
            # the sampled tokens land in the input row: a queued next step reads them there
            self._buckets[n] = _Bucket(dev_in=dev_in, out=dev_in[1],
                                       host_in=host, graphs={}, logits={}, host_np=host.numpy(),
                                       host_out=torch.zeros(n, dtype=torch.int64, pin_memory=pin))
        return self._buckets[n]

    def _step_body(self, bk: _Bucket, greedy: bool, snap: bool = False) -> torch.Tensor:
        """Everything the graph holds: [state snapshot,] forward + argmax or sampler, writing bk.out.
        Returns the logits."""
        if snap:
            if bk.snap is None:
                n = bk.out.shape[0]
                bk.snap = State.zeros(self.cfg, n, device=self.device, dtype=self.pool.dtype)
            for src, dst in zip(self.pool.tensors(), bk.snap.tensors()):
                torch.index_select(src, 1, bk.dev_in[0], out=dst)
        logits = self.model.forward(bk.dev_in[1].unsqueeze(1), self.pool, slots=bk.dev_in[0])  # [n, V]
        if greedy:
            self._argmax(logits, bk.out)
        else:
            self._sample(bk, logits)
        return logits

    def _sample(self, bk: _Bucket, logits: torch.Tensor) -> None:
        """Per-row bans, filters and counter-based noise; writes bk.out, advances the rows' counters."""
        s = bk.dev_in[0]
        allowed = logits.masked_fill(self.ban[s], float("-inf"))
        logp = filtered_logprobs(allowed, temperature=self.temperature[s], top_p=self.top_p[s],
                                 top_k=self.top_k[s], min_p=self.min_p[s])
        noise = counter_noise(self.seed[s], self.counter[s], self._token_hash)
        self._argmax(logp - noise.log(), bk.out)
        self.counter.index_add_(0, s, torch.ones_like(s))

    def _capture(self, bk: _Bucket, greedy: bool, snap: bool = False) -> None:
        """Warm up on a side stream (compiles kernels, sizes cuBLAS workspaces), then capture.

        Warm-up and capture run with every row on the hidden slot, so no real state moves.
        If the sampler cannot be captured (an op that syncs in some torch build), sampling
        batches replay the greedy graph and run the sampler eagerly (logged once)."""
        key = (greedy, snap)
        if not greedy and (True, snap) not in bk.graphs:
            self._capture(bk, True, snap)
        real = bk.dev_in.clone()
        bk.dev_in[0].fill_(self.dummy)
        try:
            side = torch.cuda.Stream(device=self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    self._step_body(bk, greedy, snap)
            torch.cuda.current_stream(self.device).wait_stream(side)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=self._mempool):
                bk.logits[key] = self._step_body(bk, greedy, snap)
            bk.graphs[key] = g
        except RuntimeError as e:
            if greedy:
                raise
            log.warning("sampling step could not be captured (%s): sampler runs eagerly", e)
            bk.graphs[key] = None
        finally:
            bk.dev_in.copy_(real)
        log.info("captured decode graph: bucket %d, %s%s", bk.out.shape[0], "greedy" if greedy else "sampling",
                 " + state snapshot" if snap else "")
