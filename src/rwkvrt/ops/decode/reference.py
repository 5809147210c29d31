"""Plain-torch decode-step ops: the spec the Triton kernels are tested against (see ``__init__``)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..timemix.reference import tmix_core_reference

ACT_NONE, ACT_RELU2, ACT_TANH, ACT_SIGMOID = 0, 1, 2, 3


@dataclass
class RowGroups:
    """Consecutive row ranges of a stacked weight: sizes[i] rows use xs row xrows[i] and acts[i]."""

    sizes: tuple[int, ...]
    xrows: tuple[int, ...]
    acts: tuple[int, ...]
    _tables: dict = field(default_factory=dict, repr=False)  # (device, block_n) -> block tables

    def __post_init__(self):
        assert len(self.sizes) == len(self.xrows) == len(self.acts) and self.sizes
        assert all(a in (ACT_NONE, ACT_RELU2, ACT_TANH, ACT_SIGMOID) for a in self.acts)

    @classmethod
    def single(cls, n: int, act: int = ACT_NONE) -> "RowGroups":
        return cls((n,), (0,), (act,))

    @property
    def n_rows(self) -> int:
        return sum(self.sizes)

    def bounds(self):
        start = 0
        for size, xrow, act in zip(self.sizes, self.xrows, self.acts):
            yield start, start + size, xrow, act
            start += size

    def tables(self, device: torch.device, block_n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """int32 [n_blocks] xs row and activation of each block of ``block_n`` rows (cached), or None
        when a group size is not a multiple of block_n (a block would straddle two groups)."""
        key = (str(device), block_n)
        if key not in self._tables:
            if len(self.sizes) > 1 and any(s % block_n for s in self.sizes[:-1]):
                self._tables[key] = None
            else:
                xr, ac = [], []
                for s, x, a in zip(self.sizes, self.xrows, self.acts):
                    nb = -(-s // block_n)
                    xr += [x] * nb
                    ac += [a] * nb
                self._tables[key] = (torch.tensor(xr, dtype=torch.int32, device=device),
                                     torch.tensor(ac, dtype=torch.int32, device=device))
        return self._tables[key]


def apply_act(y: torch.Tensor, act: int) -> torch.Tensor:
    if act == ACT_RELU2:
        return torch.relu(y) ** 2
    if act == ACT_TANH:
        return torch.tanh(y)
    if act == ACT_SIGMOID:
        return torch.sigmoid(y)
    return y


def grouped_gemv_reference(xs: torch.Tensor, W: torch.Tensor, groups: RowGroups, out: torch.Tensor, *,
                           pdl=None) -> torch.Tensor:
    """See ``rwkvrt.ops.decode``. Products in fp32 (the kernels accumulate in fp32 too)."""
    assert W.shape[0] == groups.n_rows and xs.shape[-1] == W.shape[1]
    for lo, hi, xrow, act in groups.bounds():
        y = xs[xrow].float() @ W[lo:hi].float().t()
        out[:, lo:hi] = apply_act(y, act).to(out.dtype)
    return out


def ln_gemv_reference(x, res, ln_w, ln_b, x_prev, slots, mix, W, groups: RowGroups, out, new_res, xn_out,
                      pending=None, *, eps: float = 1e-5, pdl=None):
    """See ``rwkvrt.ops.decode``: the pending copy, then add_ln_lerp's reference (on a copy of
    the x_prev rows: the pool is not updated here) and grouped_gemv's."""
    from ..token_shift.reference import add_ln_lerp_reference

    if pending is not None:
        src, dst, dst_slots = pending
        dst.index_copy_(0, dst_slots, src.to(dst.dtype))
    M, C = x.shape
    prev = x_prev.index_select(0, slots)
    xs, h = add_ln_lerp_reference(x.view(M, 1, C), res.view(M, 1, C), ln_w, ln_b, prev, mix, eps=eps)
    new_res.copy_(h.view(M, C))
    xn_out.copy_(prev.to(xn_out.dtype))  # add_ln_lerp left the normed row in its x_prev copy
    return grouped_gemv_reference(xs.view(-1, M, C), W, groups, out), new_res, xn_out


def ffn_fused_reference(x, res, ln_w, ln_b, x_prev, slots, mix, Wk, WvT, out, new_res, xn_out, pending=None,
                        scratch=None, *, eps: float = 1e-5, pdl=None):
    """See ``rwkvrt.ops.decode``: ln_gemv's reference for the key rows (relu^2, rounded to the
    activation dtype), then sparse_rows_gemv's for the value (``scratch`` is the kernel's)."""
    F = Wk.shape[0]
    h = torch.empty(x.shape[0], F, device=x.device, dtype=x.dtype)
    ln_gemv_reference(x, res, ln_w, ln_b, x_prev, slots, mix.reshape(1, -1), Wk, RowGroups.single(F, ACT_RELU2), h,
                      new_res, xn_out, pending, eps=eps)
    return sparse_rows_gemv_reference(h, WvT, out), new_res, xn_out


