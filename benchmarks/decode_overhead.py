"""Where a batch-1 decode step's time goes: host work, graph replay, kernels.

    PYTHONPATH=src python benchmarks/decode_overhead.py [--shapes 0.1B,1.5B] [--steps 200]

Per shape (fp16, random weights, the DecodeRunner's CUDA graph for bucket 1):
  step     : runner.step([slot], [tok]) in a loop (what `rwkvrt bench` times)
  replay   : graph.replay() + a device->host read of the token each step (no Python around it)
  gpu      : graph.replay() x steps with one sync at the end (GPU time per step)
and the top kernels of one eager step (torch.profiler). Prints a short table (diagnosis tool).
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from rwkvrt.bench_ceilings import random_weights
from rwkvrt.engine.runner import DecodeRunner
from rwkvrt.models.rwkv7_fast import RWKV7Fast
from rwkvrt.models.shapes import published_config
from rwkvrt.state import State


def per_step(fn, steps: int, sync_each: bool) -> float:
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        fn()
        if sync_each:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / steps * 1e6


def batch1_runner(shape: str, dev: torch.device, dt: torch.dtype):
    """(config, RWKV7Fast on random weights, its batch-1 DecodeRunner, a slot after a 3-token prefill)."""
    cfg = published_config(shape)
    m = RWKV7Fast(cfg, random_weights(cfg, dev, dt), device=dev, dtype=dt)
    r = DecodeRunner(m, 1)
    s = r.alloc()
    r.prefill(s, [1, 2, 3])
    return cfg, m, r, s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="0.1B,1.5B")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--kernels", type=int, default=14)
    a = ap.parse_args()
    dev, dt = torch.device("cuda"), torch.float16
    for shape in a.shapes.split(","):
        cfg, m, r, s = batch1_runner(shape, dev, dt)
        tok = [5]
        with torch.inference_mode():
            t_step = per_step(lambda: r.step([s], tok), a.steps, False)
            bk = r._buckets[1]
            g = bk.graphs[(True, False)]   # (greedy, no state snapshot)
            t_replay = per_step(lambda: (g.replay(), bk.out.to("cpu")), a.steps, False)
            t_gpu = per_step(g.replay, a.steps, False)
            print(f"\n## {shape} decode b1 (decode_fused={m.decode_fused}): step {t_step:.1f} us "
                  f"({1e6 / t_step:.0f} tok/s), replay+read {t_replay:.1f} us, gpu {t_gpu:.1f} us "
                  f"({1e6 / t_gpu:.0f} tok/s)")
            st = State.zeros(cfg, 1, device=dev, dtype=dt)
            t1 = torch.tensor([[5]], device=dev)
            m.forward(t1, st)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                m.forward(t1, st)
                torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=a.kernels, max_name_column_width=60))
        m = r = None   # free this shape before the next


if __name__ == "__main__":
    main()
