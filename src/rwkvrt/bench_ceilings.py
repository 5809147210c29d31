"""Speed ceilings measured in the running process, the floors derived from them, and run metadata.

Floors (the best a runtime could do on this device, from the ceilings):
- decode: a step must read every weight it uses once (all block weights, the head, one
  embedding row per sequence) plus, per sequence, its WKV state read and written
  (L*H*N*N*4 bytes each way, fp32). tok/s floor = B * copy_bandwidth / (W + B * S).
- prefill: about 2 FLOPs per block parameter per token (no embedding, no head; the head
  runs once on the last token). tok/s floor = matmul_rate / (2 * block_params).
"""
from __future__ import annotations

import math
import os
import platform
import subprocess
import time
from pathlib import Path

import torch

from .models.config import RWKV7Config, expected_shapes

FLOOR_NOTE = ("decode floor = B*copy_GBps/(W + B*S), W = bytes of all block weights + head + one emb row "
              "per sequence in the run dtype, S = L*H*N*N*4*2 (fp32 WKV state read+written); prefill floor = "
              "matmul TFLOP/s / (2 * block params per token), no embedding, no head")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_time(fn, device: torch.device, reps: int) -> float:
    """Seconds of the fastest of ``reps`` calls of ``fn`` (after one warm call)."""
    fn()
    _sync(device)
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


@torch.inference_mode()
def measure_ceilings(device: torch.device, dtype: torch.dtype, *, reps: int = 5) -> dict:
    """Copy bandwidth (GB/s, bytes read + written), matmul rate (TFLOP/s, ``dtype``), GEMV bandwidth.

    Sizes: on CUDA a 1 GiB source (2 GiB moved), 8192^3 matmul, a [16384, 4096] weight; on CPU
    a 128 MiB source, 1024^3 matmul and a [4096, 1024] weight (fp32 unless bf16 was asked).
    RWKVRT_BENCH_COPY_MB / RWKVRT_BENCH_MM_N override the copy size and the matmul size.
    """
    cuda = device.type == "cuda"
    copy_mb = int(os.environ.get("RWKVRT_BENCH_COPY_MB", 1024 if cuda else 128))
    mm_n = int(os.environ.get("RWKVRT_BENCH_MM_N", 8192 if cuda else 1024))
    gemv_c = 4096 if cuda else 1024
    src = torch.empty(copy_mb * 2**20 // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    t_copy = _best_time(lambda: dst.copy_(src), device, reps)
    copy_gbps = 2 * src.numel() * 4 / t_copy / 1e9
    del src, dst
    a = torch.randn(mm_n, mm_n, device=device).to(dtype)
    b = torch.randn(mm_n, mm_n, device=device).to(dtype)
    t_mm = _best_time(lambda: torch.matmul(a, b), device, reps)
    tflops = 2 * mm_n ** 3 / t_mm / 1e12
    del a, b
    w = torch.randn(4 * gemv_c, gemv_c, device=device).to(dtype)
    x = torch.randn(1, gemv_c, device=device).to(dtype)
    # many products per timing so launch overhead does not dominate a ~50 us kernel
    t_mv = _best_time(lambda: [torch.nn.functional.linear(x, w) for _ in range(20)], device, reps) / 20
    gemv_gbps = w.numel() * w.element_size() / t_mv / 1e9
    del w, x
    if cuda:
        torch.cuda.empty_cache()
    return {"copy_GBps": round(copy_gbps, 2), "copy_MB": copy_mb, "matmul_TFLOPs": round(tflops, 3),
            "matmul_n": mm_n, "matmul_dtype": str(dtype).replace("torch.", ""),
            "gemv_GBps": round(gemv_gbps, 2), "gemv_shape": [4 * gemv_c, gemv_c]}


def model_bytes(cfg: RWKV7Config, dtype: torch.dtype) -> dict:
    """Parameter counts and bytes used by the floors (every tensor counted in ``dtype``)."""
    es = torch.empty((), dtype=dtype).element_size()
    block = sum(math.prod(s) for n, s in expected_shapes(cfg).items() if n.startswith("blocks.") and ".ln0." not in n)
    head = cfg.vocab_size * cfg.n_embd
    weights = (block + head + cfg.n_embd) * es  # + one embedding row
    state = cfg.n_layer * cfg.n_head * cfg.head_size ** 2 * 4 * 2
    return {"block_params": block, "head_params": head, "weights_bytes": weights, "state_bytes_per_seq": state}


def decode_floor(mb: dict, ceil: dict, batch: int) -> float:
    """Decode tokens/s floor at ``batch`` sequences per step."""
    step_bytes = mb["weights_bytes"] + batch * mb["state_bytes_per_seq"]
    return batch * ceil["copy_GBps"] * 1e9 / step_bytes


def prefill_floor(mb: dict, ceil: dict) -> float:
    return ceil["matmul_TFLOPs"] * 1e12 / (2 * mb["block_params"])


def git_sha() -> str:
    """RWKVRT_GIT_SHA when set (a copied tree whose .git is stale, e.g. the device machine), else git's."""
    if os.environ.get("RWKVRT_GIT_SHA"):
        return os.environ["RWKVRT_GIT_SHA"]
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5)
        if out.returncode == 0 and out.stdout.strip():
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get("RWKVRT_GIT_SHA", "unknown")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return platform.processor() or "cpu"


