"""Drop-in replacement for the official ``rwkv`` package's API (``rwkv.model.RWKV``, ``rwkv.utils.PIPELINE``).

Switching is one import: ``from rwkvrt import RWKV, PIPELINE, PIPELINE_ARGS``. The
meaning of every argument is the official one; where rwkvrt differs on purpose the
README's table says so (temperature 0 is greedy; the state is a ``rwkvrt.State``
that also indexes like the official flat list; bad inputs raise clear errors).
"""
from __future__ import annotations

import torch

from .model import Model
from .strategy import parse_strategy


class RWKV(Model):
    """``RWKV(model=path, strategy="cuda fp16")``; path with or without '.pth'."""

    def __init__(self, model, strategy: str = "cpu fp32", *, backend: str = "auto", verbose: bool = False):
        from .weights import load_state_dict

        st = parse_strategy(strategy)
        sd, cfg, p = load_state_dict(model)
        super().__init__(cfg, sd, st, path=p, backend=backend)
        self.n_layer, self.n_embd = cfg.n_layer, cfg.n_embd
        self.n_head, self.head_size = cfg.n_head, cfg.head_size

    def generate_zero_state(self):
        return self.zero_state(1)

    @torch.no_grad()
    def forward(self, tokens, state=None, full_output: bool = False):
        """tokens: an int or a list of ints (one sequence). Returns (logits [V] or [T, V], state)."""
        t = self.tokens_tensor(tokens)
        if t.shape[0] != 1:
            from .errors import TokenError

            raise TokenError("RWKV.forward takes one sequence", expected="an int or a list of ints",
                             got=f"{t.shape[0]} rows", fix="use rwkvrt.load(...).forward for batches")
        out, state = Model.forward.__wrapped__(self, t, state, full_output=full_output)
        return out[0], state


class PIPELINE_ARGS:
    """Sampling settings with the official names and defaults."""

    def __init__(self, temperature=1.0, top_p=0.85, top_k=0, alpha_frequency=0.2, alpha_presence=0.2,
                 alpha_decay=0.996, token_ban=(), token_stop=(), chunk_len=256):
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.alpha_frequency, self.alpha_presence, self.alpha_decay = alpha_frequency, alpha_presence, alpha_decay
        self.token_ban, self.token_stop, self.chunk_len = list(token_ban), list(token_stop), chunk_len


class PIPELINE:
    """``PIPELINE(model, "rwkv_vocab_v20230424")``: encode / decode / sample_logits / generate."""

    def __init__(self, model, WORD_NAME: str = "rwkv_vocab_v20230424"):
        from .tokenizer import get_tokenizer

        self.model = model
        self.tokenizer = get_tokenizer(WORD_NAME)

    @staticmethod
    def refine_context(context: str) -> str:
        lines = [c.strip().strip("\u3000").strip("\r") for c in context.strip().split("\n")]
        context = "\n" + "\n".join(c for c in lines if c != "").strip()
        return context if context != "" else "\n"

    def encode(self, x: str) -> list[int]:
        return self.tokenizer.encode(x)

    def decode(self, x) -> str:
        return self.tokenizer.decode(x)

    def sample_logits(self, logits, temperature=1.0, top_p=0.85, top_k=0) -> int:
        from .sampling import sample_logits_official

        return sample_logits_official(logits, temperature=temperature, top_p=top_p, top_k=top_k)

    def generate(self, ctx: str, token_count: int = 100, args: PIPELINE_ARGS | None = None, callback=None, state=None):
        """The official loop: penalties with decay, banned and stop tokens, chunked prompt, UTF-8-safe callback."""
        from .errors import SamplingError

        args = args or PIPELINE_ARGS()
        if not isinstance(args.chunk_len, int) or args.chunk_len < 1:
            raise SamplingError("bad chunk_len", expected="an int >= 1", got=repr(args.chunk_len),
                                fix="use e.g. chunk_len=256")
        all_tokens: list[int] = []
        out_last, out_str = 0, ""
        occurrence: dict[int, float] = {}
        token = None
        for i in range(token_count):
            tokens = self.encode(ctx) if i == 0 else [token]
            while len(tokens) > 0:
                out, state = self.model.forward(tokens[: args.chunk_len], state)
                tokens = tokens[args.chunk_len:]
            out = out.clone()
            for n in args.token_ban:
                out[n] = -float("inf")
            for n, c in occurrence.items():
                out[n] -= args.alpha_presence + c * args.alpha_frequency
            token = self.sample_logits(out, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)
            if token in args.token_stop:
                break
            all_tokens.append(token)
            for n in occurrence:
                occurrence[n] *= args.alpha_decay
            # the official package does not penalise spaces, tabs and digits
            weight = 0 if self.decode([token]) in " \t0123456789" else 1
            occurrence[token] = occurrence.get(token, 0) + weight
            tmp = self.decode(all_tokens[out_last:])
            if "\ufffd" not in tmp:
                if callback:
                    callback(tmp)
                out_str += tmp
                out_last = i + 1
        return out_str
