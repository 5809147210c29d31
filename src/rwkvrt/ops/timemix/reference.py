"""Plain-torch time-mix core: the spec the fused kernels are tested against."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..wkv7.reference import wkv7_reference

GROUP_NORM_EPS = 64e-5


def tmix_core_reference(r, w, k, v, a, g, state, *, k_k, k_a, r_k, ln_w, ln_b, wkv=wkv7_reference):
    """See ``rwkvrt.ops.timemix``. ``wkv`` is the recurrence implementation to use."""
    B, T, C = r.shape
    H, N = r_k.shape
    kk = F.normalize((k * k_k).view(B, T, H, N), dim=-1, p=2.0)
    k = k * (1 + (a - 1) * k_a)
    heads = lambda t: t.view(B, T, H, N)  # noqa: E731
    y, state = wkv(heads(r), heads(w), heads(k), heads(v), -kk, kk * heads(a), state)
    y = F.group_norm(y.reshape(B * T, C), H, ln_w, ln_b, eps=GROUP_NORM_EPS).view(B, T, C)
    bonus = (heads(r) * heads(k) * r_k).sum(dim=-1, keepdim=True) * heads(v)
    return (y + bonus.view(B, T, C)) * g, state
