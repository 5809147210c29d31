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

import logging
from dataclasses import dataclass
from typing import Callable

from .reference import add_layer_norm_reference, layer_norm_reference

log = logging.getLogger(__name__)

__all__ = ["NormOps", "add_layer_norm_reference", "layer_norm_reference", "resolve"]


@dataclass(frozen=True)
class NormOps:
    """The norm functions of one backend (both follow the module docstring)."""

    layer_norm: Callable
    add_layer_norm: Callable
    backend: str


def resolve(device: str, backend: str = "auto") -> NormOps:
    """Return the norm functions for ``device``; auto -> triton on cuda, reference elsewhere."""
    from ...errors import BackendError

    reference = NormOps(layer_norm_reference, add_layer_norm_reference, "reference")
    if backend in ("reference", "torch") or (backend == "auto" and not device.startswith("cuda")):
        return reference
    if backend in ("triton", "auto"):
        try:
            from .triton_norm import add_layer_norm_triton, layer_norm_triton
        except ImportError as e:
            if backend == "triton":
                raise BackendError("the triton backend for layer norm is not available",
                                   got=str(e), fix="pip install 'rwkvrt[gpu]' on a CUDA machine") from None
            log.warning("triton is not importable (%s): %s uses the plain-torch reference", e, __name__)
            return reference
        return NormOps(layer_norm_triton, add_layer_norm_triton, "triton")
    raise BackendError("unknown norm backend", expected="auto, reference, torch or triton",
                       got=repr(backend), fix="pick one of those")
