"""Go/no-go numbers for a persistent decode kernel: grid-barrier cost and persistent GEMV bandwidth.

    PYTHONPATH=src python benchmarks/grid_barrier.py [--shapes 1.5B,7.2B] [--layers 8]
    TRITON_INTERPRET=1 python benchmarks/grid_barrier.py --selftest      # the math, on CPU

A batch-1 decode step is a chain of dependent matrix-vector products (per layer: W_in, Wo,
FFN key, FFN value) with small kernels between them. Today each product is its own launch
and costs ~3-4 us of latency on top of its bytes (docs/perf.md). A persistent kernel would
run the whole chain in one launch, one program per SM, with a grid barrier between phases;
before waiting at a barrier each program can prefetch the first lines of the rows it will
multiply next. Whether that wins depends on two numbers this script measures on the GPU:

  barrier   : a launch of `--phases` empty phases, one grid barrier each: us per barrier
  separate  : the chain as one Triton launch per product (the current shape), in a CUDA graph
  persistent: the chain in one launch, grid = SMs, a barrier between products
  persistent+prefetch : the same, each program prefetching its next rows into L2 before it waits

  +ln      : the products that take C inputs (W_in, Wo, FFN key) read their input as the lerp
             of LayerNorm(res + x), every program computing the row statistics itself: the
             L2 cost of a persistent kernel with no separate LayerNorm phases

Each line: device, shape, variant, us per product, weight GB/s, and the max difference of
the final vector against `separate` (or `separate+ln`; same tiles: 0 expected). The chain uses the layer
matrices of the published shapes (random fp16), each product's input the previous output.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import triton
import triton.language as tl

from rwkvrt.models.shapes import published_config

SPIN_LIMIT = tl.constexpr(1 << 24)  # a barrier that is never reached gives up (and flags it) instead of hanging


@triton.jit
def _grid_barrier(bar_ptr, target, err_ptr):
    """Every program arrives (release), then spins until all have (acquire). Monotonic counter:
    the host zeroes it before the launch; the barrier for phase p waits for (p + 1) * programs."""
    tl.debug_barrier()
    tl.atomic_add(bar_ptr, 1, sem="release", scope="gpu")
    n = 0
    seen = tl.atomic_add(bar_ptr, 0, sem="acquire", scope="gpu")
    while (seen < target) & (n < SPIN_LIMIT):
        seen = tl.atomic_add(bar_ptr, 0, sem="acquire", scope="gpu")
        n += 1
    if n >= SPIN_LIMIT:
        tl.atomic_add(err_ptr, 1)
    tl.debug_barrier()


@triton.jit
def _x_tile(x_ptr, ln_ptr, k, LN: tl.constexpr, mean, rstd, BUF):
    """The product's input at columns k, fp32. LN: x is a residual delta and the input is the
    lerp of LayerNorm(res + x) with the shift row, as the decode path feeds its GEMVs
    (ln_ptr: res, ln_w, ln_b, mix as four fp32 rows of BUF, then the shift row)."""
    x = tl.load(x_ptr + k).to(tl.float32)
    if LN:
        h = x + tl.load(ln_ptr + k)
        h = (h - mean) * rstd * tl.load(ln_ptr + BUF + k) + tl.load(ln_ptr + 2 * BUF + k)
        x = h + (tl.load(ln_ptr + 4 * BUF + k) - h) * tl.load(ln_ptr + 3 * BUF + k)
    return x


@triton.jit
def _row_stats(x_ptr, ln_ptr, K, BLOCK_K: tl.constexpr):
    """(mean, rstd) of res + x over K columns (two passes, as the LayerNorm kernels)."""
    kk = tl.arange(0, BLOCK_K)
    s = tl.zeros([BLOCK_K], dtype=tl.float32)
    k0 = 0
    while k0 < K:
        s += tl.load(x_ptr + k0 + kk).to(tl.float32) + tl.load(ln_ptr + k0 + kk)
        k0 += BLOCK_K
    mean = tl.sum(s, axis=0) / K
    v = tl.zeros([BLOCK_K], dtype=tl.float32)
    k0 = 0
    while k0 < K:
        d = tl.load(x_ptr + k0 + kk).to(tl.float32) + tl.load(ln_ptr + k0 + kk) - mean
        v += d * d
        k0 += BLOCK_K
    return mean, 1.0 / tl.sqrt(tl.sum(v, axis=0) / K + 1e-5)


@triton.jit
def _gemv_rows(w_ptr, x_ptr, y_ptr, blk, N, K, ln_ptr, mean, rstd, BUF, LN: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr):
    """y[rows] = W[rows] @ input for the BLOCK_N rows of block blk (fp32 accumulate)."""
    rows = blk * BLOCK_N + tl.arange(0, BLOCK_N)
    kk = tl.arange(0, BLOCK_K)
    rmask = rows < N
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    w_rows = w_ptr + rows.to(tl.int64)[:, None] * K + kk[None, :]
    if STAGES > 0:
        for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
            w = tl.load(w_rows + k0, mask=rmask[:, None], other=0.0)
            acc += w.to(tl.float32) * _x_tile(x_ptr, ln_ptr, k0 + kk, LN, mean, rstd, BUF)[None, :]
    else:  # STAGES=0: a plain loop (the Triton interpreter cannot range() over a loaded bound)
        k0 = 0
        while k0 < K:
            w = tl.load(w_rows + k0, mask=rmask[:, None], other=0.0)
            acc += w.to(tl.float32) * _x_tile(x_ptr, ln_ptr, k0 + kk, LN, mean, rstd, BUF)[None, :]
            k0 += BLOCK_K
    tl.store(y_ptr + rows, tl.sum(acc, axis=1).to(y_ptr.dtype.element_ty), mask=rmask)


@triton.jit
def chain_kernel(w_ptr, offs_ptr, n_ptr, k_ptr, buf_ptr, ln_ptr, bar_ptr, err_ptr, P0, P1, BUF, LN_K,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr,
                 WORK: tl.constexpr, PREFETCH: tl.constexpr, PF_LINES: tl.constexpr, LN: tl.constexpr):
    """Phases [P0, P1): phase p multiplies W_p (at w_ptr + offs[p], [n[p], k[p]]) by buffer p % 2
    into buffer (p + 1) % 2; programs take row blocks round-robin; a grid barrier between
    phases when the launch spans more than one. WORK=False: barriers only. LN: products with
    k[p] == LN_K take LayerNorm + lerp of their input on the fly, every program computing the
    row statistics itself (what a persistent kernel without LayerNorm phases would do)."""
    pid = tl.program_id(0)
    G = tl.num_programs(0)
    p = P0
    while p < P1:
        if WORK:
            off = tl.load(offs_ptr + p)
            N = tl.load(n_ptr + p)
            K = tl.load(k_ptr + p)
            x_ptr = buf_ptr + (p % 2) * BUF
            y_ptr = buf_ptr + ((p + 1) % 2) * BUF
            mean = 0.0
            rstd = 1.0
            if LN:
                if K == LN_K:
                    mean, rstd = _row_stats(x_ptr, ln_ptr, K, BLOCK_K)
            blk = pid
            while blk < tl.cdiv(N, BLOCK_N):
                if LN:
                    if K == LN_K:
                        _gemv_rows(w_ptr + off, x_ptr, y_ptr, blk, N, K, ln_ptr, mean, rstd, BUF, True,
                                   BLOCK_N, BLOCK_K, STAGES)
                    else:
                        _gemv_rows(w_ptr + off, x_ptr, y_ptr, blk, N, K, ln_ptr, mean, rstd, BUF, False,
                                   BLOCK_N, BLOCK_K, STAGES)
                else:
                    _gemv_rows(w_ptr + off, x_ptr, y_ptr, blk, N, K, ln_ptr, mean, rstd, BUF, False,
                               BLOCK_N, BLOCK_K, STAGES)
                blk += G
        if p + 1 < P1:
            if PREFETCH and WORK:
                # this program's first rows of the next phase: their first PF_LINES lines into L2
                n2 = tl.load(n_ptr + p + 1)
                k2 = tl.load(k_ptr + p + 1)
                rows = tl.minimum(pid * BLOCK_N + tl.arange(0, BLOCK_N), n2 - 1).to(tl.int64)
                lines = tl.arange(0, PF_LINES) * 64  # 64 fp16 per 128-byte line
                ptrs = w_ptr + tl.load(offs_ptr + p + 1) + rows[:, None] * k2 + lines[None, :]
                tl.inline_asm_elementwise("prefetch.global.L2 [$1]; // $0", "=r,l", [ptrs], dtype=tl.int32,
                                          is_pure=False, pack=1)
            _grid_barrier(bar_ptr, (p + 1 - P0) * G, err_ptr)
        p += 1


def layer_mats(shape: str) -> list[tuple[int, int]]:
    """[(N, K)] of one layer's decode products: W_in (r/k/v + LoRA downs), Wo, FFN key, FFN value."""
    cfg = published_config(shape)
    C = cfg.n_embd
    d = cfg.d_decay + cfg.d_aaa + cfg.d_mv + cfg.d_gate
    return [(3 * C + d, C), (C, C), (cfg.d_ffn, C), (C, cfg.d_ffn)]


