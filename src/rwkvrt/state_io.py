"""State files: save a state after a prompt, load it later to continue exactly.

rwkvrt's format is a safetensors file with tensors ``att_x``, ``wkv``, ``ffn_x``
(the ``State`` fields, all rows of the batch) and metadata naming the model's shape.
Official "state tuning" files (a .pth with ``blocks.N.att.time_state`` [H, N, N],
stored [head, key, value]) load too: their WKV matrices are transposed into
rwkvrt's [head, value, key] layout and the token-shift vectors start at zero.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch

from .errors import StateError
from .state import State

log = logging.getLogger("rwkvrt")
FORMAT = "rwkvrt-state"


def model_fingerprint(model) -> str:
    """A short hash of the model's shape and a slice of its embedding, to warn on states from other weights."""
    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    h.update(model.net.emb[:4, :16].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def save_state(state: State, path, model=None) -> Path:
    """Write ``state`` (any batch size) to ``path`` atomically; pass ``model`` to record its fingerprint."""
    from safetensors.torch import save_file

    if not isinstance(state, State):
        raise StateError("save_state takes a rwkvrt.State", expected="the state returned by forward",
                         got=type(state).__name__, fix="pass the state object returned by model.forward")
    p = Path(path)
    meta = {"format": FORMAT, "version": "1", "n_layer": str(state.n_layer), "n_embd": str(state.att_x.shape[2]),
            "n_head": str(state.wkv.shape[2]), "head_size": str(state.wkv.shape[3]),
            "batch": str(state.batch_size), "dtype": str(state.dtype).replace("torch.", "")}
    if model is not None:
        meta["model_fingerprint"] = model_fingerprint(model)
    tensors = {"att_x": state.att_x.detach().cpu().contiguous(), "wkv": state.wkv.detach().cpu().contiguous(),
               "ffn_x": state.ffn_x.detach().cpu().contiguous()}
    if p.is_dir() or not p.parent.is_dir():
        raise StateError("cannot write the state file", expected="a file path in an existing directory",
                         got=str(p), fix="create the directory first or pick another file name")
    tmp = p.with_name(p.name + ".tmp")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return p


def _head8(p: Path) -> bytes:
    with open(p, "rb") as f:
        return f.read(8)


def _from_time_state(sd: dict, model, p: Path) -> State:
    cfg = model.config
    st = model.zero_state(1)
    want = (cfg.n_head, cfg.head_size, cfg.head_size)
    for i in range(cfg.n_layer):
        key = f"blocks.{i}.att.time_state"
        if key not in sd:
            raise StateError(f"state-tuning file '{p}' has no '{key}'", expected=f"{cfg.n_layer} layers",
                             got=f"{sum(k.endswith('time_state') for k in sd)} layers",
                             fix="use a state trained for this model")
        t = sd[key]
        if tuple(t.shape) != want:
            raise StateError(f"state-tuning file '{p}' does not fit this model", expected=f"{key} of shape {want}",
                             got=str(tuple(t.shape)), fix="use a state trained for this model")
        # stored [head, key, value] by the state-tuning trainers; rwkvrt keeps [head, value, key]
        st.wkv[i, 0].copy_(t.float().transpose(1, 2))
    return st


def load_state(path, model) -> State:
    """Read a state file (rwkvrt's or an official state-tuning .pth) for ``model``; check it fits."""
    p = Path(path)
    if not p.is_file():
        alt = Path(str(p) + ".pth")
        if alt.is_file():
            p = alt
        else:
            raise StateError("state file not found", expected="a file written by rwkvrt.save_state or a .pth state",
                             got=f"'{p}'", fix="check the path")
    cfg = model.config
    head = _head8(p) if p.stat().st_size >= 8 else b""
    if p.suffix == ".pth" or head[:2] == b"PK":
        try:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for corrupt files
            raise StateError(f"cannot read '{p}'", expected="a state-tuning .pth", got=str(e).splitlines()[0][:120],
                             fix="check the file") from None
        if not isinstance(sd, dict) or not any(str(k).endswith("att.time_state") for k in sd):
            raise StateError(f"'{p}' is not a state file", expected="tensors 'blocks.N.att.time_state'",
                             got=f"{list(sd)[:3] if isinstance(sd, dict) else type(sd).__name__}",
                             fix="pass a state saved by rwkvrt or a state-tuning file")
        return _from_time_state(sd, model, p)
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for bad headers
        raise StateError(f"cannot read '{p}' as a state file (truncated?)", expected="a file written by save_state",
                         got=str(e)[:120], fix="save the state again") from None
    if meta.get("format") != FORMAT or set(tensors) != {"att_x", "wkv", "ffn_x"}:
        raise StateError(f"'{p}' is not an rwkvrt state file", expected=f"format '{FORMAT}'",
                         got=meta.get("format", "no format tag"), fix="pass a file written by rwkvrt.save_state")
    want = (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.head_size)
    got = tuple(int(meta.get(k, -1)) for k in ("n_layer", "n_embd", "n_head", "head_size"))
    if got != want:
        raise StateError(f"state file '{p}' was made for another model",
                         expected=f"layers, width, heads, head size = {want}", got=str(got),
                         fix="load it with the model it was saved from")
    fp = meta.get("model_fingerprint")
    if fp and fp != model_fingerprint(model):
        log.warning("state file %s was saved with different weights of the same shape", p)
    st = State(tensors["att_x"], tensors["wkv"], tensors["ffn_x"])
    return st.to(model.device, model.dtype)
