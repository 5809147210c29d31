"""RWKV-7 ("x070") forward pass for any number of tokens, on a batch of independent sequences.

GPT mode (T > 1) and RNN mode (T == 1) are one code path: everything but the WKV
recurrence batches over time, and the recurrence is an op with interchangeable
implementations (``rwkvrt.ops.wkv7``). Weights keep the official key names and
shapes, so a model built on tensors that require grad is trainable as is.

One exception, for speed: on CPU in fp32 (inference weights), T == 1 runs ``_one_token``, the
same arithmetic in fewer in-place ops as one TorchScript function (docs/perf_cpu.md; its parity
with the generic path is tests/models/test_cpu_fastpath.py).
"""
from __future__ import annotations

import logging
import warnings
from types import SimpleNamespace
from typing import List

import torch
import torch.nn.functional as F

from ..ops import timemix as timemix_ops
from ..ops import wkv7 as wkv7_ops
from ..ops.timemix.reference import GROUP_NORM_EPS
from ..ops.wkv7.reference import DECAY_SCALE
from .config import RWKV7Config

log = logging.getLogger("rwkvrt")

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
    _script = True  # run the one-token CPU step as TorchScript (False: the same function, eagerly)
    one_thread = True  # run that step on one intra-op thread (see _forward_one)

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
            # square time-mix matrices: [in, out] memory is ~10% faster for one token too (docs/perf_cpu.md)
            p.Wr, p.Wk = (_colmajor(take(att + n + ".weight"), self.device) for n in ("receptance", "key"))
            p.Wv, p.Wo = (_colmajor(take(att + n + ".weight"), self.device) for n in ("value", "output"))
            p.ln_x = (take(att + "ln_x.weight"), take(att + "ln_x.bias"))
            p.ffn_x_k = take(ffn + "x_k").view(C)
            p.ffn_key = _colmajor(take(ffn + "key.weight"), self.device)
            p.ffn_value = take(ffn + "value.weight")
            self.layers.append(p)
        self._init_fast_path()

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.emb[tokens]
        if self.ln0 is not None:
            x = F.layer_norm(x, (self.cfg.n_embd,), *self.ln0, LN_EPS)
        return x

    def _init_fast_path(self) -> None:
        """Precompute what the one-token CPU fp32 path (``_forward_one``) needs: [in, out] views of every
        matrix (free: ``.t()`` of the stored weight, whose memory layout was picked above) and the six
        token-shift mixes stacked into one [6, C] tensor (one op for six lerps)."""
        params = [self.emb, self.head, *self.ln_out]
        for p in self.layers:
            params += [v for v in vars(p).values() if isinstance(v, torch.Tensor)]
        # fp32 only (bf16 keeps its measured-fast plain path); weights that train need the autograd-safe path
        self._fast = (self.device.type == "cpu" and self.dtype == torch.float32
                      and not any(t.requires_grad for t in params))
        need = ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "k_k", "k_a")  # v0..v2: layers > 0 only
        self._fast = self._fast and all(getattr(p, n) is not None for p in self.layers for n in need)
        if not self._fast:
            return
        self._fast_out = [*self.ln_out, self.head.t()]
        self._fast_layers = []
        none = torch.empty(0, device=self.device)
        for p in self.layers:
            q = dict(ln1w=p.ln1[0], ln1b=p.ln1[1], ln2w=p.ln2[0], ln2b=p.ln2[1], lnxw=p.ln_x[0], lnxb=p.ln_x[1],
                     mix6=torch.stack([p.x_r, p.x_w, p.x_k, p.x_v, p.x_a, p.x_g]),  # [6, C]
                     WrT=p.Wr.t(), WkT=p.Wk.t(), WvT=p.Wv.t(), WoT=p.Wo.t(),
                     ffn_keyT=p.ffn_key.t(), ffn_valueT=p.ffn_value.t())
            self._fast_layers.append([q[n] if n in q else (getattr(p, n) if getattr(p, n) is not None else none)
                                      for n in _FAST_ORDER])
        self._step = _script_one_token() if self._script else _one_token

    def forward(self, tokens: torch.Tensor, state, *, full_output: bool = False) -> torch.Tensor:
        """tokens: [B, T] int64 on the model's device; state: a ``rwkvrt.State`` with batch B, updated in place.

        Returns logits [B, T, V] (full_output) or [B, V] for the last token, in the activation dtype.
        Token ids are not range-checked here (the API layer does it before touching the state).
        """
        if tokens.shape[1] == 1 and self._fast and not state.wkv.requires_grad:
            out = self._forward_one(tokens[:, 0], state)
            return out.unsqueeze(1) if full_output else out
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

    def _forward_one(self, tok: torch.Tensor, state) -> torch.Tensor:
        """One token per sequence, CPU fp32 (see ``_one_token``). tok: [B] int64; state updated in place.
        Returns logits [B, V] fp32 (a new tensor)."""
        x = self.embed(tok)  # [B, C], a fresh tensor (indexing copies): the residual stream, updated in place
        # One intra-op thread for the step: MKL runs these fp32 GEMVs on one thread whatever the setting, and
        # the only ops big enough for OpenMP (the [B, H, N, N] state updates) gain nothing from a second
        # thread but stall for ms when the other core is busy (0.1B at 2 threads on a loaded machine:
        # 1.5 tok/s without this, 30 with; docs/perf_cpu.md). The caller's setting is restored afterwards.
        n = torch.get_num_threads() if self.one_thread else 1
        if n > 1:
            torch.set_num_threads(1)
        try:
            return self._step(x, state.att_x, state.ffn_x, state.wkv, self._fast_layers, self.cfg.n_head,
                              self.cfg.head_size, self._fast_out)
        finally:
            if n > 1:
                torch.set_num_threads(n)


