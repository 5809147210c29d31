"""The native API: ``rwkvrt.load(path, strategy)`` -> Model, with checked inputs and a State object."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch

from .errors import StateError, TokenError
from .models.config import RWKV7Config
from .models.rwkv7 import RWKV7
from .state import State
from .strategy import Strategy, parse_strategy

log = logging.getLogger("rwkvrt")


class Model:
    """An RWKV-7 model on one device. ``forward`` checks its inputs before touching the state."""

    def __init__(self, cfg: RWKV7Config, sd: dict, strategy: Strategy, *, path: Path | None = None,
                 backend: str = "auto"):
        self.config, self.strategy, self.path = cfg, strategy, path
        self.device, self.dtype = torch.device(strategy.device), strategy.dtype
        if self.device.type == "cuda" and backend != "reference":
            # the fused GPU path: concatenated weights, Triton kernels, fp32 residual stream
            from .models.rwkv7_fast import RWKV7Fast
            self.net = RWKV7Fast(cfg, sd, device=self.device, dtype=self.dtype, backend=backend)
        else:
            self.net = RWKV7(cfg, sd, device=self.device, dtype=self.dtype, backend=backend)
        self._tokenizer = None

    @property
    def tokenizer(self):
        """The tokenizer named in the model's config (World vocab for 65536, bytes for 256)."""
        if self._tokenizer is None:
            from .tokenizer import get_tokenizer
            from .errors import RWKVRTError

            if self.config.tokenizer is None:
                raise RWKVRTError("the model's tokenizer is unknown", expected="vocab size 65536 (World) or 256 (bytes)",
                                  got=f"vocab size {self.config.vocab_size}",
                                  fix="pass token ids directly, or convert with `rwkvrt convert --tokenizer NAME`")
            self._tokenizer = get_tokenizer(self.config.tokenizer)
        return self._tokenizer

    def zero_state(self, batch: int = 1) -> State:
        return State.zeros(self.config, batch, device=self.device, dtype=self.dtype)

    def check_state(self, state) -> State:
        """Accept a State (or the official flat list) for this model; raise StateError otherwise."""
        cfg = self.config
        if isinstance(state, (list, tuple)):
            return State.from_list(list(state), cfg, device=self.device, dtype=self.dtype)
        if not isinstance(state, State):
            raise StateError("unsupported state object", expected="None, a rwkvrt.State or the official list of tensors",
                             got=type(state).__name__, fix="pass the state returned by forward")
        want = (cfg.n_layer, cfg.n_head, cfg.head_size, cfg.head_size)
        got = (state.wkv.shape[0], *state.wkv.shape[2:])
        if tuple(got) != want or state.att_x.shape[2] != cfg.n_embd:
            raise StateError("state does not fit this model", expected=f"layers, heads, head size {want}, width {cfg.n_embd}",
                             got=f"{tuple(got)}, width {state.att_x.shape[2]}", fix="use a state made by this model")
        if state.device != self.device or state.dtype != self.dtype:
            moved = state.to(self.device, self.dtype)
            state.att_x, state.wkv, state.ffn_x = moved.att_x, moved.wkv, moved.ffn_x
        if not (state.wkv.is_contiguous() and state.att_x.is_contiguous() and state.ffn_x.is_contiguous()):
            state.att_x, state.wkv, state.ffn_x = (t.contiguous() for t in state.tensors())
        return state

    def tokens_tensor(self, tokens) -> torch.Tensor:
        """int | list[int] | list[list[int]] | Tensor -> LongTensor [B, T] on the device, range-checked."""
        V = self.config.vocab_size
        if not isinstance(tokens, torch.Tensor) and hasattr(tokens, "tolist") and not isinstance(tokens, (list, tuple)):
            tokens = tokens.tolist()  # numpy arrays and the like
        if isinstance(tokens, torch.Tensor):
            if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
                raise TokenError("token ids must be integers", expected="an integer tensor", got=f"a {tokens.dtype} tensor",
                                 fix="encode text with the model's tokenizer")
            t = tokens.to(torch.long)
        else:
            if isinstance(tokens, int):
                tokens = [tokens]
            if not isinstance(tokens, Sequence) or len(tokens) == 0:
                raise TokenError("no tokens given", expected="an int, a non-empty list of ints or a [B, T] tensor",
                                 got=repr(tokens)[:60], fix="encode some text first")
            nested = isinstance(tokens[0], Sequence)
            rows = tokens if nested else [tokens]
            if len({len(r) for r in rows}) != 1 or len(rows[0]) == 0:
                raise TokenError("token rows of unequal or zero length", expected="B rows of the same length T >= 1",
                                 got=str([len(r) for r in rows][:8]), fix="feed sequences separately or pad them")
            for r in rows:
                for x in r:
                    if isinstance(x, bool) or not isinstance(x, int) and not (hasattr(x, "__index__")):
                        raise TokenError("token ids must be integers", expected="int", got=repr(x)[:40],
                                         fix="encode text with the model's tokenizer")
            t = torch.tensor(rows, dtype=torch.long)
        if t.dim() == 1:
            t = t.unsqueeze(0)
        if t.dim() != 2 or t.shape[1] == 0:
            raise TokenError("bad token tensor shape", expected="[B, T] with T >= 1", got=str(tuple(t.shape)),
                             fix="reshape the tokens")
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= V:
            bad = lo if lo < 0 else hi
            raise TokenError("token id outside the vocabulary", expected=f"0 <= id < {V}", got=str(bad),
                             fix="use the model's own tokenizer")
        return t.to(self.device)

    @torch.no_grad()
    def forward(self, tokens, state: State | None = None, *, full_output: bool = False):
        """tokens: see ``tokens_tensor``. Returns (logits, state): logits [B, T, V] or [B, V] (activation dtype).

        ``state`` (batch B) is updated in place and returned; None starts from zeros.
        """
        t = self.tokens_tensor(tokens)
        state = self.zero_state(t.shape[0]) if state is None else self.check_state(state)
        if state.batch_size != t.shape[0]:
            raise StateError("state batch size does not match the tokens", expected=str(t.shape[0]),
                             got=str(state.batch_size), fix="use a state with one row per sequence")
        return self.net.forward(t, state, full_output=full_output), state

    def __repr__(self) -> str:
        c = self.config
        return (f"Model(L={c.n_layer}, C={c.n_embd}, V={c.vocab_size}, params={c.n_params() / 1e6:.1f}M, "
                f"{self.strategy.device} {str(self.dtype).replace('torch.', '')})")


def load(path, strategy: str | Strategy = "cpu fp32", *, backend: str = "auto") -> Model:
    """Load an official RWKV-7 .pth (with or without the suffix) or an rwkvrt model directory."""
    from .weights import load_state_dict

    st = parse_strategy(strategy) if isinstance(strategy, str) else strategy
    sd, cfg, p = load_state_dict(path)
    log.info("loaded %s: %s", p, cfg)
    return Model(cfg, sd, st, path=p, backend=backend)
