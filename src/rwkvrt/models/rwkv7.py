"""RWKV-7 ("x070") forward pass for any number of tokens, on a batch of independent sequences.

GPT mode (T > 1) and RNN mode (T == 1) are one code path: everything but the WKV
recurrence batches over time, and the recurrence is an op with interchangeable
implementations (``rwkvrt.ops.wkv7``). Weights keep the official key names and
shapes, so a model built on tensors that require grad is trainable as is.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from ..ops import timemix as timemix_ops
from ..ops import wkv7 as wkv7_ops
from .config import RWKV7Config

LN_EPS = 1e-5
_VEC_NAMES = ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "v0", "k_k", "k_a")


def _choose_wkv(device: str, backend: str):
    """The recurrence for long T; T <= SHORT_T always uses the loop (one step is cheapest as a loop)."""
    try:
        return wkv7_ops.resolve(device, backend)
    except ImportError:  # a fast implementation not present in this build: the loop is exact
        return wkv7_ops.wkv7_reference


def _colmajor(w: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Same shape and values with [in, out] memory: on CPU in fp32, a one-token product with a wide
    matrix (head, FFN key) streams ~1.5x faster that way (docs/perf_cpu.md); bf16 is 10x slower so, and
    weights that train keep their own storage."""
    if device.type != "cpu" or w.dtype != torch.float32 or w.requires_grad or not w.is_contiguous():
        return w
    return w.t().contiguous().t()


class RWKV7:
    """An RWKV-7 model bound to one device and activation dtype.

    ``sd``: official state dict (names and shapes as BlinkDL's .pth). Tensors already on
    ``device`` in ``dtype`` are used without a copy (mmap-friendly, and trainable).
    """

    SHORT_T = 4

    def __init__(self, cfg: RWKV7Config, sd: dict[str, torch.Tensor], *, device="cpu",
                 dtype: torch.dtype = torch.float32, backend: str = "auto", fold_ln0: bool = True):
        self.cfg, self.device, self.dtype = cfg, torch.device(device), dtype
        dev = self.device.type
        self._wkv_long = _choose_wkv(dev, backend)
        self._wkv_short = wkv7_ops.wkv7_reference
        self._core = timemix_ops.resolve(dev, "reference" if backend in ("reference", "torch") else backend)
        take = lambda name: sd[name].to(device=self.device, dtype=dtype)  # noqa: E731  (no copy if already there)
        C = cfg.n_embd
        emb = take("emb.weight")
        self.ln0 = None
        if fold_ln0:
            with torch.no_grad():
                emb = F.layer_norm(sd["emb.weight"].to(self.device, torch.float32), (C,),
                                   sd["blocks.0.ln0.weight"].to(self.device, torch.float32),
                                   sd["blocks.0.ln0.bias"].to(self.device, torch.float32), LN_EPS).to(dtype)
        else:
            self.ln0 = (take("blocks.0.ln0.weight"), take("blocks.0.ln0.bias"))
        self.emb = emb
        self.ln_out = (take("ln_out.weight"), take("ln_out.bias"))
        self.head = _colmajor(take("head.weight"), self.device)
        self.layers = []
        for i in range(cfg.n_layer):
            b, att, ffn = f"blocks.{i}.", f"blocks.{i}.att.", f"blocks.{i}.ffn."
            p = SimpleNamespace()
            p.ln1 = (take(b + "ln1.weight"), take(b + "ln1.bias"))
            p.ln2 = (take(b + "ln2.weight"), take(b + "ln2.bias"))
            for n in _VEC_NAMES:
                setattr(p, n, take(att + n).view(C) if (att + n) in sd else None)
            for n in ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2"):
                setattr(p, n, take(att + n) if (att + n) in sd else None)
            p.r_k = take(att + "r_k").view(cfg.n_head, cfg.head_size)
            p.Wr, p.Wk = take(att + "receptance.weight"), take(att + "key.weight")
            p.Wv, p.Wo = take(att + "value.weight"), take(att + "output.weight")
            p.ln_x = (take(att + "ln_x.weight"), take(att + "ln_x.bias"))
            p.ffn_x_k = take(ffn + "x_k").view(C)
            p.ffn_key = _colmajor(take(ffn + "key.weight"), self.device)
            p.ffn_value = take(ffn + "value.weight")
            self.layers.append(p)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.emb[tokens]
        if self.ln0 is not None:
            x = F.layer_norm(x, (self.cfg.n_embd,), *self.ln0, LN_EPS)
        return x

    def forward(self, tokens: torch.Tensor, state, *, full_output: bool = False) -> torch.Tensor:
        """tokens: [B, T] int64 on the model's device; state: a ``rwkvrt.State`` with batch B, updated in place.

        Returns logits [B, T, V] (full_output) or [B, V] for the last token, in the activation dtype.
        Token ids are not range-checked here (the API layer does it before touching the state).
        """
        x = self.embed(tokens)  # [B, T, C]
        v_first = None
        C = self.cfg.n_embd
        for i, p in enumerate(self.layers):
            xx = F.layer_norm(x, (C,), *p.ln1, LN_EPS)
            out, v_first = self._time_mix(i, p, xx, state, v_first)
            x = x + out
            xx = F.layer_norm(x, (C,), *p.ln2, LN_EPS)
            x = x + self._channel_mix(i, p, xx, state)
        if not full_output:
            x = x[:, -1]
        x = F.layer_norm(x, (C,), *self.ln_out, LN_EPS)
        return F.linear(x, self.head)

    __call__ = forward

    @staticmethod
    def _shift(x: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        """x [B, T, C], prev [B, C] -> previous token's x for each position."""
        return torch.cat((prev.unsqueeze(1), x[:, :-1]), dim=1) if x.shape[1] > 1 else prev.unsqueeze(1)

    def _time_mix(self, i, p, x, state, v_first):
        xx = self._shift(x, state.att_x[i]) - x
        state.att_x[i].copy_(x[:, -1])
        xr, xw, xk, xv, xa, xg = (x + xx * m for m in (p.x_r, p.x_w, p.x_k, p.x_v, p.x_a, p.x_g))
        r = F.linear(xr, p.Wr)
        k = F.linear(xk, p.Wk)
        v = F.linear(xv, p.Wv)
        w = p.w0 + torch.tanh(xw @ p.w1) @ p.w2
        a = torch.sigmoid(p.a0 + (xa @ p.a1) @ p.a2)
        g = torch.sigmoid(xg @ p.g1) @ p.g2
        if i == 0:
            v_first = v
        else:
            v = v + (v_first - v) * torch.sigmoid(p.v0 + (xv @ p.v1) @ p.v2)
        wkv = self._wkv_short if x.shape[1] <= self.SHORT_T else self._wkv_long
        out, new_wkv = self._core(r, w, k, v, a, g, state.wkv[i], k_k=p.k_k, k_a=p.k_a, r_k=p.r_k,
                                  ln_w=p.ln_x[0], ln_b=p.ln_x[1], wkv=wkv)
        if new_wkv is not state.wkv[i]:
            state.wkv[i].copy_(new_wkv)
        return F.linear(out, p.Wo), v_first

    def _channel_mix(self, i, p, x, state):
        xx = self._shift(x, state.ffn_x[i]) - x
        state.ffn_x[i].copy_(x[:, -1])
        k = torch.relu(F.linear(x + xx * p.ffn_x_k, p.ffn_key)) ** 2
        return F.linear(k, p.ffn_value)
