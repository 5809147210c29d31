"""Streaming text generation on one sequence: prompt -> text pieces, with the state kept for the next turn."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Iterator

import torch

from ..sampling import SamplingParams, apply_penalties, occurrence_weights, sample, StopChecker, update_occurrence


@dataclass
class Generation:
    """What one call of :func:`stream` produced; filled in while it runs."""

    tokens: list[int] = field(default_factory=list)
    text: str = ""
    prompt_tokens: int = 0
    finish_reason: str | None = None  # "length", "stop" (string or token) or "end" (end-of-text token)
    state: object = None  # the State that was read and updated (batch 1), for the next turn


class Generator:
    """Generates from a Model with its tokenizer; penalties, bans, stops and seeds as in ``SamplingParams``.

    The occurrence table (for repetition penalties) lives on the model's device and can
    be kept across calls (``keep_occurrence=True``), like a chat that remembers its words.
    """

    def __init__(self, model, *, chunk_len: int = 256):
        from ..errors import SamplingError
        from ..model import Model

        if not isinstance(chunk_len, int) or isinstance(chunk_len, bool) or chunk_len < 1:
            raise SamplingError("bad chunk_len", expected="an integer >= 1", got=repr(chunk_len),
                                fix="use e.g. chunk_len=256")

        self.model = model
        # always the native forward (logits [B, V]), also for the drop-in RWKV class whose forward drops B
        self._forward = functools.partial(Model.forward, model)
        self.tok = model.tokenizer
        self.chunk_len = chunk_len
        V = model.config.vocab_size
        self.occurrence = torch.zeros(1, V, device=model.device)
        self.seen = torch.zeros(1, V, dtype=torch.bool, device=model.device)
        self._weights = None

    def _occ_weights(self) -> torch.Tensor:
        if self._weights is None:
            self._weights = occurrence_weights(self.tok.decode, self.model.config.vocab_size).to(self.model.device)
        return self._weights

    def reset_penalties(self) -> None:
        self.occurrence.zero_()
        self.seen.zero_()

    def prefill(self, tokens: list[int], state):
        """Feed tokens in chunks of chunk_len; returns (last logits [V], state)."""
        out = None
        for i in range(0, len(tokens), self.chunk_len):
            out, state = self._forward(tokens[i:i + self.chunk_len], state)
        return out[0], state

    def stream(self, prompt: str | list[int], *, state=None, max_tokens: int = 200,
               params: SamplingParams | None = None, stop: tuple[str, ...] = (), stop_tokens: tuple[int, ...] = (),
               result: Generation | None = None, keep_occurrence: bool = False) -> Iterator[str]:
        """Yield text as it is produced (UTF-8 safe). ``state`` (batch 1) is updated in place.

        When a stop string ends generation, the token that completed it has been fed, so the
        state has read exactly the text produced; an end-of-text or stop token is not fed
        (as the official loop). ``result`` (optional) receives tokens (generated and fed, stop
        string tokens included), text (what was yielded), finish_reason and the state.
        Bad settings, a bad max_tokens and bad prompt ids raise before the state is touched.
        ``prompt`` may be token ids; ``stop_tokens`` end generation without being fed or shown.
        """
        params = (params or SamplingParams()).validate(self.model.config.vocab_size)
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0:
            from ..errors import SamplingError
            raise SamplingError("bad max_tokens", expected="an integer >= 0", got=repr(max_tokens),
                                fix="use e.g. max_tokens=200")
        res = result if result is not None else Generation()
        tokens = self.tok.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not keep_occurrence:
            self.reset_penalties()
        state = self.model.zero_state(1) if state is None else self.model.check_state(state)
        res.prompt_tokens = len(tokens)
        gen = None
        if params.seed is not None:
            gen = torch.Generator(device=self.model.device).manual_seed(params.seed)
        ban = None
        if params.token_ban:
            ban = torch.zeros(self.model.config.vocab_size, dtype=torch.bool, device=self.model.device)
            ban[list(params.token_ban)] = True
        eot = getattr(self.tok, "eot_id", None)
        stops = StopChecker(stop, stop_tokens)
        detok = self.tok.incremental_decoder()
        res.finish_reason = "length"
        res.state = state
        if not tokens:
            from ..errors import TokenError
            raise TokenError("empty prompt", expected="at least one token", got="''", fix="give a prompt")
        # check every id before the first chunk is read, so a bad id late in a long prompt leaves the state as it was
        self.model.tokens_tensor(tokens)
        # the prompt is read even when max_tokens is 0, so a state can be primed and saved
        logits, state = self.prefill(tokens, state)
        for i in range(max_tokens):
            x = apply_penalties(logits[None], self.occurrence, params.presence_penalty, params.frequency_penalty,
                                seen=self.seen)
            if ban is not None:
                x = x.masked_fill(ban, float("-inf"))
            tok_t = sample(x, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k,
                           min_p=params.min_p, generator=gen)
            token = int(tok_t[0])
            if eot is not None and token == eot and eot not in stop_tokens:
                emit = stops.feed(detok.flush())[0] + stops.flush()
                res.finish_reason = "end"
                if emit:
                    res.text += emit
                    yield emit
                return
            if token not in stop_tokens:  # the official loop breaks on a stop token before counting it
                update_occurrence(self.occurrence, tok_t, params.penalty_decay, weights=self._occ_weights(),
                                  seen=self.seen)
            piece = detok.push(token) if token not in stop_tokens else ""
            emit, stopped = stops.feed(piece, token)
            if emit:
                res.text += emit
                yield emit
            if stopped:
                res.finish_reason = "stop"
                if token not in stop_tokens:
                    res.tokens.append(token)
                    self._forward([token], state)
                return
            res.tokens.append(token)
            if i + 1 < max_tokens:
                logits, state = self.prefill([token], state)
            else:
                # leave the state having read everything produced, ready for a continuation
                self._forward([token], state)
        tail = stops.feed(detok.flush())[0] + stops.flush()
        if tail:
            res.text += tail
            yield tail
