"""WKV7 in chunkwise-parallel form with plain torch ops: the CPU prefill path, differentiable.

Same convention as ``rwkvrt.ops.wkv7`` (see its docstring). The algebra, per head and
per chunk of C tokens starting from state S0 (row-vector form: each value row s of S
obeys s_t = s_{t-1} (diag(d_t) + a_t b_t^T) + v_t[i] k_t^T):

    G_t  = sum_{j<=t} log d_j  (inclusive cumulative log decay, per key channel)
    w_t  = S_{t-1} a_t                                    (the "S @ a" vector, [V])
    S_t  = S0 diag(e^G_t) + sum_{j<=t} [w_j (b_j e^{G_t-G_j})^T + v_j (k_j e^{G_t-G_j})^T]

    so, with rows over the chunk (W = [w_t], V = [v_t], all [C, .]):
    (I - A_ab) W = (a e^{G_{t-1}}) S0^T + A_ak V,   A_xy[t,j] = sum_c x_t y_j e^{G_{t-1}-G_j}, j<t
    Y = (r e^G) S0^T + A_rb W + A_rk V,              A_ry[t,j] = sum_c r_t y_j e^{G_t-G_j},   j<=t
    S_C = S0 diag(e^G_C) + W^T (b e^{G_C-G}) + V^T (k e^{G_C-G})

Everything that does not depend on S0 is computed for all chunks at once (batched
matmuls and one batched unit-lower-triangular solve); the only sequential part is
S_{c+1} = S_c M_c + E_c, one [N,N] @ [N,N] product per chunk.

Stability: the decay is in (0.545, 1), so within a chunk of 64 the factors e^{-G}
stay under 0.545^-64 ~ 7e16 and e^{G} over 1.5e-17, both well inside fp32 range;
each product x_t y_j e^{G_{t-1}} e^{-G_j} keeps fp32 relative accuracy, and the
upper-triangle entries (where the exponent is positive) are masked away with tril.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .reference import DECAY_SCALE

CHUNK = 64
# Below this many tokens a direct step loop (few ops per token) beats the chunked
# form's fixed cost; measured on a 2-core CPU, B=1 H=12 N=64 (docs/perf_wkv7.md).
STEP_MAX_T = 2


def _steps(r, logd, k, v, a, b, S):
    """Direct recurrence over T (small T). Inputs [B, T, H, N] compute dtype; S [B, H, N, N]."""
    decay = torch.exp(logd)
    ys = []
    for t in range(r.shape[1]):
        sa = S @ a[:, t, :, :, None]  # [B, H, V, 1]
        S = S * decay[:, t, :, None, :] + sa * b[:, t, :, None, :] + v[:, t, :, :, None] * k[:, t, :, None, :]
        ys.append((S @ r[:, t, :, :, None])[..., 0])
    return torch.stack(ys, dim=1), S


def wkv7_torch_chunked(r: torch.Tensor, w: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       a: torch.Tensor, b: torch.Tensor, state: torch.Tensor, *,
                       chunk_size: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunkwise WKV7. Does not mutate ``state``; differentiable with autograd.

    r, w, k, v, a, b : [B, T, H, N], any float dtype (w is the raw decay logit).
    state            : [B, H, N, N] float32 (float64 accepted: then all math is float64),
                       layout [batch, head, value, key]. Not mutated.
    chunk_size       : tokens per chunk, 1..64 (larger risks fp32 range in e^{-G}).
    Returns y [B, T, H, N] in r's dtype and the new state [B, H, N, N] (float32, or
    float64 for float64 inputs).
    """
    assert 1 <= chunk_size <= 64, "chunk_size beyond 64 can overflow e^{-G} in fp32"
    B, T, H, N = r.shape
    cdt = torch.float64 if (r.dtype == torch.float64 or state.dtype == torch.float64) else torch.float32
    out_dtype = r.dtype
    S = state.to(cdt)
    if T == 0:
        return r.new_empty((B, 0, H, N)), S.clone()
    r, k, v, a, b = (x.to(cdt) for x in (r, k, v, a, b))
    logd = -DECAY_SCALE * torch.sigmoid(w.to(cdt))  # log of the decay, in (-0.607, 0)
    if T <= STEP_MAX_T:
        y, S = _steps(r, logd, k, v, a, b, S)
        return y.to(out_dtype), S

    C = min(chunk_size, T)
    NC = -(-T // C)
    pad = NC * C - T

    def chunks(x):
        # [B, T, H, N] -> [B*H*NC, C, N] (one copy); padded tokens have k=v=a=b=r=0 and log
        # decay 0, so they leave the state unchanged and their y rows are dropped.
        x = x.transpose(1, 2)
        if pad:
            x = F.pad(x, (0, 0, 0, pad))
        return x.reshape(B * H * NC, C, N)

    # 3-D [Z, C, N] tensors: bmm takes transposed operands without copying them.
    r_, k_, v_, a_, b_, ld = (chunks(x) for x in (r, k, v, a, b, logd))
    G = ld.cumsum(dim=1)                # inclusive, [Z, C, K]
    gC = G[:, -1:, :]                   # whole-chunk log decay, [Z, 1, K]
    enG = (-G).exp()
    aG = a_ * (G - ld).exp()            # a_t e^{G_{t-1}}
    rG = r_ * G.exp()
    bI = b_ * enG
    kI = k_ * enG
    A_ab = torch.tril(aG @ bI.mT, -1)   # [Z, C, C], strictly lower
    A_ak = torch.tril(aG @ kI.mT, -1)
    A_rb = torch.tril(rG @ bI.mT)       # lower, diagonal included
    A_rk = torch.tril(rG @ kI.mT)

    # W = P S0^T + U with P = (I-A_ab)^-1 aG and U = (I-A_ab)^-1 A_ak V: one solve, two RHS.
    eye = torch.eye(C, dtype=cdt, device=r.device)
    rhs = torch.cat([aG, A_ak @ v_], dim=-1)  # [Z, C, K+V]
    PU = torch.linalg.solve_triangular(eye - A_ab, rhs, upper=False, unitriangular=True)
    P, U = PU[..., :N], PU[..., N:]

    Q = torch.baddbmm(rG, A_rb, P)      # Y = Q S0^T + Yc
    Yc = torch.baddbmm(A_rb @ U, A_rk, v_)
    decay_to_end = (gC - G).exp()       # e^{G_C - G_j} <= 1
    bT = b_ * decay_to_end
    kTe = k_ * decay_to_end
    # S_C = S0 M + E
    M = torch.diag_embed(gC[:, 0, :].exp()).baddbmm(P.mT, bT).view(B, H, NC, N, N)  # [.., K, K]
    E = torch.baddbmm(U.mT @ bT, v_.mT, kTe).view(B, H, NC, N, N)                      # [.., V, K]

    starts = []
    for c in range(NC):
        starts.append(S)
        S = S @ M[:, :, c] + E[:, :, c]
    S0 = torch.stack(starts, dim=2).view(B * H * NC, N, N)  # state at each chunk's start
    Y = torch.baddbmm(Yc, Q, S0.mT)     # [Z, C, V]
    y = Y.view(B, H, NC * C, N)[:, :, :T].transpose(1, 2)
    return y.to(out_dtype), S
