"""Sweep the Triton WKV7 kernels: every chunked variant and launch knob, plus the step kernel.

    python benchmarks/wkv7_sweep.py            # CUDA: the full sweep (< 3 min on an H100)
    TRITON_INTERPRET=1 python benchmarks/wkv7_sweep.py --smoke   # code paths on CPU, tiny

For each shape (B, T, H), fp16 inputs, N = 64, it times ``wkv7_chunk_triton`` for every
(inverse, output) variant x chunk_size x prep_warps x block_v, and ``wkv7_recurrent_triton``
(block_v 16, 32); for the first two shapes, then the scan kernel's warps x stages around the
best chunked config (chunk configs use scan_warps 4, scan_stages 2). One JSON line per config: us_per_call (median over >= 20 CUDA-graph
replays, each replay n_inner back-to-back calls, so the number is GPU time as a captured
prefill sees it, not Python launch time), us_eager (median of plain calls timed with CUDA
events: host-bound for small T), and the error of y and of the final state against the
fp32 step kernel on the same (fp32-cast) inputs: max abs, and max abs / std(ref) as the
tests measure. Configs that fail to compile or run get a line with "error". A short
table of the best config per shape ends the run. A time budget skips what is left
(reported) rather than overrun.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time

import torch

SHAPES = [(1, 512, 32), (1, 512, 64), (1, 8192, 32), (1, 16, 32), (1, 32, 32), (1, 64, 32),
          (8, 64, 32)]
SMOKE_SHAPES = [(2, 20, 1)]
VARIANTS = [(i, o) for o in ("scan", "parallel", "pairs") for i in ("loop", "doubling")]
CHUNKS, PREP_WARPS, BLOCK_VS = (16, 32, 64), (4, 8), (16, 32)
SCAN_WARPS, SCAN_STAGES = (2, 4, 8), (1, 2, 3)   # refine phase, first two shapes only


def make_inputs(B, T, H, N, device, dtype, seed=0):
    """Layer-like inputs (as tests/ops/test_wkv7_triton.py): a = -kk, b = kk * a_lr."""
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rn(*s):
        return torch.randn(*s, generator=g)

    r, v = rn(B, T, H, N), rn(B, T, H, N)
    k = rn(B, T, H, N) / N ** 0.5
    w = torch.rand(B, T, H, N, generator=g) * 12 - 8
    kk = torch.nn.functional.normalize(rn(B, T, H, N), dim=-1)
    a_lr = torch.rand(B, T, H, N, generator=g)
    xs = tuple(x.to(device=device, dtype=dtype) for x in (r, w, k, v, -kk, kk * a_lr))
    return xs, (rn(B, H, N, N) * 0.3).to(device)


class Timer:
    """Median time per call of fn(): CUDA events (graph replays and eager) or, on CPU, wall clock."""

    def __init__(self, device: str, reps: int):
        self.cuda, self.reps = device == "cuda", reps

    def _median_s(self, run) -> float:
        times = []
        for _ in range(self.reps):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                run()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) * 1e-3)
            else:
                t0 = time.perf_counter()
                run()
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def eager_us(self, fn) -> float:
        fn()
        return self._median_s(fn) * 1e6

    def graph_us(self, fn, n_inner: int) -> float | None:
        """GPU time per call inside a CUDA graph of n_inner calls; None off CUDA."""
        if not self.cuda:
            return None
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()                                  # compiled already; settle the allocator
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(n_inner):
                fn()
        graph.replay()                            # warm-up
        us = self._median_s(graph.replay) * 1e6 / n_inner
        del graph
        torch.cuda.empty_cache()                  # each graph pins its own pool (GBs at T=8192)
        return us


def errors(y, s, y_ref, s_ref) -> dict:
    y, s = y.float(), s.float()
    return {"y_max_abs_err": float((y - y_ref).abs().max()),
            "y_rel_err": float((y - y_ref).abs().max() / y_ref.std()),
            "s_max_abs_err": float((s - s_ref).abs().max()),
            "s_rel_err": float((s - s_ref).abs().max() / s_ref.std())}


def configs(N: int):
    """Everything to time for one shape: (name, keyword args) of the chunked and step kernels."""
    for (inv, out), C, pw, bv in itertools.product(VARIANTS, CHUNKS, PREP_WARPS, BLOCK_VS):
        if bv <= N:
            yield "chunk", {"inverse": inv, "output": out, "chunk_size": C, "prep_warps": pw,
                            "block_v": bv}
    for bv in BLOCK_VS:
        if bv <= N:
            yield "recurrent", {"block_v": bv}


def run_shape(B, T, H, N, device, timer, dtype, deadline, emit, refine=False):
    """Times every config for one shape (then, with ``refine``, the scan's warps and stages for
    the best one); returns the result dicts (errors and skips included)."""
    from rwkvrt.ops.wkv7.triton_chunk import wkv7_chunk_triton
    from rwkvrt.ops.wkv7.triton_recurrent import wkv7_recurrent_triton

    xs, s0 = make_inputs(B, T, H, N, device, dtype)
    xs32 = tuple(x.float() for x in xs)
    s_ref = s0.clone()
    y_ref, s_ref = wkv7_recurrent_triton(*xs32, s_ref)
    y_ref = y_ref.float()
    n_inner = max(1, min(10, 65536 // (B * T * H)))
    fns = {"chunk": wkv7_chunk_triton, "recurrent": wkv7_recurrent_triton}

    def one(kind, kw):
        row = {"impl": kind, "variant": f"{kw.get('inverse', '-')}/{kw.get('output', '-')}",
               "chunk": kw.get("chunk_size"), "warps": kw.get("prep_warps"),
               "block_v": kw["block_v"], "B": B, "T": T, "H": H, "N": N,
               "dtype": str(dtype).replace("torch.", "")}
        if kind == "chunk":
            row |= {"scan_warps": kw.get("scan_warps", 4), "scan_stages": kw.get("scan_stages", 2)}
        if time.monotonic() > deadline:
            row["skipped"] = "time budget"
            emit(row)
            return row
        fn = fns[kind]
        state = s0.clone()
        try:
            t0 = time.monotonic()
            y, s = fn(*xs, state, **kw)           # compiles on first use of these constexprs
            if device == "cuda":
                torch.cuda.synchronize()
            row["first_call_s"] = round(time.monotonic() - t0, 3)
            row.update(errors(y, s, y_ref, s_ref))
            work = s0.clone()                     # timing runs chain states; values stay finite
            call = lambda: fn(*xs, work, **kw)    # noqa: E731
            row["us_eager"] = round(timer.eager_us(call), 2)
            g = timer.graph_us(call, n_inner)
            row["us_per_call"] = round(g if g is not None else row["us_eager"], 2)
            row["n_inner"] = n_inner if g is not None else 0
        except Exception as exc:  # noqa: BLE001 -- a sweep reports a config that fails, then goes on
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            if device == "cuda" and "illegal" in row["error"].lower():
                emit(row)
                raise                             # the CUDA context is gone: nothing after can run
        emit(row)
        return row

    out = [one(kind, kw) for kind, kw in configs(N)]
    if refine:
        # the scan's own knobs, around the best chunked config of this shape
        ok = [r for r in out if r["impl"] == "chunk" and "us_per_call" in r]
        if ok:
            b = min(ok, key=lambda r: r["us_per_call"])
            inv, outp = b["variant"].split("/")
            base = {"inverse": inv, "output": outp, "chunk_size": b["chunk"], "prep_warps": b["warps"],
                    "block_v": b["block_v"]}
            for sw, st in itertools.product(SCAN_WARPS, SCAN_STAGES):
                if (sw, st) != (4, 2):
                    out.append(one("chunk", base | {"scan_warps": sw, "scan_stages": st}))
    return out


def compiled_report() -> list[dict]:
    """Registers, spills and shared memory of every kernel compiled in this run (CUDA only:
    read from triton's JIT caches; empty under the interpreter or if the cache layout moved)."""
    import rwkvrt.ops.wkv7.triton_chunk as tc
    import rwkvrt.ops.wkv7.triton_recurrent as tr

    kernels = (tc.wkv7_chunk_prep_kernel, tc.wkv7_chunk_scan_kernel, tc.wkv7_chunk_wu_kernel,
               tc.wkv7_chunk_states_kernel, tc.wkv7_chunk_out_kernel, tr.wkv7_recurrent_fwd_kernel)
    out = []
    for k in kernels:
        for cache in getattr(k, "device_caches", {}).values():
            for ck in list(cache[0].values()):
                try:
                    ck = ck.result() if hasattr(ck, "result") else ck
                    ck._init_handles()
                    names = k.arg_names
                    consts = {names[i[0] if isinstance(i, tuple) else i]: v
                              for i, v in getattr(ck.src, "constants", {}).items()
                              if names[i[0] if isinstance(i, tuple) else i] not in ("INTERP",)}
                    warps = ck.metadata.num_warps
                    regs = ck.n_regs
                    out.append({"kind": "compiled", "kernel": ck.name,
                                "constexprs": {n: str(v) for n, v in consts.items()},
                                "num_warps": warps, "num_stages": getattr(ck.metadata, "num_stages", None),
                                "n_regs": regs, "n_spills": ck.n_spills, "shared": ck.metadata.shared,
                                # how many CTAs the register file (64K per SM) allows at once
                                "ctas_per_sm_by_regs": 65536 // max(1, -(-regs // 8) * 8 * warps * 32)})
                except Exception as exc:  # noqa: BLE001 -- a diagnostic; never fail the sweep
                    out.append({"kind": "compiled", "kernel": getattr(k, "__name__", "?"),
                                "error": f"{type(exc).__name__}: {exc}"[:200]})
    return out


def best_table(rows) -> list[str]:
    """One line per shape: the fastest config, the fastest default-variant one, and the step kernel."""
    lines = ["", "best per shape (us_per_call; y_rel_err = max|y - y_fp32| / std):",
             f"{'B':>2} {'T':>5} {'H':>3} | {'best config':<44} {'us':>8} {'y_rel':>8} | "
             f"{'default-variant best':<26} {'us':>8} | {'default':>8} | {'recurrent':>9}",
             "(default = today's wkv7_chunk_triton defaults: loop/scan C32 w8 bv16, scan w4 stages 2)"]
    shapes = sorted({(r["B"], r["T"], r["H"]) for r in rows}, key=lambda s: (s[1], s[0], s[2]))
    for shp in shapes:
        ok = [r for r in rows if (r["B"], r["T"], r["H"]) == shp and "us_per_call" in r]
        if not ok:
            lines.append(f"{shp[0]:>2} {shp[1]:>5} {shp[2]:>3} | no successful config")
            continue
        best = min(ok, key=lambda r: r["us_per_call"])
        dflt = [r for r in ok if r["variant"] == "loop/scan"]
        rec = [r for r in ok if r["impl"] == "recurrent"]

        def name(r):
            if r["impl"] == "recurrent":
                return f"recurrent bv{r['block_v']}"
            knobs = "" if (r["scan_warps"], r["scan_stages"]) == (4, 2) else \
                f" sw{r['scan_warps']} ss{r['scan_stages']}"
            return f"{r['variant']} C{r['chunk']} w{r['warps']} bv{r['block_v']}{knobs}"

        d = min(dflt, key=lambda r: r["us_per_call"]) if dflt else None
        cur = [r["us_per_call"] for r in dflt if (r["chunk"], r["warps"], r["block_v"], r["scan_warps"],
                                                   r["scan_stages"]) == (32, 8, 16, 4, 2)]
        rc = min(r["us_per_call"] for r in rec) if rec else float("nan")
        lines.append(f"{shp[0]:>2} {shp[1]:>5} {shp[2]:>3} | {name(best):<44} {best['us_per_call']:>8.1f} "
                     f"{best['y_rel_err']:>8.1e} | {name(d) if d else '-':<26} "
                     f"{d['us_per_call'] if d else float('nan'):>8.1f} | "
                     f"{cur[0] if cur else float('nan'):>8.1f} | {rc:>9.1f}")
    return lines


def variant_table(rows) -> list[str]:
    """One line per shape: the best us_per_call of each (inverse, output) variant."""
    heads = [f"{i}/{o}" for i, o in VARIANTS]
    lines = ["", "best us_per_call per variant (any chunk / warps / block_v):",
             f"{'B':>2} {'T':>5} {'H':>3} | " + " ".join(f"{h:>16}" for h in heads) + f" | {'recurrent':>9}"]
    for shp in sorted({(r["B"], r["T"], r["H"]) for r in rows}, key=lambda s: (s[1], s[0], s[2])):
        ok = [r for r in rows if (r["B"], r["T"], r["H"]) == shp and "us_per_call" in r]
        cell = [min((r["us_per_call"] for r in ok if r["variant"] == h), default=float("nan"))
                for h in heads + ["-/-"]]
        lines.append(f"{shp[0]:>2} {shp[1]:>5} {shp[2]:>3} | " + " ".join(f"{c:>16.1f}" for c in cell[:-1])
                     + f" | {cell[-1]:>9.1f}")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, 1 rep (checks code paths)")
    ap.add_argument("--budget-s", type=float, default=140.0,
                    help="stop starting new configs after this many seconds (default 140)")
    ap.add_argument("--reps", type=int, default=None, help="timed reps per config (default 25)")
    ap.add_argument("--jsonl", default=None, help="also write the JSON lines to this file")
    ap.add_argument("--shapes", default=None,
                    help="comma-separated BxTxH to run instead of the default list, e.g. 1x512x32")
    ap.add_argument("--variants", default=None,
                    help="comma-separated inverse/output to keep, e.g. loop/scan,doubling/pairs")
    args = ap.parse_args(argv)

    cuda = torch.cuda.is_available()
    interp = os.environ.get("TRITON_INTERPRET") == "1"
    if not cuda and not (args.smoke and interp):
        print("wkv7_sweep: no CUDA device; nothing to time (run with TRITON_INTERPRET=1 --smoke "
              "to check the code paths on CPU)")
        return 0
    device = "cuda" if cuda else "cpu"
    from rwkvrt.bench_ceilings import run_meta

    reps = args.reps or (1 if args.smoke else 25)
    shapes, N = (SMOKE_SHAPES, 32) if args.smoke else (SHAPES, 64)   # smoke: N 32 keeps bv 32
    if args.shapes:
        shapes = [tuple(int(x) for x in sh.split("x")) for sh in args.shapes.split(",")]
    if args.variants:
        global VARIANTS
        VARIANTS = [tuple(v.split("/")) for v in args.variants.split(",")]
    dtype = torch.float16
    t_start = time.monotonic()
    deadline = t_start + args.budget_s
    meta = {"kind": "meta", "bench": "wkv7_sweep", "smoke": args.smoke, "reps": reps,
            "interpreter": interp, **run_meta(torch.device(device))}
    sink = open(args.jsonl, "w") if args.jsonl else None   # noqa: SIM115 -- closed below

    def emit(row):
        line = json.dumps(row)
        print(line, flush=True)
        if sink:
            sink.write(line + "\n")

    emit(meta)

    rows = []
    for i, (B, T, H) in enumerate(shapes):
        rows += run_shape(B, T, H, N, device, Timer(device, reps), dtype, deadline, emit,
                          refine=i < 2)
    if cuda:
        for row in compiled_report():
            emit(row)
    if sink:
        sink.close()
    failed = [r for r in rows if "error" in r]
    skipped = [r for r in rows if "skipped" in r]
    for line in variant_table(rows) + best_table(rows):
        print(line)
    print(f"\n{len(rows)} configs, {len(failed)} failed, {len(skipped)} skipped (time budget), "
          f"{time.monotonic() - t_start:.0f} s")
    # failures grouped by config (not by shape), so the tail of the output stays short
    groups: dict[str, list[str]] = {}
    for r in failed:
        key = f"{r['impl']} {r['variant']} C{r['chunk']} w{r['warps']} bv{r['block_v']}: {r['error'][:120]}"
        groups.setdefault(key, []).append(f"B{r['B']}T{r['T']}H{r['H']}")
    for key, where in groups.items():
        print(f"failed: {key} [{len(where)} shapes: {' '.join(where[:3])}{' ...' if len(where) > 3 else ''}]")
    if skipped:
        print("skipped shapes: " + " ".join(sorted({f"B{r['B']}T{r['T']}H{r['H']}" for r in skipped})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
