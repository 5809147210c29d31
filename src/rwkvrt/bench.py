"""``rwkvrt bench``: prefill and decode speed, with ceilings measured in the same run and,
optionally, the official ``rwkv`` package timed on the same weights.

Prints one JSON line per result on stdout (a "ceilings" line first); a configuration that
fails (e.g. out of memory) prints a line with "error" and the run goes on.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from . import bench_ceilings as bc
from .errors import RWKVRTError
from .models.config import RWKV7Config
from .strategy import parse_strategy

DTYPE_NAME = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
SYNTH = re.compile(r"^L(\d+)-C(\d+)(?:-V(\d+))?$", re.IGNORECASE)


def _ints(text: str) -> list[int]:
    try:
        vals = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .models.shapes import PUBLISHED

    p.add_argument("--shape", default="0.1B",
                   help=f"published shape with random weights ({', '.join(PUBLISHED)}), a synthetic "
                        "'L2-C128-V1000' (layers, width, vocab), or a checkpoint path (default 0.1B)")
    p.add_argument("--strategy", default=None, help="'cuda fp16' (default with a GPU), 'cuda bf16', 'cpu fp32', 'cpu bf16'")
    p.add_argument("--pp", type=_ints, default=[512], help="prefill lengths, comma list (default 512)")
    p.add_argument("--tg", type=int, default=128, help="decode steps timed per window (default 128)")
    p.add_argument("--batch", type=_ints, default=[1], help="decode batch sizes, comma list (default 1)")
    p.add_argument("--compare", choices=["rwkv"], default=None,
                   help="also time the official rwkv package on the same weights (batch 1)")
    p.add_argument("--compare-pp", type=_ints, default=None,
                   help="prefill lengths for the official package (default: those of --pp)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs (prefill) / steps x tg/8 (decode); default 2")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per configuration; the median is reported")
    p.add_argument("--prefill-chunk", type=int, default=None, help="tokens per prefill call of the fast runner")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and tokens")
    p.add_argument("--json-only", action="store_true", help="no human-readable summary on stderr")


def resolve_shape(shape: str, device: torch.device, dtype: torch.dtype, seed: int):
    """-> (cfg, state dict, checkpoint path or None). Random weights are made on ``device``."""
    from .models.shapes import PUBLISHED, make_config, published_config

    m = SYNTH.match(shape)
    if shape in PUBLISHED or m:
        if m:
            L, C, V = int(m[1]), int(m[2]), int(m[3] or 65536)
            if L < 1 or C < 64 or C % 64:
                raise RWKVRTError("bad synthetic shape", expected="L>=1 and C a multiple of 64 (head size 64)",
                                  got=repr(shape), fix="use e.g. L2-C128-V1000")
            cfg = make_config(L, C, V)
        else:
            cfg = published_config(shape)
        return cfg, bc.random_weights(cfg, device, dtype, seed=seed), None
    p = Path(shape)
    if not (p.exists() or Path(shape + ".pth").exists()):
        raise RWKVRTError("unknown --shape", expected=f"one of {', '.join(PUBLISHED)}, 'L<n>-C<n>-V<n>' or an existing "
                          "checkpoint path", got=repr(shape), fix="e.g. --shape 0.1B or --shape L2-C128-V1000")
    from .weights import load_state_dict

    sd, cfg, path = load_state_dict(shape)
    return cfg, sd, path


@contextlib.contextmanager
def _stdout_to_stderr():
    """Send fd 1 to stderr (the official package and its kernel build print there); stdout is for JSON."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def ffn_zero_fraction(fast, n_tokens: int = 32, seed: int = 0) -> float:
    """Mean fraction of exact zeros in the FFN's relu^2 activations (every layer) over n_tokens
    greedy single-token steps of one sequence from a zero state, through ``fast``'s decode ops
    (eager): the share of the FFN value weight that the sparse op does not read."""
    from .state import State

    seen: list[float] = []
    op = fast.ops.sparse_gemv

    def recording(h, *a, **kw):
        seen.append(float((h == 0).float().mean()))
        return op(h, *a, **kw)

    fast.ops.sparse_gemv = recording
    try:
        st = State.zeros(fast.cfg, 1, device=fast.device, dtype=fast.dtype)
        tok = torch.tensor([[seed % fast.cfg.vocab_size]], device=fast.device)
        with torch.inference_mode():
            for _ in range(n_tokens):
                tok = fast.forward(tok, st).argmax(-1).view(1, 1)
    finally:
        fast.ops.sparse_gemv = op
    return sum(seen) / max(1, len(seen))


