"""Host-side (Python) cost of one prefill forward: cProfile top entries, and GPU vs wall time."""
from __future__ import annotations

import cProfile
import pstats
import sys
import time

import torch

from rwkvrt.bench_ceilings import random_weights
from rwkvrt.models.rwkv7_fast import RWKV7Fast
from rwkvrt.models.shapes import published_config
from rwkvrt.state import State

shape, T = (sys.argv[1] if len(sys.argv) > 1 else "1.5B"), int(sys.argv[2]) if len(sys.argv) > 2 else 512
dev, dt = torch.device("cuda"), torch.float16
cfg = published_config(shape)
m = RWKV7Fast(cfg, random_weights(cfg, dev, dt), device=dev, dtype=dt)
tok = torch.randint(0, cfg.vocab_size, (1, T), device=dev)
st = State.zeros(cfg, 1, device=dev, dtype=dt)
with torch.inference_mode():
    for _ in range(3):
        m.forward(tok, st)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    m.forward(tok, st)
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    print(f"{shape} T={T}: host enqueue {1e3 * (t1 - t0):.2f} ms, until GPU done {1e3 * (t2 - t0):.2f} ms")
    pr = cProfile.Profile()
    pr.enable()
    m.forward(tok, st)
    torch.cuda.synchronize()
    pr.disable()
pstats.Stats(pr).sort_stats("tottime").print_stats(18)
