"""Where the GPU time goes: top kernels of a prefill and of a decode step, and wkv7 kernel timings.

    PYTHONPATH=src python benchmarks/profile_gpu.py [--shape 1.5B] [--pp 512]
Prints short tables (not JSON): this is a diagnosis tool, `rwkvrt bench` is the benchmark.
"""
from __future__ import annotations

import argparse
import os

import torch
from torch.profiler import ProfilerActivity, profile

from rwkvrt.bench_ceilings import random_weights
from rwkvrt.models.rwkv7_fast import RWKV7Fast
from rwkvrt.models.shapes import published_config
from rwkvrt.state import State


def top_kernels(fn, n=22, title=""):
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    print(f"\n## {title}")
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=n, max_name_column_width=70))


def bench(fn, reps=20):
    from triton.testing import do_bench
    return do_bench(fn, warmup=5, rep=reps)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="1.5B")
    ap.add_argument("--pp", type=int, default=512)
    a = ap.parse_args()
    dev, dt = torch.device("cuda"), torch.float16
    cfg = published_config(a.shape)
    sd = random_weights(cfg, dev, dt)
    m = RWKV7Fast(cfg, sd, device=dev, dtype=dt)
    del sd
    tok = torch.randint(0, cfg.vocab_size, (1, a.pp), device=dev)
    st = State.zeros(cfg, 1, device=dev, dtype=dt)
    with torch.inference_mode():
        top_kernels(lambda: m.forward(tok, st), title=f"{a.shape} prefill {a.pp}")
        t1 = tok[:, :1]
        top_kernels(lambda: m.forward(t1, st), title=f"{a.shape} decode step (eager)")
        ms = bench(lambda: m.forward(tok, st))
        print(f"prefill {a.pp}: {ms:.3f} ms  {a.pp / ms * 1e3:.0f} tok/s")

    # graph replay vs eager on the same inputs: bitwise?
    from rwkvrt.engine.runner import DecodeRunner
    small = RWKV7Fast(published_config("0.1B"), random_weights(published_config("0.1B"), dev, dt), device=dev, dtype=dt)
    outs = {}
    for name, ug in (("graph", True), ("eager", False), ("eager2", False)):
        rn = DecodeRunner(small, 8, use_graphs=ug)
        sl = [rn.alloc() for _ in range(5)]
        for s_ in sl:
            rn.prefill(s_, [1, 2, 3, 4])
        toks = [5, 6, 7, 8, 9]
        seq = []
        for _ in range(30):
            toks = rn.step(sl, toks).tolist()
            seq.append(toks)
        outs[name] = (seq, rn.last_logits(5).clone(), rn.pool.wkv[:, :8].clone())
    for name in ("eager", "eager2"):
        same = outs[name][0] == outs["graph"][0]
        dl = (outs[name][1].float() - outs["graph"][1].float()).abs().max().item()
        ds = (outs[name][2] - outs["graph"][2]).abs().max().item()
        print(f"graph vs {name}: tokens same {same}, max|dlogits| {dl:.3g}, max|dstate| {ds:.3g}")

    # wkv7 kernels alone at this model's H, N
    from rwkvrt.ops.wkv7 import triton_chunk, triton_recurrent
    from rwkvrt.ops.wkv7.torch_chunked import wkv7_torch_chunked
    H, N = cfg.n_head, cfg.head_size
    print("\n## wkv7 per call (ms), B=1, H=%d, N=%d, fp16" % (H, N))
    for T in (16, 32, 64, 128, 512, 2048):
        g = torch.Generator(device=dev).manual_seed(T)
        r, w, k, v = (torch.randn(1, T, H, N, device=dev, generator=g, dtype=dt) for _ in range(4))
        kk = torch.nn.functional.normalize(torch.randn(1, T, H, N, device=dev, generator=g), dim=-1).to(dt)
        aa, bb = -kk, (kk * 0.5)
        S = torch.zeros(1, H, N, N, device=dev)
        row = [f"T={T:5d}"]
        row.append("rec %.4f" % bench(lambda: triton_recurrent.wkv7_recurrent_triton(r, w, k, v, aa, bb, S.clone())))
        for C in (16, 32, 64):
            try:
                row.append(f"chunk{C} %.4f" % bench(lambda: triton_chunk.wkv7_chunk_triton(r, w, k, v, aa, bb, S.clone(), chunk_size=C)))
            except Exception as e:  # noqa: BLE001 (diagnosis: print and go on)
                row.append(f"chunk{C} ERR {type(e).__name__}")
        row.append("torch %.4f" % bench(lambda: wkv7_torch_chunked(r, w, k, v, aa, bb, S.clone())))
        print("  ".join(row))


if __name__ == "__main__":
    main()