# Order of each layer's tensors in the list handed to ``_one_token`` (TorchScript wants one list type).
_FAST_ORDER = ("ln1w", "ln1b", "mix6", "WrT", "WkT", "WvT", "w0", "w1", "w2", "a0", "a1", "a2", "v0", "v1", "v2",
               "g1", "g2", "k_k", "k_a", "r_k", "lnxw", "lnxb", "WoT", "ln2w", "ln2b", "ffn_x_k", "ffn_keyT",
               "ffn_valueT")


def _one_token(x: torch.Tensor, att_x: torch.Tensor, ffn_x: torch.Tensor, wkv: torch.Tensor,
               layers: List[List[torch.Tensor]], H: int, N: int, out: List[torch.Tensor]) -> torch.Tensor:
    """All layers and the head for one token per sequence: the arithmetic of ``RWKV7.forward`` at T = 1 in
    fewer, mostly in-place ops (decode on CPU spends a large share of its time in per-op dispatch).

    x: [B, C] fp32, the embedded token, MUTATED (the residual stream). att_x, ffn_x: [L, B, C] and
    wkv: [L, B, H, N, N] fp32, the state, MUTATED. layers: per layer the tensors named by ``_FAST_ORDER``
    (matrices as [in, out] views; v0/v1/v2 of layer 0 unused). out: [ln_out.weight, ln_out.bias, head [C, V]].
    Returns logits [B, V] fp32. Written for TorchScript (it is scripted when possible), runs eagerly too.
    """
    B = x.size(0)
    C = H * N
    v_first = x
    for i in range(len(layers)):
        p = layers[i]
        # ---- time mix
        xx = F.layer_norm(x, [C], p[0], p[1], 1e-5)
        prev = att_x[i]
        dx = prev - xx
        prev.copy_(xx)
        # x + (x_prev - x) * mix, the six mixes (r, w, k, v, a, g) in one op: [B, 6, C]
        m = torch.addcmul(xx.unsqueeze(1), dx.unsqueeze(1), p[2]).unbind(1)
        r = torch.mm(m[0], p[3])
        k = torch.mm(m[2], p[4])
        v = torch.mm(m[3], p[5])
        w = torch.addmm(p[6], torch.mm(m[1], p[7]).tanh_(), p[8])
        a = torch.addmm(p[9], torch.mm(m[4], p[10]), p[11]).sigmoid_()
        g = torch.mm(torch.mm(m[5], p[15]).sigmoid_(), p[16])
        if i == 0:
            v_first = v
        else:
            v = torch.lerp(v, v_first, torch.addmm(p[12], torch.mm(m[3], p[13]), p[14]).sigmoid_())
        decay = w.sigmoid_().mul_(-0.6065306597126334).exp_()  # exp(-exp(-0.5) * sigmoid(w))
        kk = (k * p[17]).view(B, H, N)
        kk.div_(torch.linalg.vector_norm(kk, dim=-1, keepdim=True).clamp_min_(1e-12))  # F.normalize
        k = (a - 1).mul_(p[18]).add_(1).mul_(k)  # k * (1 + (a - 1) * k_a)
        # WKV step on the state in place: S = S*decay + (S @ -kk) (kk*a)^T + v k^T ; y = S @ r
        # (matrix @ vector as vecdot: 3x faster than matmul's bmm path for [N, N] @ [N, 1])
        S = wkv[i]
        sa = torch.linalg.vecdot(S, kk.unsqueeze(2))  # [B, H, N(value)]
        S.mul_(decay.view(B, H, 1, N))
        S.addcmul_(sa.unsqueeze(-1), (kk * a.view(B, H, N)).unsqueeze(2), value=-1)
        S.addcmul_(v.view(B, H, N, 1), k.view(B, H, 1, N))
        y = torch.linalg.vecdot(S, r.view(B, H, 1, N)).view(B, C)
        y = F.group_norm(y, H, p[20], p[21], 64e-5)
        bonus = (r * k).view(B, H, N).mul_(p[19]).sum(-1, keepdim=True)  # [B, H, 1]
        y.view(B, H, N).addcmul_(bonus, v.view(B, H, N))
        x.addmm_(y.mul_(g), p[22])
        # ---- channel mix
        xx = F.layer_norm(x, [C], p[23], p[24], 1e-5)
        prev = ffn_x[i]
        kx = torch.addcmul(xx, prev - xx, p[25])
        prev.copy_(xx)
        x.addmm_(torch.mm(kx, p[26]).relu_().square_(), p[27])
    x = F.layer_norm(x, [C], out[0], out[1], 1e-5)
    return torch.mm(x, out[2])


def _script_one_token():
    """``_one_token`` as TorchScript (its interpreter dispatches each op in ~1-2 us less than Python), or
    the eager function where scripting is unavailable."""
    global _ONE_TOKEN
    if _ONE_TOKEN is None:
        try:
            # torch >= 2.10 warns that jit.script is deprecated on every use: not the user's concern
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                _ONE_TOKEN = torch.jit.script(_one_token)
        except Exception as e:  # noqa: BLE001  (any scripting failure: the eager function is exact)
            log.info("TorchScript unavailable for the CPU decode step (%s); running it eagerly", e)
            _ONE_TOKEN = _one_token
    return _ONE_TOKEN


_ONE_TOKEN = None
# the literals in _one_token (TorchScript wants them inline) are these constants
assert DECAY_SCALE == 0.6065306597126334 and GROUP_NORM_EPS == 64e-5 and LN_EPS == 1e-5
