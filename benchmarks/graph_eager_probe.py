"""Where graph replay and eager decode part ways (the open graph-vs-eager defect; diagnosis tool).

    PYTHONPATH=src python benchmarks/graph_eager_probe.py [--trials 4] [--rows 3] [--dtype fp16]

The runner test's case (12 x 768 random checkpoint, mixed greedy / sampled rows, prompts of
5, 8, 11, ... tokens): per trial, a graphed and an eager DecodeRunner on one model prefill the
same prompts and take 20 steps. Prints, per trial: whether the pools are equal after prefill
(per state tensor, real slots only) and the prefill logits' max |d|; the first step whose
logits or tokens differ, with the rows that differ; and the same for an all-greedy batch.
"""
from __future__ import annotations

import argparse
import json

import torch

from rwkvrt.engine.runner import DecodeRunner
from rwkvrt.models.rwkv7_fast import RWKV7Fast
from rwkvrt.models.shapes import make_config, random_state_dict
from rwkvrt.sampling import SamplingParams


def run(r: DecodeRunner, rows: int, mixed: bool, steps: int):
    prompts = [[(i * 37 + j) % 65536 for j in range(5 + 3 * i)] for i in range(rows)]
    slots = [r.alloc(SamplingParams(temperature=0.8, top_p=0.9, presence_penalty=0, frequency_penalty=0, seed=i))
             if (mixed and i % 2) else r.alloc() for i in range(rows)]
    pre = [r.prefill(s, p).float() for s, p in zip(slots, prompts)]
    pool0 = r.pool.clone()
    toks = [int(x.argmax()) for x in pre]
    seq, logits = [], []
    for _ in range(steps):
        toks = r.step(slots, toks).tolist()
        seq.append(toks)
        logits.append(r.last_logits(rows).float().clone())
    for s in slots:
        r.free(s)
    return torch.stack(pre), pool0, seq, logits


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--rows", type=int, default=3)
    ap.add_argument("--dtype", default="fp16")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="cuda", help="cpu: a dry run of this script (no graphs there)")
    a = ap.parse_args()
    dt = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[a.dtype]
    cfg = make_config(12, 768, 65536)
    m = RWKV7Fast(cfg, random_state_dict(cfg, seed=5), device=a.device, dtype=dt)
    graphed, eager = DecodeRunner(m, 8), DecodeRunner(m, 8, use_graphs=False)
    real = graphed.max_batch
    for trial in range(a.trials):
        for mixed in (True, False):
            g, e = run(graphed, a.rows, mixed, a.steps), run(eager, a.rows, mixed, a.steps)
            line = {"trial": trial, "mixed": mixed, "rows": a.rows, "dtype": a.dtype,
                    "prefill_logits_maxdiff": float((g[0] - e[0]).abs().max()),
                    "pool_equal_after_prefill": {n: bool(torch.equal(getattr(g[1], n)[:, :real], getattr(e[1], n)[:, :real]))
                                                 for n in ("att_x", "wkv", "ffn_x")}}
            for k, (lg, le) in enumerate(zip(g[3], e[3])):
                d = (lg - le).abs().amax(1)
                if bool((d > 0).any()) or g[2][k] != e[2][k]:
                    line.update(first_diff_step=k, rows_logits_differ=[int(i) for i in torch.nonzero(d > 0)],
                                maxdiff=float(d.max()), tokens_g=g[2][k], tokens_e=e[2][k])
                    break
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