class Chain:
    def __init__(self, mats: list[tuple[int, int]], device, seed: int = 0, ln_k: int = 0):
        g = torch.Generator(device="cpu").manual_seed(seed)
        self.ln_k = ln_k  # products with this K take LayerNorm + lerp of their input (run(ln=True))
        sizes = [n * k for n, k in mats]
        self.w = (torch.randn(sum(sizes), generator=g) * 0.02).to(device=device, dtype=torch.float16)
        offs = [0]
        for s in sizes[:-1]:
            offs.append(offs[-1] + s)
        self.offs = torch.tensor(offs, device=device, dtype=torch.int64)
        self.n = torch.tensor([n for n, _ in mats], device=device, dtype=torch.int32)
        self.k = torch.tensor([k for _, k in mats], device=device, dtype=torch.int32)
        self.P = len(mats)
        self.BUF = max(max(n, k) for n, k in mats)
        self.buf = torch.zeros(2, self.BUF, device=device, dtype=torch.float16)
        self.x0 = torch.randn(self.BUF, generator=g).to(device=device, dtype=torch.float16)
        # res, ln_w, ln_b, mix (fp32) and the shift row, one BUF-long row each
        self.ln = torch.stack([torch.randn(self.BUF, generator=g), 1 + 0.1 * torch.randn(self.BUF, generator=g),
                               0.1 * torch.randn(self.BUF, generator=g), torch.rand(self.BUF, generator=g),
                               torch.randn(self.BUF, generator=g)]).to(device)
        self.bar = torch.zeros(1, device=device, dtype=torch.int32)
        self.err = torch.zeros(1, device=device, dtype=torch.int32)
        self.bytes = sum(sizes) * 2

    def run(self, grid: int, per_phase: bool, *, work=True, prefetch=False, block_n=8, block_k=512,
            stages=3, warps=4, pf_lines=4, ln=False) -> None:
        self.buf[0].copy_(self.x0)
        self.bar.zero_()
        kw = dict(BLOCK_N=block_n, BLOCK_K=block_k, STAGES=stages, WORK=work, PREFETCH=prefetch,
                  PF_LINES=pf_lines, LN=ln, num_warps=warps)
        args = (self.w, self.offs, self.n, self.k, self.buf, self.ln, self.bar, self.err)
        if per_phase:
            for p in range(self.P):
                n = int(self.n[p])
                chain_kernel[(triton.cdiv(n, block_n),)](*args, p, p + 1, self.BUF, self.ln_k, **kw)
        else:
            chain_kernel[(grid,)](*args, 0, self.P, self.BUF, self.ln_k, **kw)

    def reference(self, ln: bool) -> torch.Tensor:
        """The chain in torch (fp32 products, fp16 between them, as the kernel stores)."""
        x = self.x0.float()
        res, lw, lb, mix, prev = self.ln.float()
        for p in range(self.P):
            n, k, o = int(self.n[p]), int(self.k[p]), int(self.offs[p])
            inp = x[:k]
            if ln and k == self.ln_k:
                h = inp + res[:k]
                h = (h - h.mean()) / torch.sqrt(h.var(unbiased=False) + 1e-5) * lw[:k] + lb[:k]
                inp = h + (prev[:k] - h) * mix[:k]
            x = (self.w[o:o + n * k].float().view(n, k) @ inp).half().float()
        return x

    def result(self) -> torch.Tensor:
        n_last = int(self.n[-1])
        return self.buf[self.P % 2, :n_last].float().clone()


