"""WKV7 in exact chunkwise form with Triton (prefill): tensor-core products, fp32 accumulation.

Same convention as ``rwkvrt.ops.wkv7``; the algebra is the one in ``torch_chunked.py``'s
docstring (per head, per chunk of C tokens starting from state S0, G the inclusive
cumulative log decay, per key channel):

    A_ab = tril(aG bI^T, -1)  A_ak = tril(aG kI^T, -1)  A_rb = tril(rG bI^T)  A_rk = tril(rG kI^T)
        aG = a e^{G_{t-1}},  rG = r e^{G_t},  bI = b e^{-G_j},  kI = k e^{-G_j}
    Tinv = (I - A_ab)^{-1}                 (unit lower triangular, forward substitution)
    P = Tinv aG,  U = Tinv (A_ak V)         so that W = [S_{t-1} a_t] = P S0^T + U
    Q = rG + A_rb P,  Yc = A_rb U + A_rk V   so that Y = Yc + Q S0^T
    M = diag(e^{G_C}) + P^T (b e^{G_C-G}),  E = U^T (b e^{G_C-G}) + V^T (k e^{G_C-G})
    so that S_C = S0 M + E.

Two kernels:
  1. ``wkv7_chunk_prep_kernel``, grid (chunks, B*H): everything that does not depend on
     S0 (Q, Yc [C, N] and M, E [N, N] per chunk, fp32 scratch).
  2. ``wkv7_chunk_scan_kernel``, grid (N // BLOCK_V, B*H): walks the chunks in order
     with a [BLOCK_V, N] block of state rows in registers (value rows evolve
     independently): Y_c = Yc_c + Q_c S_c^T (written out), S_{c+1} = S_c M_c + E_c.
     Chunk start states are never stored; the final state is written in place.
Scratch memory: 2*T*N + 2*ceil(T/C)*N*N fp32 per (batch, head).

Precision: all factors stay fp32 (e^{-G} reaches 0.545^-64 ~ 7e16 at C = 64: fine in
fp32/tf32, whose exponent range is fp32's, but not in fp16/bf16), every ``tl.dot``
takes fp32 operands and accumulates in fp32, with ``input_precision`` PREC: "tf32x3"
(3 tf32 products, ~fp32 accuracy) for fp32 activations, "tf32" for fp16/bf16 ones
(error ~1e-3, far under their tolerance). The upper triangles of the A matrices,
where e^{G_{t-1}-G_j} > 1, are removed with ``tl.where`` (never multiplied by 0, so
a large value there cannot turn into NaN). Padded tokens past T load k=v=a=b=r=0 and
log decay 0: they leave the state unchanged and their outputs are not stored.

Cost and knobs (H100, B=1, T=512, H=32, N=64, C=32, fp16; measured 107 us = prep 72 + scan
35): prep = 512 programs of ~13 small tl.dot + a C-step substitution, 1 CTA/SM; scan = 128
programs of T/C serial steps. Knobs: ``chunk_size`` (16/32/64), ``prep_warps``, ``block_v``
and ``scan_warps`` (scan parallelism B*H*N/block_v), ``scan_stages`` (prefetch depth).
Offline sm_90 compile (ptxas -v, fp16 in, tf32), registers at C=32, 8 warps [4 warps]:
prep 190 (doubling 248) [255, spills]; wu 92 (doubling 170 [166]); out 122; scan bv16
128; states bv16 56. C=64 spills in prep (50-200 B) and in doubling wu (0-30 B); fp32 in
(tf32x3) raises all counts (prep spills at C=32). benchmarks/wkv7_sweep.py times them all.

Optional variants (keyword arguments of ``wkv7_chunk_triton``; defaults = the above):
  * ``inverse="doubling"``: Tinv without the serial C-step loop, by recursive block
    doubling: with T_s the inverse of the block-diagonal part of (I - A_ab) with blocks
    of size s (T_1 = I), T_2s = T_s + T_s Lo_2s T_s, Lo_2s = the strictly lower s x s
    blocks inside the 2s x 2s diagonal blocks of A_ab (exact block 2x2 inversion:
    [[T1, 0], [T2 L21 T1, T2]]). log2(C) levels of 2 [C,C]x[C,C] tl.dot each, no
    cross-thread reduction loop. Stable: every factor is an inverse of a sub-chunk's
    (I - A_ab), bounded like Tinv itself. (The Neumann product (I+L)(I+L^2)(I+L^4)...
    was rejected: its partial sums reach 4e7 at C=32 / 4e16 at C=64 on correlated keys
    with a_lr = 1 and lose all accuracy in fp32; doubling stays at 1e-7 there.)
  * ``output="parallel"``: three kernels. ``wkv7_chunk_wu_kernel`` (grid (chunks, B*H))
    stores P, U [C, N] and M, E [N, N] (no r-side work: fewer live tiles);
    ``wkv7_chunk_states_kernel`` walks the chunks doing only S <- S M + E and stores
    each chunk's start state S_c [N, N] fp32; ``wkv7_chunk_out_kernel`` (grid
    (chunks, B*H), fully parallel) computes Y = (rG + A_rb P) S_c^T + A_rb U + A_rk V.
    The serial path loses the Y product and its loads; scratch grows by NC*N*N fp32
    per (batch, head) for the states.
  * ``output="pairs"``: as "parallel", but the states scan takes two chunks per serial
    product, S_{c+2} = S_c (M_c M_{c+1}) + (E_c M_{c+1} + E_{c+1}), the pair products
    being independent of S (ILP instead of latency); S_{c+1} is stored off the chain.

Imports triton: only import this module on a machine that has it.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .._rows import on_pool_rows
from .triton_recurrent import check_layout

_DECAY_SCALE = tl.constexpr(0.6065306597126334)  # exp(-0.5), as reference.DECAY_SCALE

CHUNK = 32
INVERSES = ("loop", "doubling")
OUTPUTS = ("scan", "parallel", "pairs")
# read once: the interpreter needs a while loop where compiled code wants a pipelined for
_INTERP = os.environ.get("TRITON_INTERPRET") == "1"
# T, NC and H are runtime values: specialising on them (==1, %16) would compile a kernel
# per shape class (a sweep over shapes then spends minutes compiling) for no gain, since
# N (constexpr) already gives every address its alignment.
_NO_SPEC = ["T", "NC", "H"]


@triton.jit
def _decay_cumsum(w_ptr, offs, lmask):
    """Per-channel log decay of the chunk's tokens: (ld, G inclusive cumsum, gC chunk total)."""
    w = tl.load(w_ptr + offs, mask=lmask, other=0.0).to(tl.float32)
    ld = tl.where(lmask, -_DECAY_SCALE * tl.sigmoid(w), 0.0)   # log decay, [C, N]
    return ld, tl.cumsum(ld, axis=0), tl.sum(ld, axis=0)


