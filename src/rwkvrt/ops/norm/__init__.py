"""LayerNorm, alone or fused with the residual add that precedes it.

    normed = layer_norm(x, weight, bias, eps=1e-5)
    normed, new_residual = add_layer_norm(x, residual, weight, bias, eps=1e-5)

    x        : [..., C] activation dtype, not mutated
    residual : [..., C] (same shape; fp32 or activation dtype), not mutated
    weight, bias : [C], any float dtype
    new_residual = x + residual, in residual's dtype (sum in float32, rounded once);
    normed   = LayerNorm(new_residual) over the last axis (biased variance, eps inside
               the square root), computed in float32 from new_residual *as stored*
               (so it equals layer_norm(new_residual)), returned in x's dtype.
    Both outputs are freshly allocated and contiguous.

In an RWKV-7 block: ``xn, x_res = add_layer_norm(att_out, x_res, ln2.weight, ln2.bias)``
replaces ``x_res = x_res + att_out; xn = layer_norm(x_res)`` (two reads of x_res
saved, one launch instead of two).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .reference import add_layer_norm_reference, layer_norm_reference

__all__ = ["NormOps", "add_layer_norm_reference", "layer_norm_reference", "resolve"]


@dataclass(frozen=True)
class NormOps:
    """The norm functions of one backend (both follow the module docstring)."""

    layer_norm: Callable
    add_layer_norm: Callable
    backend: str


def resolve(device: str, backend: str = "auto") -> NormOps:
    """Return the norm functions for ``device``; auto -> triton on cuda, reference elsewhere."""
    from .._backend import choose

    def triton():
        from .triton_norm import add_layer_norm_triton, layer_norm_triton
        return NormOps(layer_norm_triton, add_layer_norm_triton, "triton")

    return choose("layer norm", device, backend, NormOps(layer_norm_reference, add_layer_norm_reference, "reference"),
                  triton)
