"""Token sampling: batched, on the logits' device, with no host round trip per token.

Two samplers live here:

* :func:`sample` is the engine's: B rows at once, per-row settings as tensors, no
  ``.item()``/``.cpu()``/``torch.multinomial`` (so it can sit in a CUDA graph). It draws
  with the exponential race ``argmax(w / E)``, ``E ~ Exponential(1)`` iid, written in log
  space as ``argmax(log w - log E)``, which picks token i with probability ``w_i / sum(w)``.
  Every call draws exactly B*V exponentials in vocabulary order, whatever the settings, so
  a generator's stream does not depend on which filters a row uses.
* :func:`sample_logits_official` is BlinkDL's ``PIPELINE.sample_logits`` (rwkv 0.8.32) for
  one row, quirks included, for exact drop-in behaviour.

Filter semantics (both samplers follow the official order): top-p, top-k and min-p are
computed on ``softmax(logits)`` at temperature 1, then the survivors are raised to the
power ``1/temperature``. (llama.cpp's default chain also puts temperature last.)

* top-p: sort probabilities descending, find the first position j whose cumulative sum
  reaches ``top_p``, keep every token with ``p >= p_sorted[j]`` (ties with the cutoff stay).
  ``top_p = 0`` keeps only the most probable token(s), which is how the official code
  spells greedy. ``top_p >= 1`` is off in :func:`sample`; see the quirk below.
* top-k: keep the k most probable tokens; ties broken by lower token id. 0 (or >= V) is off.
* min-p: keep tokens with ``p >= min_p * max(p)``. 0 is off. (Not in the official package.)
* temperature 0: greedy. :func:`sample` takes ``argmax`` (lowest id among exact ties).

Official quirk, kept only in :func:`sample_logits_official`: on CPU the official cutoff
uses a float32 numpy cumsum, which for a 65536-token vocabulary practically never reaches
1.0, so ``top_p=1.0`` collapses to greedy there. :func:`sample` treats ``top_p >= 1`` as off.

Penalties follow ``PIPELINE.generate``: before sampling, banned ids get ``-inf`` and every
token seen so far gets ``logit -= presence + occurrence * frequency``; after sampling (and
only if the token was not a stop token) all occurrences decay (``*= decay``) and then the
sampled token's occurrence grows by its weight, which is 0 for tokens whose text is a
substring of ``' \\t0123456789'`` (a space, a digit, ...) and 1 otherwise. Such tokens still
count as *seen*, so they still pay the presence penalty: pass a ``seen`` mask for exactness.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from .errors import SamplingError

# A sampling setting: one Python number for every row, or a tensor [B] (one per row).
Setting = float | int | torch.Tensor
Generators = torch.Generator | Sequence[torch.Generator | None] | None

_ZERO_WEIGHT_TEXT = " \t0123456789"


def _real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _bad(name: str, expected: str, got, fix: str) -> SamplingError:
    return SamplingError(f"bad sampling parameter {name}", expected=expected, got=repr(got), fix=fix)


@dataclass(frozen=True)
class SamplingParams:
    """One request's sampling settings. Defaults are the official ``PIPELINE_ARGS`` ones.

    temperature: >= 0, 0 = greedy. top_p: in [0, 1]; 1 = off, 0 = greedy (official meaning).
    top_k: >= 0, 0 = off. min_p: in [0, 1], 0 = off. presence_penalty / frequency_penalty:
    any finite number (official ``alpha_presence`` / ``alpha_frequency``; negative rewards
    repetition). penalty_decay: in [0, 1] (official ``alpha_decay``). token_ban: ids never
    sampled. seed: None (unseeded) or an int in [0, 2**64).

    Construction checks everything that does not need the vocabulary size;
    :meth:`validate` checks the rest. Both raise :class:`SamplingError`.
    """

    temperature: float = 1.0
    top_p: float = 0.85
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.2
    frequency_penalty: float = 0.2
    penalty_decay: float = 0.996
    token_ban: tuple[int, ...] = ()
    seed: int | None = None

    def __post_init__(self):
        ban = self.token_ban
        if isinstance(ban, (torch.Tensor, np.ndarray)):
            ban = ban.tolist()
        if isinstance(ban, (list, range, set, frozenset)):
            object.__setattr__(self, "token_ban", tuple(ban))
        self.validate(None)

    @classmethod
    def from_pipeline_args(cls, args, *, min_p: float = 0.0, seed: int | None = None) -> "SamplingParams":
        """From an official-style ``PIPELINE_ARGS`` (``token_stop`` / ``chunk_len`` are not sampling)."""
        return cls(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, min_p=min_p,
                   presence_penalty=args.alpha_presence, frequency_penalty=args.alpha_frequency,
                   penalty_decay=args.alpha_decay, token_ban=tuple(args.token_ban), seed=seed)

    def validate(self, vocab_size: int | None) -> "SamplingParams":
        """Raise SamplingError for the first bad value; return self. ``vocab_size=None`` skips id checks."""
        t = self.temperature
        if not _real(t) or not math.isfinite(t) or t < 0:
            raise _bad("temperature", "a finite number >= 0 (0 means greedy)", t, "use e.g. temperature=1.0, or 0 for greedy")
        p = self.top_p
        if not _real(p) or not 0 <= p <= 1:  # NaN fails the comparison too
            raise _bad("top_p", "a number in [0, 1] (1 = off, 0 = greedy)", p, "use e.g. top_p=0.85, or 1.0 to disable")
        k = self.top_k
        if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k < 0:
            raise _bad("top_k", "an integer >= 0 (0 = off)", k, "use e.g. top_k=0 to disable or top_k=50")
        m = self.min_p
        if not _real(m) or not 0 <= m <= 1:
            raise _bad("min_p", "a number in [0, 1] (0 = off)", m, "use e.g. min_p=0.05, or 0 to disable")
        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            if not _real(v) or not math.isfinite(v):
                raise _bad(name, "a finite number (0 = off)", v, f"use e.g. {name}=0.2, or 0 to disable")
        d = self.penalty_decay
        if not _real(d) or not 0 <= d <= 1:
            raise _bad("penalty_decay", "a number in [0, 1] (1 = never forget)", d, "use e.g. penalty_decay=0.996")
        ban = self.token_ban
        if not isinstance(ban, tuple) or not all(isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in ban):
            raise _bad("token_ban", "a sequence of integer token ids", ban, "pass e.g. token_ban=[0]")
        if vocab_size is not None:
            if not isinstance(vocab_size, numbers.Integral) or vocab_size <= 0:
                raise _bad("vocab_size", "a positive integer", vocab_size, "pass the model's vocabulary size")
            outside = [i for i in ban if not 0 <= i < vocab_size]
            if outside:
                raise _bad("token_ban", f"token ids in [0, {vocab_size})", outside[:5], "remove ids outside the vocabulary")
            if len(set(ban)) >= vocab_size:
                raise _bad("token_ban", "at least one token left unbanned", f"all {vocab_size} ids banned", "ban fewer tokens")
        s = self.seed
        if s is not None and (not isinstance(s, numbers.Integral) or isinstance(s, bool) or not 0 <= s < 2**64):
            raise _bad("seed", "None or an integer in [0, 2**64)", s, "use e.g. seed=1234, or None for a random draw")
        return self


@dataclass(frozen=True)
class BatchedParams:
    """Per-row settings of a batch, as tensors on one device (all [B]; ``ban`` [B, V] bool or None)."""

    temperature: torch.Tensor  # float32
    top_p: torch.Tensor        # float32
    top_k: torch.Tensor        # int64
    min_p: torch.Tensor        # float32
    presence: torch.Tensor     # float32
    frequency: torch.Tensor    # float32
    decay: torch.Tensor        # float32
    ban: torch.Tensor | None

    @classmethod
    def stack(cls, params: Sequence[SamplingParams], vocab_size: int,
              device: torch.device | str | None = None) -> "BatchedParams":
        """Validate each request and build the tensors (one host-to-device copy per field)."""
        for p in params:
            p.validate(vocab_size)

        def col(name, dtype=torch.float32):
            return torch.tensor([getattr(p, name) for p in params], dtype=dtype, device=device)

        ban = None
        if any(p.token_ban for p in params):
            rows = [b for b, p in enumerate(params) for _ in p.token_ban]
            ids = [i for p in params for i in p.token_ban]
            ban = torch.zeros(len(params), vocab_size, dtype=torch.bool, device=device)
            ban[torch.tensor(rows, device=device), torch.tensor(ids, device=device)] = True
        return cls(col("temperature"), col("top_p"), col("top_k", torch.int64), col("min_p"),
                   col("presence_penalty"), col("frequency_penalty"), col("penalty_decay"), ban)


def ban_mask(token_ids: Iterable[int], vocab_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Bool mask [V] that is True at the given ids (validate them first via SamplingParams)."""
    mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    ids = list(token_ids)
    if ids:
        mask[torch.tensor(ids, dtype=torch.int64, device=device)] = True
    return mask