def graph_time_us(fn, reps: int = 20) -> float:
    """us per call of fn captured in a CUDA graph (replayed reps times)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    g.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        g.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / reps


def selftest() -> None:
    """Persistent (1 program, so the interpreter can run it) == per-phase launches == torch."""
    dev = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"
    ch = Chain([(48, 64), (64, 48), (32, 64), (64, 32)], dev, ln_k=64)
    for ln in (False, True):
        ch.run(1, True, block_n=8, block_k=16, warps=1, stages=0, ln=ln)
        a = ch.result()
        ch.run(1, False, block_n=8, block_k=16, warps=1, stages=0, ln=ln)
        b = ch.result()
        x = ch.reference(ln)
        assert torch.equal(a, b), (a - b).abs().max()
        assert (a - x).abs().max() <= 1e-2 * x.abs().max(), (ln, (a - x).abs().max())
    assert int(ch.err) == 0
    print("selftest ok:", dev)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="1.5B,7.2B")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--phases", type=int, default=256)
    ap.add_argument("--selftest", action="store_true")
    a = ap.parse_args()
    if a.selftest:
        selftest()
        return
    dev = torch.device("cuda")
    name, sms = torch.cuda.get_device_name(), torch.cuda.get_device_properties(dev).multi_processor_count

    def emit(line):
        print(json.dumps({"device": name, **line}), flush=True)
        print(" ".join(f"{k}={v}" for k, v in line.items()), file=sys.stderr, flush=True)

    empty = Chain([(64, 64)] * a.phases, dev)
    t = graph_time_us(lambda: empty.run(sms, False, work=False))
    emit({"variant": "barrier", "programs": sms, "phases": a.phases, "us_per_barrier": round(t / (a.phases - 1), 3),
          "errors": int(empty.err)})
    del empty
    for shape in a.shapes.split(","):
        ch = Chain(layer_mats(shape) * a.layers, dev, ln_k=published_config(shape).n_embd)
        refs = {}
        for ln in (False, True):
            ch.run(sms, True, ln=ln)
            refs[ln] = ch.result()
        configs = [("separate", dict(per_phase=True)), ("separate+ln", dict(per_phase=True, ln=True))]
        for bn, warps in ((8, 4), (16, 8), (32, 8)):
            for pf in (False, True):
                configs.append((f"persistent{'+prefetch' if pf else ''} bn{bn} w{warps}",
                                dict(per_phase=False, prefetch=pf, block_n=bn, warps=warps)))
            # LayerNorm + lerp computed by every program in the products that take C inputs
            configs.append((f"persistent+prefetch+ln bn{bn} w{warps}",
                            dict(per_phase=False, prefetch=True, block_n=bn, warps=warps, ln=True)))
        for bn, warps in ((8, 4), (16, 4)):  # two programs per SM: more bytes in flight per SM
            configs.append((f"persistent+prefetch+ln bn{bn} w{warps} x2",
                            dict(per_phase=False, prefetch=True, block_n=bn, warps=warps, ln=True, grid_mult=2)))
        for label, kw in configs:
            per_phase = kw.pop("per_phase")
            grid = sms * kw.pop("grid_mult", 1)
            ref = refs[kw.get("ln", False)]
            try:
                t = graph_time_us(lambda: ch.run(grid, per_phase, **kw))
                ch.run(grid, per_phase, **kw)
                d = float((ch.result() - ref).abs().max())
                emit({"shape": shape, "variant": label, "products": ch.P, "us_per_product": round(t / ch.P, 2),
                      "weight_GBps": round(ch.bytes / (t * 1e-6) / 1e9, 1), "max_diff_vs_separate": d,
                      "barrier_timeouts": int(ch.err)})
            except Exception as e:  # noqa: BLE001 - one failed configuration must not end the sweep
                emit({"shape": shape, "variant": label, "error": f"{type(e).__name__}: {e}"[:300]})
        del ch
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