def run_meta(device: torch.device) -> dict:
    """Fields shared by every JSON line of a run."""
    from . import __version__

    meta = {"git_sha": git_sha(), "device": device_name(device), "torch": torch.__version__, "rwkvrt": __version__}
    if device.type == "cuda":
        try:
            import triton

            meta["triton"] = triton.__version__
        except ImportError:
            meta["triton"] = None
    return meta


def peak_mem_gb(device: torch.device) -> float:
    """Peak allocated device memory since the last reset (CUDA), or the process peak RSS (CPU)."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 1e9, 3)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 3)  # kB on Linux


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _init_rule(name: str, cfg: RWKV7Config) -> tuple[str, float, float]:
    """(kind, std, mean) of one tensor, following models.shapes.random_state_dict's scaling."""
    shape = expected_shapes(cfg)[name]
    leaf = name.rsplit(".", 2)[-2] + "." + name.rsplit(".", 1)[-1] if name.endswith((".weight", ".bias")) \
        else name.rsplit(".", 1)[-1]
    depth = ((int(name.split(".")[1]) if name.startswith("blocks.") else 0) + 1) / cfg.n_layer
    fan_in = shape[-1]
    if name == "emb.weight":
        return "n", 1.0, 0.0
    if leaf in ("ln0.weight", "ln1.weight", "ln2.weight", "ln_out.weight"):
        return "n", 0.1, 1.0
    if leaf == "ln_x.weight":
        return "n", 0.05, depth ** 0.7
    if leaf.endswith(".bias"):
        return "n", 0.05, 0.0
    if leaf in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"):
        return "u", 1.0, 0.0
    if leaf == "w0":
        return "w0", 0.3, 0.0
    if leaf == "a0":
        return "n", 0.5, 0.0
    if leaf == "v0":
        return "n", 0.5, 1.0
    if leaf in ("w1", "a1", "v1", "g1", "g2"):
        return "n", 1.0 / math.sqrt(shape[0]), 0.0
    if leaf in ("w2", "a2", "v2"):
        return "n", 0.3 / math.sqrt(shape[0]), 0.0
    if leaf in ("k_k", "k_a"):
        return "n", 0.1, 0.85 if leaf == "k_k" else 1.0
    if leaf == "r_k":
        return "n", 0.1, 0.0
    if leaf == "output.weight" or name.endswith("ffn.value.weight"):
        return "n", 0.5 / math.sqrt(fan_in), 0.0
    return "n", 1.0 / math.sqrt(fan_in), 0.0


@torch.inference_mode()
def random_weights(cfg: RWKV7Config, device: torch.device, dtype: torch.dtype, *, seed: int = 0) -> dict:
    """Random official-format weights made directly on ``device`` in ``dtype`` (same scaling as
    ``models.shapes.random_state_dict``, which builds fp32 on the CPU: minutes for 7.2B)."""
    if device.type == "cpu":
        from .models.shapes import random_state_dict

        return random_state_dict(cfg, seed=seed, dtype=dtype)
    return _random_weights_rng(cfg, device, dtype, seed)


def _random_weights_rng(cfg: RWKV7Config, device: torch.device, dtype: torch.dtype, seed: int) -> dict:
    g = torch.Generator(device=device).manual_seed(seed)
    out = {}
    for name, shape in expected_shapes(cfg).items():
        kind, std, mean = _init_rule(name, cfg)
        if kind == "u":
            t = torch.rand(shape, generator=g, device=device, dtype=dtype)
        else:
            t = torch.randn(shape, generator=g, device=device, dtype=dtype).mul_(std).add_(mean)
            if kind == "w0":
                t += torch.linspace(-5.0, 1.0, cfg.n_embd, device=device, dtype=dtype).view(shape)
        out[name] = t
    return out
