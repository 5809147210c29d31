"""CPU decode and prefill throughput: rwkvrt vs the official ``rwkv`` package (RWKV-7 path).

Random-weight checkpoints at real shapes (speed does not depend on the values), written in
the official .pth format so both runtimes load the very same file. One JSON line per result.
Runtimes: rwkvrt-fp32 / rwkvrt-bf16, official-fp32 / official-bf16, and rwkvrt-plain-fp32 (rwkvrt
with the one-token CPU fast path switched off: the T-generic path, for before/after comparisons).

    python benchmarks/bench_cpu.py                       # small + 0.1B, all runtimes
    python benchmarks/bench_cpu.py --shapes 0.1B --runtimes rwkvrt-fp32 --decode 64
    python benchmarks/bench_cpu.py --gemv                # weight-layout microbenchmark
    python benchmarks/bench_cpu.py --ab --runtimes rwkvrt-fp32,rwkvrt-plain-fp32,official-fp32
                                                         # decode, interleaved windows in one process

decode  = one token per forward call with the state carried (the chat / generation loop),
prefill = one forward call over a prompt of --prefill tokens from a zero state.
The default thread count is 2 (this project's CI runner); set --threads to change it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

# the official package reads these at import time
os.environ.setdefault("RWKV_V7_ON", "1")
os.environ.setdefault("RWKV_JIT_ON", "1")
os.environ.setdefault("RWKV_CUDA_ON", "0")

import torch  # noqa: E402

SHAPES = {"small": (4, 256, 65536), "0.1B": (12, 768, 65536)}


def make_ckpt(shape: str, root: Path) -> Path:
    from rwkvrt.models.shapes import make_config, random_state_dict, save_official_pth

    L, C, V = SHAPES[shape]
    p = root / f"rwkv7-{shape}-L{L}-C{C}-V{V}.pth"
    if not p.exists():
        save_official_pth(random_state_dict(make_config(L, C, V), seed=0), p)
    return p


class Runner:
    """Uniform decode/prefill calls over both runtimes."""

    def __init__(self, runtime: str, path: Path):
        self.runtime = runtime
        if runtime.startswith("rwkvrt"):
            import rwkvrt

            dt = runtime.split("-")[-1]
            self.m = rwkvrt.load(str(path), f"cpu {dt}")
            if "-plain-" in runtime:
                self.m.net._fast = False
            self.zero = lambda: self.m.zero_state(1)  # noqa: E731
            self.step = lambda tok, s: self.m.forward([tok], s)  # noqa: E731
            self.seq = lambda toks, s: self.m.forward(toks, s)  # noqa: E731
        else:
            dt = runtime.split("-")[1]
            # the official package prints banners on stdout; keep stdout for the JSON lines
            with contextlib.redirect_stdout(sys.stderr):
                from rwkv.model import RWKV

                self.m = RWKV(model=str(path)[: -len(".pth")], strategy=f"cpu {dt}")
            self.zero = lambda: None  # noqa: E731
            self.step = lambda tok, s: self.m.forward([tok], s)  # noqa: E731
            self.seq = lambda toks, s: self.m.forward(toks, s)  # noqa: E731

    def decode(self, n: int, warmup: int, vocab: int, windows: int) -> tuple[float, float]:
        """Tokens/s over ``windows`` timed windows of ``n`` steps each: (median, best). The best
        window is the least disturbed by other processes on a shared machine."""
        g = torch.Generator().manual_seed(1)
        toks = torch.randint(0, vocab, (n * windows + warmup,), generator=g).tolist()
        rates = []
        with torch.inference_mode():
            _, s = self.step(toks[0], self.zero())
            for t in toks[1:warmup]:
                _, s = self.step(t, s)
            for w in range(windows):
                t0 = time.perf_counter()
                for t in toks[warmup + w * n: warmup + (w + 1) * n]:
                    _, s = self.step(t, s)
                rates.append(n / (time.perf_counter() - t0))
        return statistics.median(rates), max(rates)

    def prefill(self, n: int, reps: int, vocab: int) -> tuple[float, float]:
        """Tokens/s of one forward over ``n`` tokens from a zero state, ``reps`` times: (median, best)."""
        g = torch.Generator().manual_seed(2)
        toks = torch.randint(0, vocab, (n,), generator=g).tolist()
        rates = []
        with torch.inference_mode():
            self.seq(toks[: min(n, 16)], self.zero())  # warm (JIT profiling runs, allocator)
            for _ in range(reps):
                t0 = time.perf_counter()
                self.seq(toks, self.zero())
                rates.append(n / (time.perf_counter() - t0))
        return statistics.median(rates), max(rates)


def decode_ab(runners: list[Runner], n: int, warmup: int, vocab: int, windows: int) -> dict[str, tuple]:
    """Decode windows taken in turn over all runtimes (runtime 1 window 1, runtime 2 window 1, ...), so
    load from other processes on a shared machine hits them alike. Returns runtime -> (median, best) tok/s."""
    g = torch.Generator().manual_seed(1)
    toks = torch.randint(0, vocab, (n * windows + warmup,), generator=g).tolist()
    rates: dict[str, list[float]] = {r.runtime: [] for r in runners}
    with torch.inference_mode():
        states = {}
        for r in runners:
            _, s = r.step(toks[0], r.zero())
            for t in toks[1:warmup]:
                _, s = r.step(t, s)
            states[r.runtime] = s
        for w in range(windows):
            for r in runners:
                s = states[r.runtime]
                t0 = time.perf_counter()
                for t in toks[warmup + w * n: warmup + (w + 1) * n]:
                    _, s = r.step(t, s)
                rates[r.runtime].append(n / (time.perf_counter() - t0))
                states[r.runtime] = s
    return {k: (statistics.median(v), max(v)) for k, v in rates.items()}


def gemv_layouts(threads: int) -> None:
    """T = 1 matrix-vector time of the 0.1B shapes in both weight layouts, out of cache
    (cycles through more matrices than the L3 holds). One JSON line per shape."""
    import torch.nn.functional as F

    for K, N, count in ((768, 768, 48), (768, 3072, 24), (3072, 768, 24), (768, 65536, 2)):
        g = torch.Generator().manual_seed(0)
        out_in = [torch.randn(N, K, generator=g) for _ in range(count)]
        in_out = [w.t().contiguous() for w in out_in]
        x = torch.randn(1, K, generator=g)
        best = {"linear_out_in_ms": float("inf"), "matmul_in_out_ms": float("inf")}
        with torch.inference_mode():
            for _ in range(3):
                for key, mats, fn in (("linear_out_in_ms", out_in, lambda w: F.linear(x, w)),
                                      ("matmul_in_out_ms", in_out, lambda w: x @ w)):
                    t0 = time.perf_counter()
                    for w in mats:
                        fn(w)
                    best[key] = min(best[key], (time.perf_counter() - t0) / count * 1e3)
        print(json.dumps({"threads": threads, "torch": torch.__version__, "in": K, "out": N,
                          "mbytes": round(K * N * 4 / 1e6, 1), **{k: round(v, 3) for k, v in best.items()},
                          "loadavg_1m": round(os.getloadavg()[0], 2)}), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="small,0.1B")
    ap.add_argument("--runtimes", default="rwkvrt-fp32,rwkvrt-bf16,official-fp32,official-bf16")
    ap.add_argument("--modes", default="decode,prefill")
    ap.add_argument("--decode", type=int, default=8, help="decode steps per timed window")
    ap.add_argument("--windows", type=int, default=5, help="timed decode windows")
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--prefill", type=int, default=128, help="prompt length")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ckpt-dir", default=None, help="where to write/cache the random checkpoints")
    ap.add_argument("--ab", action="store_true",
                    help="decode only, windows interleaved over the runtimes in one process")
    ap.add_argument("--gemv", action="store_true",
                    help="only time fp32 T=1 matmuls in [out,in] vs [in,out] weight layout")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.gemv:
        gemv_layouts(args.threads)
        return 0
    root = Path(args.ckpt_dir) if args.ckpt_dir else Path(tempfile.gettempdir()) / "rwkvrt-bench-ckpt"
    root.mkdir(parents=True, exist_ok=True)
    base = {"device": f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
            "threads": torch.get_num_threads(), "torch": torch.__version__}
    for shape in args.shapes.split(","):
        path = make_ckpt(shape, root)
        L, C, V = SHAPES[shape]
        if args.ab:
            runners = [Runner(rt, path) for rt in args.runtimes.split(",")]
            res = decode_ab(runners, args.decode, args.warmup, V, args.windows)
            for rt, (med, best) in res.items():
                print(json.dumps({**base, "shape": shape, "n_layer": L, "n_embd": C, "vocab": V, "runtime": rt,
                                  "mode": "decode-ab", "tokens": args.decode * args.windows,
                                  "tokens_per_s": round(med, 2), "loadavg_1m": round(os.getloadavg()[0], 2),
                                  "best_tokens_per_s": round(best, 2)}), flush=True)
            del runners
            continue
        for rt in args.runtimes.split(","):
            runner = Runner(rt, path)
            for mode in args.modes.split(","):
                if mode == "decode":
                    med, best = runner.decode(args.decode, args.warmup, V, args.windows)
                    extra = {"tokens": args.decode * args.windows}
                else:
                    med, best = runner.prefill(args.prefill, args.reps, V)
                    extra = {"tokens": args.prefill}
                print(json.dumps({**base, "shape": shape, "n_layer": L, "n_embd": C, "vocab": V,
                                  "runtime": rt, "mode": mode, **extra, "tokens_per_s": round(med, 2),
                                  "loadavg_1m": round(os.getloadavg()[0], 2),
                                  "best_tokens_per_s": round(best, 2)}), flush=True)
            del runner
    return 0


if __name__ == "__main__":
    sys.exit(main())