class _Engine:
    """prefill(tokens) and decode-step calls over rwkvrt (runner or Model) and the official package."""

    def __init__(self, impl: str, path: str, cfg: RWKV7Config, device: torch.device):
        self.impl, self.path, self.cfg, self.device = impl, path, cfg, device
        self.extra: dict = {}

    def close(self) -> None:
        pass

    def decode_run(self, batch: int):
        """A function: (B tokens, n) -> the B tokens after n greedy steps of B sequences."""
        step = self.decoder(batch)

        def run(toks, n):
            for _ in range(n):
                toks = step(toks)
            return toks
        return run


class _NativeEngine(_Engine):
    def __init__(self, cfg, sd, strategy, max_batch: int, prefill_chunk: int | None):
        dev = torch.device(strategy.device)
        runner_cls = None
        # RWKVRT_BENCH_RUNNER=1 forces the runner (eager) on CPU, =0 the plain Model on CUDA
        want = os.environ.get("RWKVRT_BENCH_RUNNER", "1" if dev.type == "cuda" else "0") == "1"
        if want:
            try:
                from .engine.runner import DecodeRunner as runner_cls
                from .models.rwkv7_fast import RWKV7Fast
            except ImportError:
                runner_cls = None
        if runner_cls is not None:
            # RWKVRT_DECODE_FUSED=0/1 and RWKVRT_DECODE_MAX_BATCH=N: A/B knobs of the decode ops path
            fused = os.environ.get("RWKVRT_DECODE_FUSED", "auto")
            mb = os.environ.get("RWKVRT_DECODE_MAX_BATCH", "4")
            if not mb.isdigit():
                raise RWKVRTError("bad RWKVRT_DECODE_MAX_BATCH", expected="a non-negative integer", got=repr(mb),
                                  fix="unset it or set e.g. RWKVRT_DECODE_MAX_BATCH=4")
            fkw = {"decode_max_batch": int(mb)}
            if fused != "auto":
                fkw["decode_fused"] = fused == "1"
            fast = RWKV7Fast(cfg, sd, device=dev, dtype=strategy.dtype, **fkw)
            kw = {} if prefill_chunk is None else {"prefill_chunk": prefill_chunk}
            self.runner = runner_cls(fast, max_batch, **kw)
            self.slots = [self.runner.alloc() for _ in range(max_batch)]
            path = "runner-graphs" if self.runner.use_graphs else "runner-eager"
            if fast.decode_fused:
                path += f"+decode-ops(b<={fast.decode_max_batch})"
            if os.environ.get("RWKVRT_LOOKAHEAD", "1") != "0":
                path += "+lookahead"
            if fast.ffn_sparse:
                path += "+ffn-sparse"
            if fast.layer_fused:
                path += "+decode-layer"
            elif fast.ln_fused:
                path += "+ln-gemv"
        else:
            from .model import Model

            self.runner, self.model = None, Model(cfg, sd, strategy)
            path = "eager"
        super().__init__("rwkvrt", path, cfg, dev)
        if runner_cls is not None and fast.ffn_sparse:
            # the sparse FFN value op's speed depends on the weights: say how sparse these are
            self.extra["ffn_zero_frac"] = round(ffn_zero_fraction(fast), 4)

    def prefill(self, tokens: list[int]) -> None:
        if self.runner is not None:
            self.runner.reset(self.slots[0])
            self.runner.prefill(self.slots[0], tokens)
        else:
            self.model.forward(tokens, None)

    def decoder(self, batch: int):
        """A function: list of B tokens -> list of B next tokens (greedy), one step of B sequences."""
        if self.runner is not None:
            sl = self.slots[:batch]
            for s in sl:
                self.runner.reset(s)
            return lambda toks: self.runner.step(sl, toks).tolist()
        state = self.model.zero_state(batch)

        def step(toks):
            logits, _ = self.model.forward(torch.tensor(toks, device=self.device).view(batch, 1), state)
            return logits.argmax(dim=-1).tolist()
        return step

    def decode_run(self, batch: int):
        """The runner's multi-step decode (the step queued ahead of the host's read-back, as a
        generation loop runs; RWKVRT_LOOKAHEAD=0 reads each step before queueing the next)."""
        if self.runner is None:
            return super().decode_run(batch)
        la = os.environ.get("RWKVRT_LOOKAHEAD", "1") != "0"
        sl = self.slots[:batch]
        for s in sl:
            self.runner.reset(s)

        def run(toks, n):
            for row in self.runner.decode(sl, toks, n, lookahead=la):
                toks = row
            return toks
        return run

    def close(self) -> None:
        self.runner = self.model = None