@triton.jit
def _chunk_inverse(aG, bI, tt, C: tl.constexpr, LOG2C: tl.constexpr, DOUBLING: tl.constexpr,
                   PREC: tl.constexpr):
    """Tinv = (I - A_ab)^{-1} [C, C] fp32, A_ab = tril(aG bI^T, -1); aG, bI [C, N] fp32."""
    Tinv = tl.where(tt[:, None] == tt[None, :], 1.0, 0.0)
    if DOUBLING:
        # transposed, as the loop below (aG as the B operand: the layouts, and registers, of
        # the surrounding code then stay as in the loop variant)
        LT = tl.where(tt[:, None] < tt[None, :], tl.dot(bI, tl.trans(aG), input_precision=PREC), 0.0)
        for lvl in range(LOG2C):   # a loop, not unrolled: smaller code, same registers
            # T_2s = T_s + T_s Lo T_s, Lo = the (2s-block, different s-block) entries of L;
            # transposed: T_2s^T = T_s^T + T_s^T Lo^T T_s^T
            lo = ((tt[:, None] >> (lvl + 1)) == (tt[None, :] >> (lvl + 1))) & \
                 ((tt[:, None] >> lvl) != (tt[None, :] >> lvl))
            Tinv = tl.dot(tl.dot(Tinv, tl.where(lo, LT, 0.0), input_precision=PREC), Tinv,
                          acc=Tinv, input_precision=PREC)
        Tinv = tl.trans(Tinv)
    else:
        # A_ab kept transposed: its row i is then a column, reduced along axis 1, which lands
        # in the layout the broadcast below wants (no layout conversion per step)
        A_abT = tl.where(tt[:, None] < tt[None, :],
                         tl.dot(bI, tl.trans(aG), input_precision=PREC), 0.0)
        # Tinv = I + A_ab Tinv, row by row (row i only needs rows j < i, already final).
        for i in range(1, C):
            l_row = tl.sum(tl.where(tt[None, :] == i, A_abT, 0.0), axis=1)  # A_ab[i, j] over j
            new = tl.sum(l_row[:, None] * Tinv, axis=0)                      # (A_ab Tinv)[i, :]
            Tinv = tl.where(tt[:, None] == i, Tinv + new[None, :], Tinv)
    return Tinv


