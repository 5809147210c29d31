"""Checkpoint files: official BlinkDL .pth (mmap, no second copy) and rwkvrt's own directory format.

rwkvrt format: a directory holding ``model.safetensors`` (official key names and
shapes) and ``config.json`` (the RWKV7Config fields, including the tokenizer).
"""
from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import torch

from .errors import CheckpointError
from .models.config import RWKV7Config, config_from_state_dict

FORMAT_VERSION = 1


def resolve_model_path(path: str | os.PathLike) -> Path:
    """Accept 'x.pth', 'x' (official style, '.pth' added), 'x.safetensors' or an rwkvrt directory."""
    p = Path(os.path.expanduser(str(path)))
    if p.is_dir():
        if (p / "config.json").is_file() and (p / "model.safetensors").is_file():
            return p
        raise CheckpointError(f"directory '{p}' is not an rwkvrt model", expected="config.json and model.safetensors",
                              got=f"{sorted(x.name for x in p.iterdir())[:5]}",
                              fix="pass the .pth file itself, or create the directory with `rwkvrt convert`")
    if p.is_file():
        return p
    with_suffix = Path(str(p) + ".pth")
    if with_suffix.is_file():
        return with_suffix
    raise CheckpointError("model file not found", expected="an RWKV-7 .pth file or an rwkvrt model directory",
                          got=f"'{p}' (also tried '{with_suffix.name}')", fix="check the path")


def _load_pth(p: Path) -> dict[str, torch.Tensor]:
    size = p.stat().st_size
    if size == 0:
        raise CheckpointError(f"'{p}' is empty", expected="an RWKV-7 .pth checkpoint", got="0 bytes",
                              fix="download the file again")
    try:
        sd = torch.load(str(p), map_location="cpu", mmap=True, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read '{p}' as a PyTorch checkpoint (truncated or not a .pth file?)",
                              expected="a complete torch.save file", got=f"{size} bytes; {first}",
                              fix="download the file again and compare its size or checksum") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"'{p}' is not a tensor dictionary", expected="a state dict of tensors",
                              got=type(sd).__name__, fix="pass an official RWKV-7 .pth checkpoint")
    return sd


def _load_dir(p: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        meta = json.loads((p / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"'{p / 'config.json'}' is not valid JSON", expected="an rwkvrt config",
                              got=str(e)[:120], fix="re-create the directory with `rwkvrt convert`") from None
    try:
        sd = load_file(str(p / "model.safetensors"), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read '{p / 'model.safetensors'}' (truncated?)", expected="a safetensors file",
                              got=str(e)[:120], fix="re-create the directory with `rwkvrt convert`") from None
    return sd, meta


def load_state_dict(path) -> tuple[dict[str, torch.Tensor], RWKV7Config, Path]:
    """Read a checkpoint (any supported format) into official key names and shapes, plus its config."""
    p = resolve_model_path(path)
    if p.is_dir():
        sd, meta = _load_dir(p)
        cfg = config_from_state_dict(sd, source=f"'{p}'", tokenizer=meta.get("config", {}).get("tokenizer"))
        return sd, cfg, p
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            sd = load_file(str(p), device="cpu")
        except Exception as e:  # safetensors raises several types for bad headers
            raise CheckpointError(f"cannot read '{p}' as safetensors", expected="a complete safetensors file",
                                  got=str(e)[:120], fix="download the file again") from None
    else:
        sd = _load_pth(p)
    return sd, config_from_state_dict(sd, source=f"'{p}'"), p


def save_rwkvrt(sd: dict[str, torch.Tensor], cfg: RWKV7Config, out_dir, *, dtype: torch.dtype | None = None) -> Path:
    """Write ``out_dir/model.safetensors`` + ``config.json``; refuses to overwrite an existing model."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    if (out / "model.safetensors").exists():
        raise CheckpointError(f"'{out}' already holds a model", expected="a new or empty directory",
                              got="model.safetensors present", fix="choose another output directory or delete it")
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
               for k, v in sd.items()}
    tmp = out / "model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "rwkvrt", "arch": "rwkv7-x070"})
    os.replace(tmp, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps({"format_version": FORMAT_VERSION, "arch": "rwkv7-x070",
                                                 "config": cfg.to_dict()}, indent=2) + "\n")
    return out