def lora_up(rkvh: torch.Tensor, lora: dict, up: dict, name: str) -> torch.Tensor:
    """hidden(name) @ up[name].T in fp32: [B, C]."""
    off, d = lora[name]
    return rkvh[:, off:off + d].float() @ up[name].float().t()


def tmix_lora_step_reference(rkvh, state, slots, *, lora, up, w0, a0, v0, v_first, k_k, k_a, r_k, ln_w, ln_b,
                             pdl=None, early_state=False):
    """See ``rwkvrt.ops.decode``: the LoRA up-projections in fp32, then the reference time-mix core."""
    H, N = r_k.shape
    C = H * N
    dt = rkvh.dtype
    r, k, v = (rkvh[:, i * C:(i + 1) * C].float() for i in range(3))
    w = w0 + lora_up(rkvh, lora, up, "w")
    a = torch.sigmoid(a0 + lora_up(rkvh, lora, up, "a"))
    g = lora_up(rkvh, lora, up, "g")
    if v_first is not None:
        v = v + (v_first.float() - v) * torch.sigmoid(v0 + lora_up(rkvh, lora, up, "v"))
    s_in = state.index_select(0, slots)
    one = lambda t: t.unsqueeze(1)  # noqa: E731  [B, C] -> [B, 1, C]
    out, s_out = tmix_core_reference(one(r), one(w), one(k), one(v), one(a), one(g), s_in,
                                     k_k=k_k, k_a=k_a, r_k=r_k, ln_w=ln_w, ln_b=ln_b)
    state.index_copy_(0, slots, s_out)
    return out[:, 0].to(dt)


def sparse_rows_gemv_reference(h: torch.Tensor, WT: torch.Tensor, out: torch.Tensor, scratch=None, *,
                               pdl=None) -> torch.Tensor:
    """See ``rwkvrt.ops.decode``: out = h @ WT in fp32, rounded once (the zero rows of h add
    nothing, so skipping them is the same function). ``scratch`` is the kernel's; ignored."""
    assert h.shape[-1] == WT.shape[0] and out.shape == (h.shape[0], WT.shape[1])
    out.copy_(h.float() @ WT.float())
    return out


def decode_layer_reference(x, res, p, att_x, ffn_x, wkv, slots, v_first, scratch=None, *, layer: int,
                           eps: float = 1e-5, pdl=None):
    """See ``rwkvrt.ops.decode``: the seven decode ops' references in sequence."""
    from ..token_shift.reference import add_ln_lerp_reference

    B, C = x.shape
    new = lambda n: torch.empty(B, n, device=x.device, dtype=x.dtype)  # noqa: E731
    row = lambda t: t.view(B, 1, -1)  # noqa: E731
    xs, rmid = add_ln_lerp_reference(row(x), row(res), p.ln1[0], p.ln1[1], att_x, p.mix6, eps=eps, slots=slots)
    rkvh = grouped_gemv_reference(xs.view(6, B, C), p.W_in, p.in_groups, new(p.W_in.shape[0]))
    tm = tmix_lora_step_reference(rkvh, wkv, slots, lora=p.lora_cols, up=p.up_views, w0=p.w0, a0=p.a0, v0=p.v0,
                                  v_first=v_first, k_k=p.k_k, k_a=p.k_a, r_k=p.r_k, ln_w=p.ln_x[0], ln_b=p.ln_x[1])
    att = grouped_gemv_reference(tm.view(1, B, C), p.Wo, RowGroups.single(C), new(C))
    xk, rnew = add_ln_lerp_reference(row(att), rmid, p.ln2[0], p.ln2[1], ffn_x, p.ffn_mix, eps=eps, slots=slots)
    F = p.ffn_key.shape[0]
    h = grouped_gemv_reference(xk.view(1, B, C), p.ffn_key, RowGroups.single(F, ACT_RELU2), new(F))
    out = grouped_gemv_reference(h.view(1, B, F), p.ffn_value, RowGroups.single(C), new(C))
    res.copy_(rnew.view(B, C))
    return out, rkvh


def no_layer_scratch(**kw) -> None:
    """The reference needs no step scratch (the Triton op's factory, ``LayerScratch``, takes these keywords)."""
    return None


def no_scratch(N: int, K: int, device) -> None:
    """The reference needs no scratch (the Triton op's factory has this signature)."""
    return None


__all__ = ["ACT_NONE", "ACT_RELU2", "ACT_TANH", "ACT_SIGMOID", "RowGroups", "apply_act", "decode_layer_reference",
           "ffn_fused_reference", "grouped_gemv_reference", "ln_gemv_reference", "no_layer_scratch", "no_scratch", "sparse_rows_gemv_reference", "tmix_lora_step_reference"]