def _import_official(device_type: str) -> tuple[type, str]:
    """rwkv.model.RWKV with RWKV_V7_ON=1 (and its CUDA kernel on a GPU; rebuilt without it on failure)."""
    os.environ["RWKV_V7_ON"] = "1"
    os.environ["RWKV_JIT_ON"] = "1"
    if "rwkv.model" in sys.modules:  # already imported in this process: its kernel choice is fixed
        return sys.modules["rwkv.model"].RWKV, os.environ.get("RWKV_CUDA_ON", "0")
    # on a GPU try the official CUDA kernel first, unless the caller turned it off (RWKV_CUDA_ON=0)
    tries = ["1", "0"] if device_type == "cuda" and os.environ.get("RWKV_CUDA_ON") != "0" else ["0"]
    for i, flag in enumerate(tries):
        os.environ["RWKV_CUDA_ON"] = flag
        try:
            with _stdout_to_stderr():
                from rwkv.model import RWKV
            return RWKV, flag
        except Exception as e:  # noqa: BLE001 - the kernel build can fail many ways; retry without it
            for k in [k for k in sys.modules if k == "rwkv" or k.startswith("rwkv.")]:
                del sys.modules[k]
            if i == len(tries) - 1:
                raise RWKVRTError("cannot import the official rwkv package", expected="rwkv==0.8.32 installed",
                                  got=f"{type(e).__name__}: {e}", fix="pip install rwkv==0.8.32") from e
            print(f"official rwkv with RWKV_CUDA_ON=1 failed ({type(e).__name__}: {e}); retrying with 0",
                  file=sys.stderr)
    raise AssertionError("unreachable")


class _OfficialEngine(_Engine):
    def __init__(self, cfg, pth: Path, strategy):
        from importlib.metadata import version

        dev = torch.device(strategy.device)
        RWKV, cuda_on = _import_official(dev.type)
        dt = DTYPE_NAME[strategy.dtype]
        with _stdout_to_stderr():
            self.m = RWKV(model=str(pth)[: -len(".pth")], strategy=f"{dev.type} {dt}")
        super().__init__(f"rwkv-{version('rwkv')}", "official-eager", cfg, dev)
        self.extra = {"rwkv_cuda_on": cuda_on}

    def prefill(self, tokens: list[int]) -> None:
        self.m.forward(tokens, None)

    def decoder(self, batch: int):
        assert batch == 1, "the official package decodes one sequence per call"
        st = [None]

        def step(toks):
            out, st[0] = self.m.forward([toks[0]], st[0])
            return [int(out.argmax())]
        return step

    def close(self) -> None:
        self.m = None


def _time_prefill(eng, n: int, warmup: int, repeat: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed + n)
    toks = torch.randint(0, eng.cfg.vocab_size, (n,), generator=g).tolist()
    with torch.inference_mode():
        for _ in range(max(1, warmup)):
            eng.prefill(toks)
        _sync(eng.device)
        times = []
        for _ in range(max(1, repeat)):
            t0 = time.perf_counter()
            eng.prefill(toks)
            _sync(eng.device)
            times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    return {"tokens_per_s": round(n / t, 2), "ms_total": round(t * 1e3, 3),
            "best_tokens_per_s": round(n / min(times), 2)}


