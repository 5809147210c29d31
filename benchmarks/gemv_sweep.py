"""Decode GEMV tiles: the Triton grouped GEMV vs cuBLAS ``F.linear`` at the published shapes (B=1).

    python benchmarks/gemv_sweep.py [--shapes 1.5B,7.2B] [--budget-s 200] [--smoke]

For each model shape, the five matrices a decode step reads (W_in = r/k/v + LoRA downs,
Wo, ffn key (relu^2), ffn value, head with fp32 output) are timed as a CUDA graph of many
back-to-back calls (the way a decode step runs them), cycling through enough copies of the
weight to defeat the 50 MB L2. One JSON line per (shape, matrix, config) with us per call and
GB/s of weights read; then the best config per matrix. --smoke runs tiny shapes on the Triton
interpreter (TRITON_INTERPRET=1) to check the code paths.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch
import torch.nn.functional as F

from rwkvrt.models.shapes import published_config
from rwkvrt.ops.decode import ACT_RELU2, ACT_SIGMOID, ACT_TANH, RowGroups

CONFIGS = [(bn, bk, w, st) for bn in (4, 8, 16) for bk in (256, 512) for w, st in ((4, 1), (4, 3), (8, 3))]


def matrices(name: str):
    """name -> [(matrix, N, K, RowGroups, out dtype)] of one layer (+ head) at fp16."""
    if name == "smoke":
        C, V, D = 64, 301, [32, 32, 32, 64]
    else:
        cfg = published_config(name)
        C, V = cfg.n_embd, cfg.vocab_size
        D = [cfg.d_mv, cfg.d_aaa, cfg.d_decay, cfg.d_gate]
    gin = RowGroups((C, C, C, *D), (0, 1, 2, 2, 3, 4, 5), (0, 0, 0, 0, 0, ACT_TANH, ACT_SIGMOID))
    h = torch.float16
    return [("W_in", gin.n_rows, C, gin, h, 6), ("Wo", C, C, RowGroups.single(C), h, 1),
            ("ffn_key", 4 * C, C, RowGroups.single(4 * C, ACT_RELU2), h, 1),
            ("ffn_value", C, 4 * C, RowGroups.single(C), h, 1),
            ("head", V, C, RowGroups.single(V), torch.float32, 1)]


def time_graph(fn, n_copies: int, reps: int, dev) -> float:
    """us per call of fn(i % n_copies), captured as one CUDA graph of ``reps`` calls."""
    if dev == "cpu":
        t = time.perf_counter()
        for i in range(reps):
            fn(i % n_copies)
        return (time.perf_counter() - t) / reps * 1e6
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for i in range(n_copies):
            fn(i)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(reps):
            fn(i % n_copies)
    g.replay()
    torch.cuda.synchronize()
    t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = math.inf
    for _ in range(3):
        t0.record()
        g.replay()
        t1.record()
        torch.cuda.synchronize()
        best = min(best, t0.elapsed_time(t1) * 1e3 / reps)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="1.5B,7.2B,0.1B")
    ap.add_argument("--budget-s", type=float, default=200.0)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        dev, shapes, configs, reps = "cpu", ["smoke"], [(4, 32, 4, 1), (16, 64, 4, 3)], 1
    elif not torch.cuda.is_available():
        print("gemv_sweep: no CUDA device; nothing to measure (use --smoke under TRITON_INTERPRET=1)")
        return 0
    else:
        dev, shapes, configs, reps = "cuda", args.shapes.split(","), CONFIGS, 50
    from rwkvrt.ops.decode.triton_gemv import grouped_gemv_triton, pick_blocks

    start = time.time()
    gpu = torch.cuda.get_device_name() if dev == "cuda" else "cpu-interpreter"
    best: dict = {}
    for shape in shapes:
        for mat, N, K, groups, odt, G in matrices(shape):
            nbytes = N * K * 2
            n_copies = 1 if dev == "cpu" else max(2, math.ceil(300e6 / nbytes))
            Ws = [torch.randn(N, K, device=dev, dtype=torch.float16) / K ** 0.5 for _ in range(n_copies)]
            xs = torch.randn(G, 1, K, device=dev, dtype=torch.float16)
            out = torch.empty(1, N, device=dev, dtype=odt)

            def emit(cfg_name, us, **extra):
                rec = dict(bench="gemv", device=gpu, torch=torch.__version__, shape=shape, matrix=mat, N=N, K=K,
                           config=cfg_name, us=round(us, 2), gbps=round(nbytes / us / 1e3, 1), **extra)
                print(json.dumps(rec), flush=True)
                key = (shape, mat)
                if cfg_name != "cublas" and (key not in best or us < best[key][1]):
                    best[key] = (cfg_name, us, rec["gbps"])
                return rec

            if dev == "cuda":
                xs0 = xs[0]
                if odt == torch.float32:
                    lin = lambda i: torch.mm(xs0, Ws[i].t(), out_dtype=torch.float32)  # noqa: E731
                else:
                    lin = lambda i: F.linear(xs0, Ws[i])  # noqa: E731
                emit("cublas", time_graph(lin, n_copies, reps, dev))
            default = pick_blocks(N, K, groups)
            for cfg in [None] + configs:
                if time.time() - start > args.budget_s:
                    print(json.dumps(dict(bench="gemv", note="budget exhausted", shape=shape, matrix=mat)))
                    break
                bn, bk, w, st = cfg if cfg else (default[0], default[1], None, None)
                if any(s % bn for s in groups.sizes[:-1]) or K % bk:
                    continue
                name = "default" if cfg is None else f"bn{bn}_bk{bk}_w{w}_s{st}"
                try:
                    fn = lambda i: grouped_gemv_triton(xs, Ws[i], groups, out, block_n=bn, block_k=bk,  # noqa: E731
                                                       num_warps=w, stages=st)
                    us = time_graph(fn, n_copies, reps, dev)
                except Exception as e:  # a config that does not compile is reported, not fatal
                    print(json.dumps(dict(bench="gemv", shape=shape, matrix=mat, config=name, error=str(e)[:200])))
                    continue
                emit(name, us, block_n=bn, block_k=bk)
            del Ws
    print("\nbest Triton config per matrix (us, GB/s):", file=sys.stderr)
    for (shape, mat), (name, us, gbps) in best.items():
        print(f"  {shape:6s} {mat:10s} {name:22s} {us:9.2f} us {gbps:8.1f} GB/s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
