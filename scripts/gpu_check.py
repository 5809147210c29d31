"""Summarise bench JSON lines (from scripts/gpu_check.sh) as markdown tables.

    python3 scripts/gpu_check.py OUT/bench.jsonl
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

OFFICIAL = "rwkv-"


def read(path: str) -> list[dict]:
    rows = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return rows


def find(rows, shape, official: bool, test_prefix: str, batch: int | None = None):
    for r in rows:
        if r.get("shape") == shape and r.get("impl", "").startswith(OFFICIAL) == official \
                and r.get("test", "").startswith(test_prefix) and (batch is None or r.get("batch") == batch):
            return r
    return None


def cell(r, key="tokens_per_s", pct=None) -> str:
    if r is None:
        return "-"
    if "error" in r:
        return "ERR"
    s = f"{r[key]:,.0f}" if r[key] >= 100 else f"{r[key]:.1f}"
    if pct and pct in r:
        s += f" ({r[pct]:.0f}%)"
    return s


def main(path: str) -> int:
    rows = read(path)
    if not rows:
        print(f"no JSON lines in {path}")
        return 1
    ceil = [r for r in rows if r.get("test") == "ceilings"]
    if ceil:
        c = ceil[0]
        print(f"device: {c['device']}, torch {c['torch']}, triton {c.get('triton')}, rwkvrt {c['rwkvrt']} "
              f"@ {c['git_sha']}\n")
        print("ceilings (per shape run): " + "; ".join(
            f"copy {x['copy_GBps']:.4g} GB/s, matmul {x['matmul_TFLOPs']:.4g} TFLOP/s {x['matmul_dtype']}, "
            f"gemv {x['gemv_GBps']:.4g} GB/s" for x in ceil) + "\n")
    shapes = list(dict.fromkeys(r["shape"] for r in rows if "shape" in r))
    tg = next((r["test"] for r in rows if r.get("test", "").startswith("tg")), "tg")
    print("tokens/s (% of floor). decode = " + tg + ", b = batch; official = rwkv package, eager\n")
    cols = ["shape", "rwkvrt dec b1", "official dec b1", "rwkvrt pp512", "official pp512",
            "rwkvrt pp8192", "official pp8192", "rwkvrt dec b64", "rwkvrt dec b256", "path"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for s in shapes:
        ours_b1 = find(rows, s, False, "tg", 1)
        cells = [s, cell(ours_b1, pct="pct_of_decode_floor"), cell(find(rows, s, True, "tg", 1), pct="pct_of_decode_floor"),
                 cell(find(rows, s, False, "pp512"), pct="pct_of_prefill_floor"),
                 cell(find(rows, s, True, "pp512"), pct="pct_of_prefill_floor"),
                 cell(find(rows, s, False, "pp8192"), pct="pct_of_prefill_floor"),
                 cell(find(rows, s, True, "pp8192"), pct="pct_of_prefill_floor"),
                 cell(find(rows, s, False, "tg", 64), pct="pct_of_decode_floor"),
                 cell(find(rows, s, False, "tg", 256), pct="pct_of_decode_floor"),
                 (ours_b1 or {}).get("path", "-")]
        print("| " + " | ".join(cells) + " |")
    print("\nall results:\n")
    print("| impl | shape | test | batch | tok/s | ms | GB/s | % floor | peak GB | note |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r.get("test") == "ceilings":
            continue
        ms = r.get("ms_per_token", r.get("ms_total", "-"))
        pct = r.get("pct_of_decode_floor", r.get("pct_of_prefill_floor", "-"))
        note = r.get("error", "")[:80] or r.get("path", "") + (f" cuda_on={r['rwkv_cuda_on']}" if "rwkv_cuda_on" in r else "")
        print(f"| {r.get('impl')} | {r.get('shape')} | {r.get('test')} | {r.get('batch', '-')} | "
              f"{r.get('tokens_per_s', '-')} | {ms} | {r.get('achieved_GBps', '-')} | {pct} | "
              f"{r.get('peak_mem_GB', '-')} | {note} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "gpu_out/bench.jsonl"))
