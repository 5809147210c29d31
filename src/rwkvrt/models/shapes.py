"""Published RWKV-7 model shapes and random-weight checkpoints in the official format.

Speed does not depend on the weights' values, and no weights can be downloaded in
tests, so benchmarks and parity tests run on random weights at the real shapes,
scaled so that activations stay in a sane range through every layer.
"""
from __future__ import annotations

import math

import torch

from .config import RWKV7Config, expected_shapes


def _lora_dim(C: int, factor: float) -> int:
    # the rule of BlinkDL's RWKV-7 training code, rounded to multiples of 32
    return max(32, int(round(factor * math.sqrt(C) / 32)) * 32)


def make_config(n_layer: int, n_embd: int, vocab_size: int = 65536, *, head_size: int = 64,
                tokenizer: str | None = None) -> RWKV7Config:
    return RWKV7Config(n_layer=n_layer, n_embd=n_embd, head_size=head_size, vocab_size=vocab_size,
                       d_decay=_lora_dim(n_embd, 2.5), d_aaa=_lora_dim(n_embd, 2.5), d_mv=_lora_dim(n_embd, 1.7),
                       d_gate=_lora_dim(n_embd, 5.0), d_ffn=4 * n_embd, tokenizer=tokenizer)


# name -> (n_layer, n_embd) of BlinkDL's released RWKV-7 "World" / "G1" models
PUBLISHED = {"0.1B": (12, 768), "0.4B": (24, 1024), "1.5B": (24, 2048), "2.9B": (32, 2560),
             "7.2B": (32, 4096), "13.3B": (61, 4096)}


def published_config(name: str) -> RWKV7Config:
    from ..errors import RWKVRTError

    if name not in PUBLISHED:
        raise RWKVRTError("unknown model shape", expected=f"one of {', '.join(PUBLISHED)}", got=repr(name),
                          fix="pick a published shape or pass a checkpoint path")
    L, C = PUBLISHED[name]
    return make_config(L, C, 65536, tokenizer="rwkv_vocab_v20230424")


def random_state_dict(cfg: RWKV7Config, *, seed: int = 0, device="cpu",
                      dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A random checkpoint with official names and shapes whose activations stay O(1) through all layers."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    C, L = cfg.n_embd, cfg.n_layer

    def rnd(shape, std=1.0, mean=0.0):
        t = torch.randn(shape, generator=g) * std + mean
        return t

    out: dict[str, torch.Tensor] = {}
    for name, shape in expected_shapes(cfg).items():
        fan_in = shape[-1]
        last = name.rsplit(".", 1)[-1] if not name.endswith((".weight", ".bias")) else name.rsplit(".", 2)[-2] + "." + name.rsplit(".", 1)[-1]
        layer = int(name.split(".")[1]) if name.startswith("blocks.") else 0
        depth = (layer + 1) / L
        if name == "emb.weight":
            t = rnd(shape, 1.0)
        elif last in ("ln0.weight", "ln1.weight", "ln2.weight", "ln_out.weight"):
            t = rnd(shape, 0.1, 1.0)
        elif last == "ln_x.weight":
            t = rnd(shape, 0.05, depth ** 0.7)
        elif last.endswith(".bias"):
            t = rnd(shape, 0.05)
        elif last in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"):
            t = torch.rand(shape, generator=g)
        elif last == "w0":
            # spread of per-channel decay speeds like a trained model's
            t = torch.linspace(-5.0, 1.0, C).view(shape) + rnd(shape, 0.3)
        elif last in ("a0",):
            t = rnd(shape, 0.5)
        elif last == "v0":
            t = rnd(shape, 0.5, 1.0)
        elif last in ("w1", "a1", "v1", "g1"):
            t = rnd(shape, 1.0 / math.sqrt(shape[0]))
        elif last in ("w2", "a2", "v2"):
            t = rnd(shape, 0.3 / math.sqrt(shape[0]))
        elif last == "g2":
            t = rnd(shape, 1.0 / math.sqrt(shape[0]))
        elif last == "k_k":
            t = rnd(shape, 0.1, 0.85)
        elif last == "k_a":
            t = rnd(shape, 0.1, 1.0)
        elif last == "r_k":
            t = rnd(shape, 0.1)
        elif last in ("output.weight",):
            t = rnd(shape, 0.5 / math.sqrt(fan_in))
        elif name.endswith("ffn.value.weight"):
            t = rnd(shape, 0.5 / math.sqrt(fan_in))
        else:  # receptance, key, value, ffn key, head
            t = rnd(shape, 1.0 / math.sqrt(fan_in))
        out[name] = t.to(device=device, dtype=dtype)
    return out


def save_official_pth(sd: dict[str, torch.Tensor], path) -> None:
    """Write a state dict as an official-style .pth (what BlinkDL's loaders read)."""
    torch.save({k: v.contiguous() for k, v in sd.items()}, str(path))
