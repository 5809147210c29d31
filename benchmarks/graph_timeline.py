"""Per-kernel timeline of one batch-1 decode graph replay (CUPTI through torch.profiler).

    PYTHONPATH=src python benchmarks/graph_timeline.py [--shapes 1.5B] [--replays 5]
        [--set rwkvrt.ops.decode.triton_gemv.LNP_PER_SM=2 ...]

For every kernel of the replay: its start and end on the GPU clock. With programmatic dependent
launch a kernel starts before the previous one ends (its programs prefetch, then wait), so the
useful numbers per kernel are
  d_end : end - previous kernel's end (what the kernel adds to the step)
  span  : end - start (time resident, wait included)
  early : previous end - start (how long it sat resident before its input was ready; < 0: a gap)
Kernels are grouped by name; the per-layer kernels are averaged over the middle layers. Prints a
short table per shape and one JSON line per kernel kind (diagnosis tool, not the benchmark).
"""
from __future__ import annotations

import argparse
import importlib
import json
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from decode_overhead import batch1_runner   # benchmarks/ is on sys.path when run as a script


def apply_sets(sets: list[str]) -> None:
    """'pkg.module.NAME=value' -> setattr(module, NAME, eval-free literal)."""
    for s in sets:
        path, val = s.split("=", 1)
        mod, name = path.rsplit(".", 1)
        v: object = None if val == "None" else (val == "True" if val in ("True", "False") else float(val))
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        setattr(importlib.import_module(mod), name, v)


def kernel_events(prof) -> list[tuple[str, float, float]]:
    """(name, start_us, end_us) of every GPU kernel, in start order."""
    out = []
    for e in prof.events():
        if e.device_type.name != "CUDA" or "memcpy" in e.name.lower() or "memset" in e.name.lower():
            continue
        out.append((e.name, e.time_range.start, e.time_range.end))
    out.sort(key=lambda t: t[1])
    return out


def split_replays(ev, n_layers: int, per_layer_min: int = 3):
    """Cut the kernel list into replays at gaps > 20 us (a host sync separates replays)."""
    reps, cur = [], []
    for k in ev:
        if cur and k[1] - max(c[2] for c in cur) > 20.0:
            reps.append(cur)
            cur = []
        cur.append(k)
    if cur:
        reps.append(cur)
    return [r for r in reps if len(r) >= n_layers * per_layer_min]


def short(name: str) -> str:
    return name.split("(")[0].replace("_kernel", "")[:40]


def analyse(rep):
    """Per-kernel rows (name, d_end, span, early), in launch order."""
    rows = []
    prev_end = rep[0][1]
    for name, s, e in rep:
        rows.append((short(name), e - prev_end, e - s, prev_end - s))
        prev_end = max(prev_end, e)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="1.5B")
    ap.add_argument("--replays", type=int, default=5)
    ap.add_argument("--set", action="append", default=[])
    a = ap.parse_args()
    apply_sets(a.set)
    dev, dt = torch.device("cuda"), torch.float16
    props = torch.cuda.get_device_properties(dev)
    for shape in a.shapes.split(","):
        cfg, m, r, s = batch1_runner(shape, dev, dt)
        with torch.inference_mode():
            for _ in range(5):
                r.step([s], [5])
            g = r._buckets[1].graphs[(True, False)]
            for _ in range(20):
                g.replay()
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(100):
                g.replay()
            torch.cuda.synchronize()
            t_gpu = (time.perf_counter() - t) / 100 * 1e6
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(a.replays):
                    g.replay()
                    torch.cuda.synchronize()
                    time.sleep(0.002)
        reps = split_replays(kernel_events(prof), cfg.n_layer)
        if not reps:
            print(f"## {shape}: no replay found in the trace")
            continue
        spans = [rp[-1][2] - rp[0][1] for rp in reps]
        best = reps[spans.index(min(spans))]
        rows = analyse(best)
        n = len(rows)
        print(f"\n## {shape} on {props.name}: {n} kernels a step, traced span {min(spans):.1f} us "
              f"(median {statistics.median(spans):.1f}); untraced replay {t_gpu:.1f} us ({1e6 / t_gpu:.0f} tok/s)")
        # kinds in order of first appearance; average over every occurrence except the first and last layer's
        kinds: dict[str, list] = {}
        for nm, de, sp, ea in rows:
            kinds.setdefault(nm, []).append((de, sp, ea))
        print(f"{'kernel':42s} {'count':>5s} {'d_end':>7s} {'span':>7s} {'early':>7s} {'sum d_end':>9s}")
        for nm, lst in kinds.items():
            core = lst[1:-1] if len(lst) > 4 else lst
            de = statistics.median(x[0] for x in core)
            sp = statistics.median(x[1] for x in core)
            ea = statistics.median(x[2] for x in core)
            tot = sum(x[0] for x in lst)
            print(f"{nm:42s} {len(lst):5d} {de:7.2f} {sp:7.2f} {ea:7.2f} {tot:9.1f}")
            print(json.dumps({"test": "graph_timeline", "device": props.name, "shape": shape, "kernel": nm,
                              "count": len(lst), "d_end_us": round(de, 3), "span_us": round(sp, 3),
                              "early_us": round(ea, 3), "sum_d_end_us": round(tot, 2),
                              "step_span_us": round(min(spans), 2), "replay_us": round(t_gpu, 2),
                              "sets": a.set}))
        # one middle layer in order, kernel by kernel
        mid = n // 2
        per_layer = max(1, n // cfg.n_layer)
        lo = mid - mid % per_layer
        print("one middle layer, in order:")
        for nm, de, sp, ea in rows[lo:lo + per_layer + 1]:
            print(f"   {nm:42s} d_end {de:6.2f}  span {sp:6.2f}  early {ea:6.2f}")
        del m, r
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
