"""Token shift: the lerps between each token's input and the previous token's.

    xs, new_prev = lerp6(x, x_prev, mix)     # time-mix: r, w, k, v, a, g inputs
    xk, new_prev = lerp1(x, x_prev, mix1)    # channel-mix: the key input

    x      : [B, T, C] activation dtype, not mutated
    x_prev : [B, C] the input of the token before x[:, 0] (the state's x_prev), not mutated
    mix    : [6, C] (lerp6, rows in the order r, w, k, v, a, g) or [C] (lerp1), any float dtype
    xs     : [6, B, T, C] in x's dtype (lerp1: [B, T, C]), freshly allocated:
             xs[i, :, t] = x[:, t] + (shifted[:, t] - x[:, t]) * mix[i]
             with shifted[:, t] = x[:, t - 1] and shifted[:, 0] = x_prev;
             computed in float32, rounded once to x's dtype.
    new_prev : [B, C] = x[:, -1], a view of x (copy it into the state).

The block-level fusion (residual add + LayerNorm + token shift + state update, one launch):

    xs, new_res = add_ln_lerp(x, residual, weight, bias, x_prev, mix, *, eps=1e-5, slots=None, pdl=None)

    x        : [B, T, C] activation dtype (the branch output to add), or None (no add:
               ``residual`` is the stream itself and is returned as new_res), not mutated
    residual : [B, T, C] fp32 or activation dtype, not mutated
    weight, bias : [C] the LayerNorm (ln1 before time-mix, ln2 before channel-mix)
    x_prev   : [S, C] pool of the previous token's normed input (the state's att_x / ffn_x),
               any float dtype, row slots[b] (b when slots is None) read as the shift of
               token 0 and then UPDATED IN PLACE to the normed input of token T-1
    mix      : [M, C] or [C] (M = 1)
    slots    : [B] integer tensor or None
    pdl      : launch with programmatic dependent launch (``rwkvrt.ops._pdl``); None = the
               device default; ignored by the reference
    new_res  = x + residual in residual's dtype (new tensor; ``residual`` itself if x is None)
    xn       = LayerNorm(new_res) in fp32, rounded to the activation dtype (x's, or residual's
               when x is None): exactly what add_layer_norm / layer_norm return
    xs       : [M, B, T, C] activation dtype = lerp rows of xn as above (new tensor)
It replaces ``add_layer_norm`` + ``lerp6`` / ``lerp1`` + the copy into the state: one read of
the stream, no normed tensor round trip, no separate state copy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .reference import add_ln_lerp_reference, lerp1_reference, lerp6_reference

__all__ = ["TokenShiftOps", "add_ln_lerp_reference", "lerp6_reference", "lerp1_reference", "resolve"]


@dataclass(frozen=True)
class TokenShiftOps:
    """The token-shift functions of one backend (both follow the module docstring)."""

    lerp6: Callable
    lerp1: Callable
    add_ln_lerp: Callable
    backend: str


def resolve(device: str, backend: str = "auto") -> TokenShiftOps:
    """Return the token-shift functions for ``device``; auto -> triton on cuda, reference elsewhere."""
    from .._backend import choose

    def triton():
        from .triton_lerp import add_ln_lerp_triton, lerp1_triton, lerp6_triton
        return TokenShiftOps(lerp6_triton, lerp1_triton, add_ln_lerp_triton, "triton")

    reference = TokenShiftOps(lerp6_reference, lerp1_reference, add_ln_lerp_reference, "reference")
    return choose("token shift", device, backend, reference, triton)
