"""Strategy strings ("cpu fp32", "cuda fp16", "cuda:1 bf16") -> device and dtype."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import StrategyError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DEFAULT_DTYPE = {"cpu": "fp32", "cuda": "fp16"}
EXAMPLES = "'cpu fp32', 'cpu bf16', 'cuda fp16', 'cuda bf16', 'cuda fp32' or 'cuda:1 fp16'"


@dataclass(frozen=True)
class Strategy:
    device: str
    dtype: torch.dtype

    @property
    def device_type(self) -> str:
        return torch.device(self.device).type


def parse_strategy(text: str) -> Strategy:
    if not isinstance(text, str) or not text.strip():
        raise StrategyError("empty strategy", expected=EXAMPLES, got=repr(text), fix="pass one of those")
    parts = text.split()
    if len(parts) > 2 or any(c in text for c in "*->"):
        raise StrategyError("rwkvrt runs the whole model on one device with one dtype", expected=EXAMPLES,
                            got=repr(text), fix="layer-split strategies of older RWKV versions are not supported; "
                            "drop the '*N ->' parts")
    dev = parts[0].lower()
    base = dev.split(":")[0]
    if base not in DEFAULT_DTYPE or (":" in dev and not dev.split(":", 1)[1].isdigit()):
        raise StrategyError("unknown device in strategy", expected=EXAMPLES, got=repr(text),
                            fix="use 'cpu' or 'cuda' (optionally 'cuda:N')")
    dt = parts[1].lower() if len(parts) == 2 else DEFAULT_DTYPE[base]
    if dt not in DTYPES:
        raise StrategyError("unknown dtype in strategy", expected="fp32, fp16 or bf16", got=repr(text),
                            fix=f"use for example {EXAMPLES}")
    if base == "cuda":
        if not torch.cuda.is_available():
            raise StrategyError("strategy asks for CUDA but no CUDA GPU is visible to PyTorch", expected="a CUDA GPU",
                                got=f"torch {torch.__version__} without CUDA", fix="use 'cpu fp32' or install a CUDA build of torch")
        idx = int(dev.split(":")[1]) if ":" in dev else 0
        if idx >= torch.cuda.device_count():
            raise StrategyError("strategy names a GPU that does not exist", expected=f"cuda:0..cuda:{torch.cuda.device_count() - 1}",
                                got=repr(dev), fix="pick an existing GPU index")
    return Strategy(device=dev, dtype=DTYPES[dt])
