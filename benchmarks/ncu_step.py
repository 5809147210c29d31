"""Eager batch-1 decode steps for Nsight Compute (one kernel's counters at a time).

    ncu --clock-control none -k regex:'ln_gemv|ffn_fused' --launch-skip 48 --launch-count 4 \
        --section SpeedOfLight --section WarpStateStats ... \
        python benchmarks/ncu_step.py --shape 1.5B --steps 4 [--ffn-fused]

fp16, random weights; every step is the model's plain forward of one token (no graph: ncu
replays each kernel on its own, so PDL overlap and graph launch do not show here).
"""
from __future__ import annotations

import argparse
import importlib

import torch

from rwkvrt.bench_ceilings import random_weights
from rwkvrt.models.rwkv7_fast import RWKV7Fast
from rwkvrt.models.shapes import published_config
from rwkvrt.state import State


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="1.5B")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--ffn-fused", action="store_true")
    ap.add_argument("--knob", action="append", default=[],
                    help="module.ATTR=int, e.g. triton_ffn.ROWS=128 (rwkvrt.ops.decode modules)")
    a = ap.parse_args()
    for kv in a.knob:
        name, val = kv.split("=")
        mod, attr = name.rsplit(".", 1)
        setattr(importlib.import_module(f"rwkvrt.ops.decode.{mod}"), attr, int(val))
    dev, dt = torch.device("cuda"), torch.float16
    cfg = published_config(a.shape)
    m = RWKV7Fast(cfg, random_weights(cfg, dev, dt), device=dev, dtype=dt, ffn_fused=a.ffn_fused)
    st = State.zeros(cfg, 1, device=dev, dtype=dt)
    tok = torch.tensor([[5]], device=dev)
    with torch.inference_mode():
        for _ in range(a.steps):
            m.forward(tok, st)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
