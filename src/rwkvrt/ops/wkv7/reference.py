"""The WKV7 recurrence as a plain fp32 loop over time: the spec the fast versions are tested against."""
from __future__ import annotations

import math

import torch

# exp(-0.5): decay = exp(-DECAY_SCALE * sigmoid(w)) == exp(-exp(-softplus(-w) - 0.5))
DECAY_SCALE = math.exp(-0.5)


def decay_from_raw(w: torch.Tensor) -> torch.Tensor:
    """Raw decay logit (any dtype) -> per-channel decay in (0.545, 1), float32."""
    return torch.exp(-DECAY_SCALE * torch.sigmoid(w.float()))


def wkv7_reference(r, w, k, v, a, b, state):
    """See ``rwkvrt.ops.wkv7`` for the convention. Does not mutate ``state``."""
    B, T, H, N = r.shape
    dtype = r.dtype
    r, k, v, a, b = (t.float() for t in (r, k, v, a, b))
    decay = decay_from_raw(w)
    S = state.float()
    ys = []
    for t in range(T):
        # S: [B, H, V, K]; column vectors along the last axis of each input
        sa = (S @ a[:, t, :, :, None])  # [B, H, V, 1]
        S = S * decay[:, t, :, None, :] + sa @ b[:, t, :, None, :] + v[:, t, :, :, None] @ k[:, t, :, None, :]
        ys.append((S @ r[:, t, :, :, None])[..., 0])
    y = torch.stack(ys, dim=1) if ys else r.new_zeros((B, 0, H, N))
    return y.to(dtype), S