@triton.jit
def _chunk_tile(T, H, N: tl.constexpr, C: tl.constexpr):
    """This program's chunk (grid (NC, B*H)): chunk id, batch*head id, token-in-chunk and channel
    aranges, offsets of its [C, N] tile in a [B, T, H, N] input and the live-token mask."""
    pid_c = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    tt = tl.arange(0, C)
    nn = tl.arange(0, N)
    tok = pid_c * C + tt
    offs = (((pid_bh // H) * T + tok[:, None]) * H + pid_bh % H) * N + nn[None, :]
    return pid_c, pid_bh, tt, nn, offs, (tok < T)[:, None]


@triton.jit
def _store_transition(P, U, v, G, gC, b_ptr, k_ptr, offs, lmask, nn, m_ptr, e_ptr, base_nn,
                      N: tl.constexpr, PREC: tl.constexpr):
    """The chunk's state map S_C = S0 M + E: stores M = diag(e^{G_C}) + P^T (b e^{G_C-G}) [K, K] and
    E = U^T (b e^{G_C-G}) + V^T (k e^{G_C-G}) [V, K] at base_nn (fp32)."""
    dte = tl.exp(gC[None, :] - G)              # e^{G_C - G_j} <= 1
    bT = tl.load(b_ptr + offs, mask=lmask, other=0.0).to(tl.float32) * dte
    kT = tl.load(k_ptr + offs, mask=lmask, other=0.0).to(tl.float32) * dte
    diag = tl.where(nn[:, None] == nn[None, :], tl.exp(gC)[None, :], 0.0)
    nk = nn[:, None] * N + nn[None, :]
    tl.store(m_ptr + base_nn + nk, tl.dot(tl.trans(P), bT, acc=diag, input_precision=PREC))
    E = tl.dot(tl.trans(v), kT, acc=tl.dot(tl.trans(U), bT, input_precision=PREC),
               input_precision=PREC)
    tl.store(e_ptr + base_nn + nk, E)


@triton.jit(do_not_specialize=_NO_SPEC)
def wkv7_chunk_prep_kernel(r_ptr, w_ptr, k_ptr, v_ptr, a_ptr, b_ptr,
                           q_ptr, yc_ptr, m_ptr, e_ptr, T, NC, H,
                           N: tl.constexpr, C: tl.constexpr, LOG2C: tl.constexpr,
                           DOUBLING: tl.constexpr, PREC: tl.constexpr):
    """Grid (NC, B*H). Inputs [B, T, H, N]; writes Q, Yc [B*H, NC, C, N], M, E [B*H, NC, N, N] fp32."""
    pid_c, pid_bh, tt, nn, offs, lmask = _chunk_tile(T, H, N, C)

    # The phases below reload inputs (L2 hits) instead of keeping them live across the
    # inverse: register pressure, not memory traffic, limits this kernel.
    ld, G, gC = _decay_cumsum(w_ptr, offs, lmask)
    eGm = tl.exp(G - ld)                       # e^{G_{t-1}}
    enG = tl.exp(-G)
    strict = tt[:, None] > tt[None, :]
    lower = tt[:, None] >= tt[None, :]

    a = tl.load(a_ptr + offs, mask=lmask, other=0.0).to(tl.float32)
    bb = tl.load(b_ptr + offs, mask=lmask, other=0.0).to(tl.float32)
    Tinv = _chunk_inverse(a * eGm, bb * enG, tt, C, LOG2C, DOUBLING, PREC)

    aG = tl.load(a_ptr + offs, mask=lmask, other=0.0).to(tl.float32) * eGm
    kI = tl.load(k_ptr + offs, mask=lmask, other=0.0).to(tl.float32) * enG
    v = tl.load(v_ptr + offs, mask=lmask, other=0.0).to(tl.float32)
    A_ak = tl.where(strict, tl.dot(aG, tl.trans(kI), input_precision=PREC), 0.0)
    P = tl.dot(Tinv, aG, input_precision=PREC)                                      # [C, K]
    U = tl.dot(Tinv, tl.dot(A_ak, v, input_precision=PREC), input_precision=PREC)  # [C, V]

    rG = tl.load(r_ptr + offs, mask=lmask, other=0.0).to(tl.float32) * tl.exp(G)
    bI = tl.load(b_ptr + offs, mask=lmask, other=0.0).to(tl.float32) * enG
    A_rb = tl.where(lower, tl.dot(rG, tl.trans(bI), input_precision=PREC), 0.0)
    A_rk = tl.where(lower, tl.dot(rG, tl.trans(kI), input_precision=PREC), 0.0)
    base_cn = (pid_bh * NC + pid_c) * C * N
    cn = tt[:, None] * N + nn[None, :]
    tl.store(q_ptr + base_cn + cn, tl.dot(A_rb, P, acc=rG, input_precision=PREC))
    Yc = tl.dot(A_rk, v, acc=tl.dot(A_rb, U, input_precision=PREC), input_precision=PREC)
    tl.store(yc_ptr + base_cn + cn, Yc)

    _store_transition(P, U, v, G, gC, b_ptr, k_ptr, offs, lmask, nn, m_ptr, e_ptr,
                      (pid_bh * NC + pid_c) * N * N, N, PREC)


@triton.jit
def _scan_step(c, S, pid_bh, b_idx, h_idx, tt, nn, rows, q_ptr, yc_ptr, m_ptr, e_ptr, y_ptr,
               T, NC, H, N: tl.constexpr, C: tl.constexpr, PREC: tl.constexpr):
    """Chunk c: stores Y_c = Yc_c + Q_c S_c^T for these value rows; returns S_{c+1} = S_c M_c + E_c."""
    base_cn = (pid_bh * NC + c) * C * N
    Q = tl.load(q_ptr + base_cn + tt[:, None] * N + nn[None, :])       # [C, K]
    Yc = tl.load(yc_ptr + base_cn + tt[:, None] * N + rows[None, :])   # [C, BLOCK_V]
    Y = tl.dot(Q, tl.trans(S), acc=Yc, input_precision=PREC)
    tok = c * C + tt
    y_offs = ((b_idx * T + tok[:, None]) * H + h_idx) * N + rows[None, :]
    tl.store(y_ptr + y_offs, Y.to(y_ptr.dtype.element_ty), mask=(tok < T)[:, None])

    base_nn = (pid_bh * NC + c) * N * N
    M = tl.load(m_ptr + base_nn + nn[:, None] * N + nn[None, :])       # [K, K]
    E = tl.load(e_ptr + base_nn + rows[:, None] * N + nn[None, :])     # [BLOCK_V, K]
    return tl.dot(S, M, acc=E, input_precision=PREC)


@triton.jit(do_not_specialize=_NO_SPEC)
def wkv7_chunk_scan_kernel(q_ptr, yc_ptr, m_ptr, e_ptr, s_ptr, slots_ptr, y_ptr, T, NC, H,
                           N: tl.constexpr, C: tl.constexpr,
                           BLOCK_V: tl.constexpr, PREC: tl.constexpr,
                           INTERP: tl.constexpr, STAGES: tl.constexpr, HAS_SLOTS: tl.constexpr = False):
    """Grid (N // BLOCK_V, B*H). Reads the prep scratch; writes y [B, T, H, N]; state in place
    (HAS_SLOTS: batch row b's state is row slots[b] of the pool)."""
    pid_v = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    b_idx = pid_bh // H
    h_idx = pid_bh % H
    tt = tl.arange(0, C)
    nn = tl.arange(0, N)
    rows = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)   # value rows of this program

    if HAS_SLOTS:
        s_row = tl.load(slots_ptr + b_idx).to(tl.int64) * H + h_idx
    else:
        s_row = pid_bh
    s_ptrs = s_ptr + s_row * N * N + rows[:, None] * N + nn[None, :]
    S = tl.load(s_ptrs)                              # [BLOCK_V, K] fp32
    if INTERP:
        # the Triton 3.6 interpreter cannot range() over a runtime scalar under numpy 2
        c = 0
        while c < NC:
            S = _scan_step(c, S, pid_bh, b_idx, h_idx, tt, nn, rows, q_ptr, yc_ptr, m_ptr, e_ptr,
                           y_ptr, T, NC, H, N, C, PREC)
            c += 1
    else:
        # a for loop lets the compiler prefetch the next chunk's Q, Yc, M, E (independent of S)
        for c in tl.range(0, NC, num_stages=STAGES):
            S = _scan_step(c, S, pid_bh, b_idx, h_idx, tt, nn, rows, q_ptr, yc_ptr, m_ptr, e_ptr,
                           y_ptr, T, NC, H, N, C, PREC)
    tl.store(s_ptrs, S)


# ---- output="parallel": prep without the r side, a states-only scan, a parallel output kernel


@triton.jit(do_not_specialize=_NO_SPEC)
def wkv7_chunk_wu_kernel(w_ptr, k_ptr, v_ptr, a_ptr, b_ptr, p_ptr, u_ptr, m_ptr, e_ptr, T, NC, H,
                         N: tl.constexpr, C: tl.constexpr, LOG2C: tl.constexpr,
                         DOUBLING: tl.constexpr, PREC: tl.constexpr):
    """Grid (NC, B*H). Inputs [B, T, H, N]; writes P, U [B*H, NC, C, N], M, E [B*H, NC, N, N] fp32."""
    pid_c, pid_bh, tt, nn, offs, lmask = _chunk_tile(T, H, N, C)

    ld, G, gC = _decay_cumsum(w_ptr, offs, lmask)
    eGm = tl.exp(G - ld)
    enG = tl.exp(-G)
    # inputs are reloaded after the inverse rather than kept live across it (registers: a
    # dot operand tile can be replicated in every warp)
    Tinv = _chunk_inverse(tl.load(a_ptr + offs, mask=lmask, other=0.0).to(tl.float32) * eGm,
                          tl.load(b_ptr + offs, mask=lmask, other=0.0).to(tl.float32) * enG,
                          tt, C, LOG2C, DOUBLING, PREC)
    aG = tl.load(a_ptr + offs, mask=lmask, other=0.0).to(tl.float32) * eGm
    kI = tl.load(k_ptr + offs, mask=lmask, other=0.0).to(tl.float32) * enG
    v = tl.load(v_ptr + offs, mask=lmask, other=0.0).to(tl.float32)
    A_ak = tl.where(tt[:, None] > tt[None, :], tl.dot(aG, tl.trans(kI), input_precision=PREC), 0.0)
    P = tl.dot(Tinv, aG, input_precision=PREC)                                      # [C, K]
    U = tl.dot(Tinv, tl.dot(A_ak, v, input_precision=PREC), input_precision=PREC)  # [C, V]
    base_cn = (pid_bh * NC + pid_c) * C * N
    cn = tt[:, None] * N + nn[None, :]
    tl.store(p_ptr + base_cn + cn, P)
    tl.store(u_ptr + base_cn + cn, U)

    _store_transition(P, U, v, G, gC, b_ptr, k_ptr, offs, lmask, nn, m_ptr, e_ptr,
                      (pid_bh * NC + pid_c) * N * N, N, PREC)


@triton.jit
def _states_step(i, S, pid_bh, NC, nn, rk, m_ptr, e_ptr, st_ptr, N: tl.constexpr,
                 PREC: tl.constexpr, PAIRS: tl.constexpr):
    """Stores S_c (c = i, or 2i and 2i+1 with PAIRS); returns S_{c+1} = S_c M_c + E_c (or S_{c+2}
    = S_c (M_c M_{c+1}) + (E_c M_{c+1} + E_{c+1}): one product on the serial path per two chunks;
    M_c M_{c+1} does not depend on S, so it overlaps the previous step's product)."""
    nk = nn[:, None] * N + nn[None, :]
    c = 2 * i if PAIRS else i
    base = (pid_bh * NC + c) * N * N
    tl.store(st_ptr + base + rk, S)
    M0 = tl.load(m_ptr + base + nk)
    E0 = tl.load(e_ptr + base + rk)
    if PAIRS:
        has1 = c + 1 < NC                    # an odd NC ends with a single chunk: M1 = I, E1 = 0
        keep = (rk >= 0) & has1
        tl.store(st_ptr + base + N * N + rk, tl.dot(S, M0, acc=E0, input_precision=PREC), mask=keep)
        M1 = tl.load(m_ptr + base + N * N + nk, mask=(nk >= 0) & has1, other=0.0)
        M1 = tl.where((nn[:, None] == nn[None, :]) & (c + 1 >= NC), 1.0, M1)
        E1 = tl.load(e_ptr + base + N * N + rk, mask=keep, other=0.0)
        E0 = tl.dot(E0, M1, acc=E1, input_precision=PREC)
        M0 = tl.dot(M0, M1, input_precision=PREC)
    return tl.dot(S, M0, acc=E0, input_precision=PREC)


@triton.jit(do_not_specialize=_NO_SPEC)
def wkv7_chunk_states_kernel(m_ptr, e_ptr, s_ptr, st_ptr, NC, H, N: tl.constexpr,
                             BLOCK_V: tl.constexpr, PREC: tl.constexpr, PAIRS: tl.constexpr,
                             INTERP: tl.constexpr, STAGES: tl.constexpr):
    """Grid (N // BLOCK_V, B*H). Stores chunk-start states St [B*H, NC, N, N] fp32 (rows of this
    program); S_{c+1} = S_c M_c + E_c; the final state is written to s_ptr in place."""
    pid_v = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    nn = tl.arange(0, N)
    rows = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    rk = rows[:, None] * N + nn[None, :]
    s_ptrs = s_ptr + pid_bh * N * N + rk
    S = tl.load(s_ptrs)                              # [BLOCK_V, K] fp32
    steps = (NC + 1) // 2 if PAIRS else NC
    if INTERP:
        i = 0
        while i < steps:
            S = _states_step(i, S, pid_bh, NC, nn, rk, m_ptr, e_ptr, st_ptr, N, PREC, PAIRS)
            i += 1
    else:
        for i in tl.range(0, steps, num_stages=STAGES):
            S = _states_step(i, S, pid_bh, NC, nn, rk, m_ptr, e_ptr, st_ptr, N, PREC, PAIRS)
    tl.store(s_ptrs, S)


@triton.jit(do_not_specialize=_NO_SPEC)
def wkv7_chunk_out_kernel(r_ptr, w_ptr, k_ptr, v_ptr, b_ptr, p_ptr, u_ptr, st_ptr, y_ptr, T, NC, H,
                          N: tl.constexpr, C: tl.constexpr, PREC: tl.constexpr):
    """Grid (NC, B*H). Y = (rG + A_rb P) S_c^T + A_rb U + A_rk V -> y [B, T, H, N] (r's dtype)."""
    pid_c, pid_bh, tt, nn, offs, lmask = _chunk_tile(T, H, N, C)

    ld, G, gC = _decay_cumsum(w_ptr, offs, lmask)
    enG = tl.exp(-G)
    lower = tt[:, None] >= tt[None, :]
    rG = tl.load(r_ptr + offs, mask=lmask, other=0.0).to(tl.float32) * tl.exp(G)
    bI = tl.load(b_ptr + offs, mask=lmask, other=0.0).to(tl.float32) * enG
    kI = tl.load(k_ptr + offs, mask=lmask, other=0.0).to(tl.float32) * enG
    A_rb = tl.where(lower, tl.dot(rG, tl.trans(bI), input_precision=PREC), 0.0)
    A_rk = tl.where(lower, tl.dot(rG, tl.trans(kI), input_precision=PREC), 0.0)
    base_cn = (pid_bh * NC + pid_c) * C * N
    cn = tt[:, None] * N + nn[None, :]
    Q = tl.dot(A_rb, tl.load(p_ptr + base_cn + cn), acc=rG, input_precision=PREC)   # [C, K]
    v = tl.load(v_ptr + offs, mask=lmask, other=0.0).to(tl.float32)
    Yc = tl.dot(A_rk, v, acc=tl.dot(A_rb, tl.load(u_ptr + base_cn + cn), input_precision=PREC),
                input_precision=PREC)                                                # [C, V]
    S = tl.load(st_ptr + (pid_bh * NC + pid_c) * N * N + nn[:, None] * N + nn[None, :])  # [V, K]
    Y = tl.dot(Q, tl.trans(S), acc=Yc, input_precision=PREC)
    tl.store(y_ptr + offs, Y.to(y_ptr.dtype.element_ty), mask=lmask)


def wkv7_chunk_triton(r: torch.Tensor, w: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      a: torch.Tensor, b: torch.Tensor, state: torch.Tensor, *,
                      chunk_size: int = CHUNK, block_v: int | None = None,
                      precision: str | None = None, prep_warps: int = 8,
                      scan_warps: int = 4, scan_stages: int = 2, inverse: str = "loop",
                      output: str = "scan", slots: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunkwise WKV7 on the GPU (or the Triton interpreter).

    r, w, k, v, a, b : [B, T, H, N] contiguous, same dtype (fp32 / fp16 / bf16); w raw logit.
    state            : [B, H, N, N] float32 contiguous, layout [batch, head, value, key];
                       MUTATED in place to the final state (and returned).
    chunk_size       : 16, 32 or 64 tokens per chunk (64 is the fp32 range limit of e^{-G}).
    block_v          : state rows per scan program (power of 2, 16..N; default 16).
    precision        : tl.dot input_precision; default "tf32x3" for fp32 inputs, else "tf32".
    prep_warps       : warps of the prep kernel (and of the output kernel, output="parallel").
    inverse          : "loop" (C-step forward substitution) or "doubling" (tensor-core
                       block doubling); see the module docstring.
    output           : "scan" (Y inside the scan, two kernels), "parallel" (states-only
                       scan, then a parallel output kernel: three kernels) or "pairs"
                       ("parallel" whose scan steps two chunks per serial product).
    slots            : None, or int64 [B] on the device (distinct): ``state`` is then a pool
                       [S, H, N, N] and batch row b reads and updates row slots[b] in place
                       (output="scan" reads it in the kernel; the other outputs gather and
                       scatter the rows around the call).
    Returns y [B, T, H, N] in r's dtype and ``state``. Allocates fp32 scratch of
    2*B*H*(T_pad*N + NC*N*N) values (plus B*H*NC*N*N for output="parallel"); no host
    syncs (CUDA-graph capturable for fixed T).
    """
    B, T, H, N = r.shape
    assert chunk_size in (16, 32, 64), "chunk_size must be 16, 32 or 64"
    assert inverse in INVERSES and output in OUTPUTS, (inverse, output)
    if slots is not None and output != "scan":
        return on_pool_rows(wkv7_chunk_triton, r, w, k, v, a, b, pool=state, slots=slots, chunk_size=chunk_size,
                            block_v=block_v, precision=precision, prep_warps=prep_warps, scan_warps=scan_warps,
                            scan_stages=scan_stages, inverse=inverse, output=output)
    check_layout(r, w, k, v, a, b, state, slots)
    y = torch.empty_like(r)
    if T == 0 or B == 0:
        return y, state
    C = chunk_size
    # the three-kernel outputs hit an illegal address on an H100 at C=64, N=16, B=2, T=77 (not
    # yet explained; C <= 32 and every "scan" config pass there): refused until fixed
    assert output == "scan" or C <= 32, "output='parallel'/'pairs' need chunk_size <= 32"
    NC = triton.cdiv(T, C)
    prec = precision or ("tf32x3" if r.dtype == torch.float32 else "tf32")
    bv = block_v or 16
    assert N % bv == 0 and bv >= 16
    dev = r.device
    q = torch.empty((B * H, NC, C, N), dtype=torch.float32, device=dev)   # Q or P
    yc = torch.empty_like(q)                                               # Yc or U
    m = torch.empty((B * H, NC, N, N), dtype=torch.float32, device=dev)
    e = torch.empty_like(m)
    meta = dict(N=N, C=C, LOG2C=C.bit_length() - 1, DOUBLING=inverse == "doubling", PREC=prec)
    if output == "scan":
        wkv7_chunk_prep_kernel[(NC, B * H)](r, w, k, v, a, b, q, yc, m, e, T, NC, H, **meta,
                                             num_warps=prep_warps)
        wkv7_chunk_scan_kernel[(N // bv, B * H)](q, yc, m, e, state, state if slots is None else slots, y,
                                                  T, NC, H, N=N, C=C, BLOCK_V=bv, PREC=prec, INTERP=_INTERP,
                                                  STAGES=scan_stages, HAS_SLOTS=slots is not None,
                                                  num_warps=scan_warps)
        return y, state
    st = torch.empty_like(m)
    wkv7_chunk_wu_kernel[(NC, B * H)](w, k, v, a, b, q, yc, m, e, T, NC, H, **meta,
                                       num_warps=prep_warps)
    wkv7_chunk_states_kernel[(N // bv, B * H)](m, e, state, st, NC, H, N=N, BLOCK_V=bv,
                                                PREC=prec, PAIRS=output == "pairs", INTERP=_INTERP,
                                                STAGES=scan_stages, num_warps=scan_warps)
    wkv7_chunk_out_kernel[(NC, B * H)](r, w, k, v, b, q, yc, st, y, T, NC, H, N=N, C=C,
                                        PREC=prec, num_warps=prep_warps)
    return y, state
