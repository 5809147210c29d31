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

# The runner's prefill (graphs): host time of reset + prefill vs the graph replayed alone
from rwkvrt.engine.runner import DecodeRunner  # noqa: E402

r = DecodeRunner(m, 1)
s = r.alloc()
prompt = tok[0].tolist()
with torch.inference_mode():
    for _ in range(3):
        r.reset(s)
        r.prefill(s, prompt)
    torch.cuda.synchronize()
    g = r._prefill_graph(T)["graph"]
    for name, fn in (("reset+prefill", lambda: (r.reset(s), r.prefill(s, prompt))), ("replay", g.replay)):
        ts, hs = [], []
        for _ in range(10):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            t1 = time.perf_counter()
            torch.cuda.synchronize()
            ts.append(time.perf_counter() - t0)
            hs.append(t1 - t0)
        ts.sort()
        hs.sort()
        print(f"runner {name}: median {1e3 * ts[5]:.3f} ms (host until return {1e3 * hs[5]:.3f} ms)")
    pr = cProfile.Profile()
    pr.enable()
    r.reset(s)
    r.prefill(s, prompt)
    torch.cuda.synchronize()
    pr.disable()
pstats.Stats(pr).sort_stats("tottime").print_stats(12)