def apply_token_ban(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """logits [B, V] (not mutated), mask [V] or [B, V] bool -> new logits with -inf where banned."""
    return logits.masked_fill(mask, float("-inf"))


def occurrence_weights(decode: Callable[[list[int]], str], vocab_size: int) -> torch.Tensor:
    """Per-token occurrence increment [V] float32 under the official rule.

    ``PIPELINE.generate`` adds 0 for a token whose text ``t`` satisfies
    ``t in ' \\t0123456789'``: a *substring* test, so ' ', '7', '123' and '' weigh 0 while
    '21' or '  ' weigh 1. ``decode`` is the tokenizer's ``decode(list_of_ids) -> str``.
    """
    w = torch.ones(vocab_size, dtype=torch.float32)
    for i in range(vocab_size):
        if decode([i]) in _ZERO_WEIGHT_TEXT:
            w[i] = 0.0
    return w


def _col(x: Setting, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor | float:
    """A tensor setting [B] -> [B, 1] on like's device; a Python number is returned as is."""
    if isinstance(x, torch.Tensor):
        return x.to(device=like.device, dtype=dtype or like.dtype).reshape(-1, 1)
    return x


def apply_penalties(logits: torch.Tensor, occurrence: torch.Tensor, presence: Setting, frequency: Setting,
                    *, seen: torch.Tensor | None = None) -> torch.Tensor:
    """Official repetition penalty: ``logit -= presence + occurrence * frequency`` on seen tokens.

    logits [B, V] any float dtype (not mutated); occurrence [B, V] float32; presence and
    frequency a number or [B]; seen [B, V] bool, the tokens counted so far (default:
    ``occurrence != 0``, which misses official zero-weight tokens and decay 0).
    Returns new logits [B, V] float32.
    """
    x = logits.float()
    pen = _col(presence, x) + occurrence * _col(frequency, x)
    if seen is None:
        seen = occurrence != 0
    return torch.where(seen, x - pen, x)


def update_occurrence(occurrence: torch.Tensor, tokens: torch.Tensor, decay: Setting, *,
                      weights: torch.Tensor | None = None, seen: torch.Tensor | None = None,
                      active: torch.Tensor | None = None) -> None:
    """Record sampled tokens, in place, in the official order: decay everything, then add.

    occurrence [B, V] float32 (mutated); tokens [B] int64; decay a number or [B];
    weights [V] float32 per-token increment (default 1, see :func:`occurrence_weights`);
    seen [B, V] bool (mutated: set at the tokens); active [B] bool, rows to update
    (default all; the official loop does not count a stop token, so leave such rows out).
    """
    B = occurrence.shape[0]
    tok = tokens.reshape(B, 1).to(device=occurrence.device, dtype=torch.int64)
    d = _col(decay, occurrence)
    add = weights.to(occurrence.device)[tok] if weights is not None else torch.ones_like(tok, dtype=occurrence.dtype)
    if active is not None:
        act = active.reshape(B, 1).to(occurrence.device)
        d = torch.where(act, d, torch.ones_like(d) if isinstance(d, torch.Tensor) else 1.0)
        add = torch.where(act, add, 0.0)
    occurrence.mul_(d)
    occurrence.scatter_add_(1, tok, add.to(occurrence.dtype))
    if seen is not None:
        mark = torch.ones_like(tok, dtype=torch.bool) if active is None else act
        seen.scatter_(1, tok, mark | seen.gather(1, tok))


def _off(x: Setting, is_off: Callable[[float], bool]) -> bool:
    return not isinstance(x, torch.Tensor) and is_off(x)


def _log_weights(logits: torch.Tensor, temperature: Setting, top_p: Setting, top_k: Setting,
                 min_p: Setting) -> torch.Tensor:
    """logits [B, V] -> unnormalised log sampling weights [B, V] float32, -inf where removed."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    B, V = logp.shape
    p_off = _off(top_p, lambda v: v >= 1)
    k_off = _off(top_k, lambda v: v <= 0 or v >= V)
    m_off = _off(min_p, lambda v: v <= 0)
    t_pos = _off(temperature, lambda v: v > 0)
    if p_off and k_off and m_off and t_pos:
        # Nothing to filter: skip the sort (a static, host-side decision: graph-safe).
        return logp / temperature
    sorted_logp, order = torch.sort(logp, dim=-1, descending=True, stable=True)
    sorted_p = sorted_logp.exp()
    # The kept set of each filter is a prefix of the sorted order; keep the shortest.
    n_keep = torch.full((B, 1), V, dtype=torch.int64, device=logp.device)
    if not p_off:
        tp = _col(top_p, sorted_p)
        j = (sorted_p.cumsum(-1) < tp).sum(-1, keepdim=True).clamp_(max=V - 1)
        n_p = (sorted_p >= sorted_p.gather(-1, j)).sum(-1, keepdim=True)
        n_keep = torch.minimum(n_keep, torch.where(torch.as_tensor(tp >= 1, device=logp.device), V, n_p))
    if not k_off:
        k = torch.as_tensor(_col(top_k, sorted_p, torch.int64), device=logp.device)
        n_keep = torch.minimum(n_keep, torch.where((k > 0) & (k < V), k, V))
    if not m_off:
        n_m = (sorted_p >= _col(min_p, sorted_p) * sorted_p[:, :1]).sum(-1, keepdim=True)
        n_keep = torch.minimum(n_keep, n_m)
    if t_pos:
        scaled = sorted_logp / temperature
    else:
        t = torch.as_tensor(_col(temperature, sorted_p), dtype=torch.float32, device=logp.device)
        n_keep = torch.where(t == 0, 1, n_keep)
        scaled = sorted_logp / torch.where(t == 0, 1.0, t)
    pos = torch.arange(V, device=logp.device)
    sorted_w = scaled.masked_fill(pos >= n_keep, float("-inf"))
    return torch.empty_like(sorted_w).scatter_(-1, order, sorted_w)


def filtered_logprobs(logits: torch.Tensor, *, temperature: Setting, top_p: Setting, top_k: Setting,
                      min_p: Setting) -> torch.Tensor:
    """The distribution :func:`sample` draws from: log-probabilities [B, V] float32, -inf where removed.

    logits [B, V] any float dtype (not mutated); settings as in :func:`sample`.
    """
    w = _log_weights(logits, temperature, top_p, top_k, min_p)
    return w - torch.logsumexp(w, dim=-1, keepdim=True)


def _exponential(shape: tuple[int, int], generator: Generators, device: torch.device) -> torch.Tensor:
    noise = torch.empty(shape, dtype=torch.float32, device=device)
    if generator is None or isinstance(generator, torch.Generator):
        noise.exponential_(generator=generator)
    else:
        gens = list(generator)
        if len(gens) != shape[0]:
            raise SamplingError("wrong number of generators", expected=f"one per row ({shape[0]})",
                                got=str(len(gens)), fix="pass one torch.Generator (or None) per batch row")
        for b, g in enumerate(gens):
            noise[b].exponential_(generator=g)
    # An exact 0 would give log 0 = -inf and let a removed token win; floor it.
    return noise.clamp_min_(torch.finfo(torch.float32).tiny)


def sample(logits: torch.Tensor, *, temperature: Setting, top_p: Setting, top_k: Setting, min_p: Setting,
           generator: Generators = None) -> torch.Tensor:
    """Draw one token per row, on the logits' device, without a host sync.

    logits [B, V] any float dtype (not mutated). Each setting is a Python number (all rows)
    or a tensor [B] (per row); meanings in the module docstring; values are not checked
    here (checking would sync): validate them with :class:`SamplingParams`. ``generator``:
    one torch.Generator on the logits' device, or one per row (per-request seeds; B small
    launches, still no sync), or None for the global one. Returns int64 [B].
    """
    w = _log_weights(logits, temperature, top_p, top_k, min_p)
    noise = _exponential(tuple(w.shape), generator, w.device)
    return (w - noise.log()).argmax(dim=-1)


def official_filtered_probs(logits: torch.Tensor, temperature: float = 1.0, top_p: float = 0.85,
                            top_k: int = 0) -> torch.Tensor:
    """The distribution official ``PIPELINE.sample_logits`` draws from: probs [V] float32.

    logits [V] any float dtype (not mutated). Syncs with the host once (the official
    cutoff is computed on the host: numpy float32 cumsum on CPU, torch cumsum elsewhere,
    exactly as the official code does, so its ``top_p=1.0`` greedy collapse is reproduced).
    Differences: ties at the top-k boundary are broken by lower id (official: by its argsort);
    temperature is applied in log space, so a tiny temperature gives near-greedy instead of
    the official 0/0 failure; a negative temperature raises SamplingError.
    """
    if not _real(temperature) or not math.isfinite(temperature) or temperature < 0:
        raise _bad("temperature", "a finite number >= 0 (0 means greedy)", temperature, "use e.g. temperature=1.0")
    if temperature == 0:  # the official spelling of greedy: keep only the top probability
        temperature, top_p = 1.0, 0.0
    logp = torch.log_softmax(logits.float().reshape(-1), dim=-1)
    probs = logp.exp()
    sorted_p, order = torch.sort(probs, descending=True, stable=True)
    if probs.device.type == "cpu":
        cum = np.cumsum(sorted_p.numpy())
    else:
        cum = torch.cumsum(sorted_p, dim=-1).cpu().numpy()
    cutoff = sorted_p[int(np.argmax(cum >= top_p))]
    keep = probs >= cutoff
    top_k = int(top_k)
    if 0 < top_k < probs.numel():
        keep[order[top_k:]] = False
    w = torch.where(keep, logp / temperature, float("-inf"))
    return torch.softmax(w, dim=-1)


def sample_logits_official(logits: torch.Tensor, temperature: float = 1.0, top_p: float = 0.85, top_k: int = 0,
                           *, generator: torch.Generator | None = None) -> int:
    """Official ``PIPELINE.sample_logits`` semantics for one row (see :func:`official_filtered_probs`).

    logits [V] (not mutated). Draws on the logits' device with torch (seedable through
    ``generator``) instead of numpy / torch.multinomial; returns the token id.
    """
    logw = official_filtered_probs(logits, temperature, top_p, top_k).log()
    noise = _exponential((1, logw.numel()), generator, logw.device)[0]
    return int((logw - noise.log()).argmax())


class StopChecker:
    """Stop tokens and stop strings over streamed text; a stop string is never emitted.

    ``feed(piece, token)`` returns ``(emit, stopped)``: text safe to show now, and whether
    generation must stop. Text that could be the start of a stop string is held back until
    it is ruled out, so a stop string split across tokens is still caught. On a stop
    string, the text before it is emitted and the rest dropped; on a stop token, the held
    text is emitted and the token's own text dropped (as the official loop breaks before
    emitting it). Call :meth:`flush` when generation ends for another reason.
    ``reason`` is the matched string or token id once stopped.
    """

    def __init__(self, stop_strings: Iterable[str] = (), stop_tokens: Iterable[int] = ()):
        self.stop_strings = tuple(stop_strings)
        for s in self.stop_strings:
            if not isinstance(s, str) or not s:
                raise _bad("stop", "non-empty strings", s, "remove empty stop strings")
        self.stop_tokens = frozenset(int(t) for t in stop_tokens)
        self._held = ""
        self.stopped = False
        self.reason: str | int | None = None

    def feed(self, text_piece: str, token: int | None = None) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        if token is not None and token in self.stop_tokens:
            self.stopped, self.reason = True, token
            return self.flush(), True
        buf = self._held + text_piece
        hits = [(i, s) for s in self.stop_strings if (i := buf.find(s)) >= 0]
        if hits:
            i, s = min(hits, key=lambda h: h[0])
            self._held, self.stopped, self.reason = "", True, s
            return buf[:i], True
        hold = 0
        for n in range(min(len(buf), max((len(s) for s in self.stop_strings), default=1) - 1), 0, -1):
            if any(s.startswith(buf[-n:]) for s in self.stop_strings):
                hold = n
                break
        self._held = buf[len(buf) - hold:] if hold else ""
        return buf[:len(buf) - hold], False

    def flush(self) -> str:
        """Release held-back text (generation ended without completing a stop string)."""
        out, self._held = self._held, ""
        return out