def _time_decode(eng, batch: int, n: int, warmup: int, repeat: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed + batch)
    toks = torch.randint(0, eng.cfg.vocab_size, (batch,), generator=g).tolist()
    with torch.inference_mode():
        run = eng.decode_run(batch)
        # warm-up also captures the runner's CUDA graph for this bucket
        toks = run(toks, max(1, warmup * max(1, n // 8)))
        _sync(eng.device)
        times = []
        for _ in range(max(1, repeat)):
            t0 = time.perf_counter()
            toks = run(toks, n)
            _sync(eng.device)
            times.append((time.perf_counter() - t0) / n)
    t = statistics.median(times)
    return {"tokens_per_s": round(batch / t, 2), "ms_per_token": round(t * 1e3, 4),
            "best_tokens_per_s": round(batch / min(times), 2), "_step_s": t}


def _emit(line: dict, json_only: bool) -> None:
    print(json.dumps(line), flush=True)
    if not json_only:
        if "error" in line:
            msg = f"error: {line['error']}"
        elif line.get("test") == "ceilings":
            msg = (f"copy {line['copy_GBps']} GB/s, matmul {line['matmul_TFLOPs']} TFLOP/s "
                   f"({line['matmul_dtype']}), gemv {line['gemv_GBps']} GB/s")
        else:
            pct = line.get("pct_of_decode_floor", line.get("pct_of_prefill_floor"))
            msg = f"{line['tokens_per_s']:.1f} tok/s ({pct}% of floor)"
        what = "ceilings" if line.get("test") == "ceilings" else \
            f"{line.get('impl', '')} {line.get('shape', '')} {line.get('test')} b{line.get('batch', '')}"
        print(f"[bench] {what}: {msg}", file=sys.stderr, flush=True)


def _run_engine(eng, args, base: dict, mb: dict, ceil: dict, batches: list[int], pps: list[int]) -> None:
    """Every prefill and decode configuration of one engine; each failure becomes an error line."""
    common = {**base, "impl": eng.impl, "path": eng.path, **eng.extra}
    for n in pps:
        line = {**common, "test": f"pp{n}", "batch": 1}
        try:
            bc.reset_peak(eng.device)
            r = _time_prefill(eng, n, args.warmup, args.repeat, args.seed)
            line.update(r, pct_of_prefill_floor=round(100 * r["tokens_per_s"] / bc.prefill_floor(mb, ceil), 2),
                        peak_mem_GB=bc.peak_mem_gb(eng.device))
        except Exception as e:  # noqa: BLE001 - one failed configuration must not end the run
            line["error"] = f"{type(e).__name__}: {e}"[:400]
            _after_error(eng.device)
        _emit(line, args.json_only)
    for b in batches:
        line = {**common, "test": f"tg{args.tg}", "batch": b}
        try:
            bc.reset_peak(eng.device)
            r = _time_decode(eng, b, args.tg, args.warmup, args.repeat, args.seed)
            step_s = r.pop("_step_s")
            step_bytes = mb["weights_bytes"] + b * mb["state_bytes_per_seq"]
            line.update(r, achieved_GBps=round(step_bytes / step_s / 1e9, 2),
                        pct_of_decode_floor=round(100 * r["tokens_per_s"] / bc.decode_floor(mb, ceil, b), 2),
                        peak_mem_GB=bc.peak_mem_gb(eng.device))
        except Exception as e:  # noqa: BLE001
            line["error"] = f"{type(e).__name__}: {e}"[:400]
            _after_error(eng.device)
        _emit(line, args.json_only)


def _after_error(dev: torch.device) -> None:
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by ``args`` (see ``add_arguments``); returns the exit code.

    Raises RWKVRTError for a bad shape or strategy; per-configuration failures become JSON lines."""
    strategy = parse_strategy(args.strategy or ("cuda fp16" if torch.cuda.is_available() else "cpu fp32"))
    dev = torch.device(strategy.device)
    if dev.type == "cuda" and dev.index is not None:
        torch.cuda.set_device(dev)
    cfg, sd, ckpt = resolve_shape(args.shape, dev, strategy.dtype, args.seed)
    meta = bc.run_meta(dev)
    strat = f"{strategy.device} {DTYPE_NAME[strategy.dtype]}"
    base = {**meta, "shape": args.shape, "strategy": strat}
    ceil = bc.measure_ceilings(dev, strategy.dtype)
    mb = bc.model_bytes(cfg, strategy.dtype)
    _emit({**meta, "test": "ceilings", "strategy": strat, **ceil, "floor_note": bc.FLOOR_NOTE}, args.json_only)
    base.update(params=cfg.n_params(), block_params=mb["block_params"], weights_bytes=mb["weights_bytes"])

    tmp = None
    pth = ckpt if ckpt is not None and str(ckpt).endswith(".pth") else None
    if args.compare and pth is None:
        from .models.shapes import save_official_pth

        tmp = tempfile.TemporaryDirectory(prefix="rwkvrt-bench-")
        pth = Path(tmp.name) / "model.pth"
        save_official_pth({k: v.to("cpu") for k, v in sd.items()}, pth)
    batches = sorted(set(args.batch))
    rc = 0
    try:
        try:
            eng = _NativeEngine(cfg, sd, strategy, max(batches), args.prefill_chunk)
        except Exception as e:  # noqa: BLE001
            _emit({**base, "impl": "rwkvrt", "test": "load", "error": f"{type(e).__name__}: {e}"[:400]}, args.json_only)
            eng, rc = None, 1
        del sd
        if eng is not None:
            _run_engine(eng, args, base, mb, ceil, batches, args.pp)
            eng.close()
            del eng
        _after_error(dev)
        if args.compare:
            try:
                off = _OfficialEngine(cfg, pth, strategy)
            except Exception as e:  # noqa: BLE001
                _emit({**base, "impl": "rwkv", "test": "load", "error": f"{type(e).__name__}: {e}"[:400]},
                      args.json_only)
                return 1
            _run_engine(off, args, base, mb, ceil, [1], args.compare_pp or args.pp)
            off.close()
            del off
            _after_error(dev)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return rc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rwkvrt bench", description=__doc__.splitlines()[0])
    add_arguments(p)
    try:
        return run(p.parse_args(argv))
    except RWKVRTError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
