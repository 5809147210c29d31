"""The time-mix core of an RWKV-7 layer: everything between the projections and the output matmul.

    out, state = tmix_core(r, w, k, v, a, g, state, k_k=, k_a=, r_k=, ln_w=, ln_b=, wkv=)

    r, w, k, v, a, g : [B, T, C] activation dtype, C = H * N
        r = receptance, w = raw decay logit (w0 + LoRA), k = key (before the key update),
        v = value (after the value residual), a = in-context learning rate (after sigmoid),
        g = output gate (after the g2 projection).
    state : [B, H, N, N] float32 WKV state, layout [batch, head, value, key]; may be
        updated in place, always use the returned tensor.
    k_k, k_a : [C];  r_k : [H, N];  ln_w, ln_b : [C] (the ln_x group norm).
    returns out [B, T, C] activation dtype, ready for the output projection:
        kk  = normalize_L2_per_head(k * k_k)
        k'  = k * (1 + (a - 1) * k_a)
        y   = wkv7(r, w, k', v, -kk, kk * a, state)
        y   = group_norm(y, H groups, eps=64e-5) * ln_w + ln_b
        out = (y + sum_per_head(r * k' * r_k) * v) * g
"""
from __future__ import annotations

from .reference import tmix_core_reference

__all__ = ["tmix_core_reference", "resolve"]


def resolve(device: str, backend: str = "auto"):
    """Return the fused time-mix core for ``device``; the reference composes plain torch ops."""
    from .._backend import choose

    def triton():
        from .triton_fused import tmix_core_triton
        return tmix_core_triton

    return choose("the time-mix core", device, backend, tmix_core_reference, triton)
