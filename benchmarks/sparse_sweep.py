"""Tiles of the sparse FFN value op (``rwkvrt.ops.decode.triton_sparse``) vs the dense row-major GEMV.

    PYTHONPATH=src python benchmarks/sparse_sweep.py [--shapes 1.5B,7.2B] [--budget-s 120]

Batch-1 decode's FFN value product, h [1, 4C] @ W_value.T, at the published shapes: each
configuration is timed in a CUDA graph over `--copies` different weight copies (so the
weights stream from HBM, not L2), with h at a given share of exact zeros (random weights
give ~0.5, the trained demo model ~0.85). One JSON line per result: us per product, dense-
equivalent GB/s (the whole matrix's bytes / time) and the GB/s of the rows actually read,
and max |out - torch| / max |torch| (correctness of every tile choice).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from grid_barrier import graph_time_us  # benchmarks/ is on sys.path when a script in it runs
from rwkvrt.models.shapes import published_config
from rwkvrt.ops.decode import RowGroups
from rwkvrt.ops.decode import triton_sparse as sp
from rwkvrt.ops.decode.triton_gemv import grouped_gemv_triton


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="1.5B,7.2B")
    ap.add_argument("--copies", type=int, default=6)
    ap.add_argument("--budget-s", type=float, default=120)
    a = ap.parse_args()
    dev, dt = torch.device("cuda"), torch.float16
    name = torch.cuda.get_device_name()
    t_end = time.time() + a.budget_s
    for shape in a.shapes.split(","):
        cfg = published_config(shape)
        C, F = cfg.n_embd, cfg.d_ffn
        g = torch.Generator(device=dev).manual_seed(0)
        copies = max(a.copies, -(-200_000_000 // (C * F * 2)))  # >= 200 MB in all: past the 50 MB L2
        WT = [(torch.randn(F, C, device=dev, generator=g) * F ** -0.5).to(dt) for _ in range(copies)]
        W = [w.t().contiguous() for w in WT]  # the row-major layout the plain GEMV reads

        def h_at(zf: float) -> torch.Tensor:
            h = torch.randn(1, F, device=dev, generator=g) ** 2
            return torch.where(torch.rand(1, F, device=dev, generator=g) < zf, 0.0, h).to(dt)

        bn0, _, s0 = sp.plan(C, F)
        d = dict(block_n=bn0, splits=s0, num_warps=sp.NUM_WARPS, stages=sp.STAGES, reduce=sp.REDUCE_ELEMS, early=True,
                 block_k=sp.BLOCK_K)
        configs = [d, {**d, "early": False}]
        configs += [{**d, "stages": st} for st in (2, 4, 6)]
        configs += [{**d, "block_k": bk} for bk in (16, 64)]
        configs += [{**d, "block_k": 16, "stages": 6}, {**d, "num_warps": 8}, {**d, "num_warps": 4}]
        configs += [{**d, "block_n": 128, "splits": S} for S in (16, 32, 64)]
        configs += [{**d, "splits": S} for S in (8, 16, 64)]
        for zf, M in ((0.5, 1), (0.85, 1), (0.0, 1)):
            h = torch.cat([h_at(zf) for _ in range(M)])
            out = torch.empty(M, C, device=dev, dtype=dt)
            ref = (h.float() @ WT[0].float())
            dense_groups = RowGroups.single(C)
            lines = []
            t = graph_time_us(lambda: [grouped_gemv_triton(h.view(1, M, F), w, dense_groups, out) for w in W]) / copies
            lines.append({"variant": "dense_gemv", "us": round(t, 2), "GBps_dense_equiv": round(C * F * 2 / t / 1e3, 1)})
            seen = set()
            for cf in configs:
                key = tuple(sorted(cf.items()))
                if key in seen or ((zf, M) != (0.5, 1) and cf is not configs[0] and zf != 0.85):
                    continue
                seen.add(key)
                if time.time() > t_end:
                    print(f"budget reached at {shape} zf={zf}", file=sys.stderr)
                    break
                try:
                    scr = sp.SparseScratch(C, F, dev, block_n=cf["block_n"], splits=cf["splits"], block_k=cf["block_k"])
                except ValueError as e:
                    lines.append({"variant": "sparse", **cf, "error": str(e)[:200]})
                    continue
                kw = dict(num_warps=cf["num_warps"], stages=cf["stages"])
                sp.REDUCE_ELEMS, sp.EARLY_MASK = cf["reduce"], cf["early"]
                try:
                    sp.sparse_rows_gemv_triton(h, WT[0], out, scr, **kw)
                    err = float((out.float() - ref).abs().max() / ref.abs().max())
                    t = graph_time_us(lambda: [sp.sparse_rows_gemv_triton(h, w, out, scr, **kw) for w in WT]) / copies
                    need = float((h != 0).any(0).float().mean())
                    lines.append({"variant": "sparse", **cf, "us": round(t, 2),
                                  "GBps_dense_equiv": round(C * F * 2 / t / 1e3, 1),
                                  "GBps_read": round(need * C * F * 2 / t / 1e3, 1), "rel_err": err})
                except Exception as e:  # noqa: BLE001 - one failing tile must not end the sweep
                    lines.append({"variant": "sparse", **cf, "error": f"{type(e).__name__}: {e}"[:200]})
            for ln in lines:
                ln = {"device": name, "shape": shape, "zero_frac": zf, "M": M, **ln}
                print(json.dumps(ln), flush=True)
                print(" ".join(f"{k}={v}" for k, v in ln.items() if k != "device"), file=sys.stderr, flush=True)
        del WT, W
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
