"""RWKV-7 model configuration, read from the tensors of an official checkpoint."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from ..errors import CheckpointError

TOKENIZER_FOR_VOCAB = {65536: "rwkv_vocab_v20230424", 256: "bytes"}


@dataclass(frozen=True)
class RWKV7Config:
    n_layer: int
    n_embd: int
    head_size: int
    vocab_size: int
    d_decay: int  # LoRA rank of w1/w2
    d_aaa: int  # LoRA rank of a1/a2
    d_mv: int  # LoRA rank of v1/v2 (value residual; absent in block 0)
    d_gate: int  # LoRA rank of g1/g2
    d_ffn: int
    tokenizer: str | None = None

    @property
    def n_head(self) -> int:
        return self.n_embd // self.head_size

    def n_params(self) -> int:
        return sum(_numel(s) for s in expected_shapes(self).values())

    def state_numel(self) -> int:
        """Numbers in one sequence's state: L * (2C + H*N*N)."""
        return self.n_layer * (2 * self.n_embd + self.n_head * self.head_size ** 2)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RWKV7Config":
        names = {f.name for f in dataclasses.fields(cls)}
        missing = names - set(d) - {"tokenizer"}
        if missing:
            raise CheckpointError("model config is incomplete", expected=f"keys {sorted(names)}",
                                  got=f"missing {sorted(missing)}", fix="re-create it with `rwkvrt convert`")
        return cls(**{k: d[k] for k in names if k in d})


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def expected_shapes(cfg: RWKV7Config) -> dict[str, tuple[int, ...]]:
    """Every tensor of an official x070 checkpoint with its shape."""
    C, V, F = cfg.n_embd, cfg.vocab_size, cfg.d_ffn
    H, N = cfg.n_head, cfg.head_size
    vec = (1, 1, C)
    s: dict[str, tuple[int, ...]] = {"emb.weight": (V, C), "blocks.0.ln0.weight": (C,), "blocks.0.ln0.bias": (C,)}
    for i in range(cfg.n_layer):
        b, att, ffn = f"blocks.{i}.", f"blocks.{i}.att.", f"blocks.{i}.ffn."
        for n in ("ln1", "ln2"):
            s[b + n + ".weight"] = (C,)
            s[b + n + ".bias"] = (C,)
        for n in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "k_k", "k_a"):
            s[att + n] = vec
        s[att + "w1"], s[att + "w2"] = (C, cfg.d_decay), (cfg.d_decay, C)
        s[att + "a1"], s[att + "a2"] = (C, cfg.d_aaa), (cfg.d_aaa, C)
        s[att + "g1"], s[att + "g2"] = (C, cfg.d_gate), (cfg.d_gate, C)
        if i > 0:
            s[att + "v0"], s[att + "v1"], s[att + "v2"] = vec, (C, cfg.d_mv), (cfg.d_mv, C)
        s[att + "r_k"] = (H, N)
        for n in ("receptance", "key", "value", "output"):
            s[att + n + ".weight"] = (C, C)
        s[att + "ln_x.weight"], s[att + "ln_x.bias"] = (C,), (C,)
        s[ffn + "x_k"] = vec
        s[ffn + "key.weight"], s[ffn + "value.weight"] = (F, C), (C, F)
    s["ln_out.weight"], s["ln_out.bias"] = (C,), (C,)
    s["head.weight"] = (V, C)
    return s


def _detect_other_version(keys) -> str | None:
    if any(k.endswith("att.time_first") for k in keys):
        return "RWKV-4"
    if any(k.endswith("att.time_maa_x") for k in keys):
        return "RWKV-6"
    if any(k.endswith("att.time_faaaa") for k in keys):
        return "RWKV-5"
    if any(k.startswith("model.layers.") or k.startswith("transformer.") for k in keys):
        return "a Hugging Face transformers model (not a BlinkDL .pth)"
    return None


def config_from_state_dict(sd, *, source: str = "checkpoint", tokenizer: str | None = None) -> RWKV7Config:
    """Read every size from the tensors and check all shapes; raise CheckpointError with the first problem."""
    keys = list(sd.keys())
    if "blocks.0.att.r_k" not in sd or "emb.weight" not in sd:
        other = _detect_other_version(keys)
        if other:
            raise CheckpointError(f"{source} is {other}, not RWKV-7", expected="an RWKV-7 'x070' checkpoint",
                                  got=other, fix="use a model whose name contains 'x070' (RWKV-7)")
        raise CheckpointError(f"{source} is not an RWKV-7 checkpoint",
                              expected="tensors such as 'emb.weight' and 'blocks.0.att.r_k'",
                              got=f"{len(keys)} tensors, e.g. {keys[:3]}",
                              fix="pass an official RWKV-7 (x070) .pth file or an rwkvrt model directory")
    if any(k.endswith("ffn.s_emb.weight") for k in keys):
        raise CheckpointError(f"{source} is a DeepEmbed RWKV-7 variant", expected="a plain x070 checkpoint",
                              got="ffn.s_emb tensors", fix="use a plain RWKV-7 checkpoint")
    V, C = sd["emb.weight"].shape
    H, N = sd["blocks.0.att.r_k"].shape
    layer_ids = {int(m.group(1)) for k in keys if (m := re.match(r"blocks\.(\d+)\.", k))}
    L = max(layer_ids) + 1

    def dim(key: str, axis: int, default: int = 0) -> int:
        return int(sd[key].shape[axis]) if key in sd else default

    cfg = RWKV7Config(
        n_layer=L, n_embd=int(C), head_size=int(N), vocab_size=int(V),
        d_decay=dim("blocks.0.att.w1", 1), d_aaa=dim("blocks.0.att.a1", 1),
        d_mv=dim("blocks.1.att.v1", 1, default=32), d_gate=dim("blocks.0.att.g1", 1),
        d_ffn=dim("blocks.0.ffn.key.weight", 0),
        tokenizer=tokenizer or TOKENIZER_FOR_VOCAB.get(int(V)),
    )
    if H * N != C:
        raise CheckpointError(f"{source} has inconsistent head sizes", expected=f"n_head * head_size == n_embd ({C})",
                              got=f"r_k of shape {(H, N)}", fix="the file is not a valid RWKV-7 checkpoint")
    check_shapes(sd, cfg, source=source)
    return cfg


def check_shapes(sd, cfg: RWKV7Config, *, source: str) -> None:
    for name, shape in expected_shapes(cfg).items():
        if name not in sd:
            raise CheckpointError(f"{source} is missing tensor '{name}'", expected=f"shape {shape}", got="nothing",
                                  fix="the file is incomplete or not an RWKV-7 checkpoint; download it again")
        got = tuple(sd[name].shape)
        # official files store r_k as [H, N] and vectors as [1, 1, C]; accept squeezed forms too
        if got != shape and tuple(s for s in got if s != 1) != tuple(s for s in shape if s != 1):
            raise CheckpointError(f"{source} has a tensor of the wrong shape: '{name}'", expected=str(shape),
                                  got=str(got), fix="the file is corrupt or from another architecture")
