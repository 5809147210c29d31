"""Shared fixtures: random-weight checkpoints in the official format, the official package, tolerances."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("RWKV_V7_ON", "1")
os.environ.setdefault("RWKV_JIT_ON", "1")
os.environ.setdefault("RWKV_CUDA_ON", "0")

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
if not FIXTURES.is_dir():  # CI clones main with shared/ beside it; a checkout may also carry shared/ inside
    FIXTURES = Path(__file__).resolve().parents[1] / "shared" / "fixtures"

# One tolerance table, metric max|ours - ref| / std(ref), per activation dtype.
TOL = {torch.float32: 1e-4, torch.bfloat16: 0.1, torch.float16: 0.05}

# (n_layer, n_embd, vocab): includes a vocab that is not a multiple of 64 and a full World vocab
PARITY_SHAPES = [(2, 128, 1000), (3, 192, 301), (2, 64, 65536)]

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _triton_interpreter() -> bool:
    if os.environ.get("TRITON_INTERPRET") != "1":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="session")
def kernel_device() -> str:
    """Device for Triton kernel tests: "cuda" on a GPU; "cpu" when TRITON_INTERPRET=1 and triton is
    installed (the interpreter runs kernels on CPU: correctness only, slow); otherwise the test skips."""
    if torch.cuda.is_available():
        return "cuda"
    if _triton_interpreter():
        return "cpu"
    pytest.skip("needs a CUDA GPU (or TRITON_INTERPRET=1 with triton installed)")


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    ours, ref = ours.double().cpu(), ref.double().cpu()
    return float((ours - ref).abs().max() / ref.std())


@pytest.fixture(scope="session")
def ckpt_factory(tmp_path_factory):
    """(n_layer, n_embd, vocab, seed) -> path of an official-format .pth with random weights (cached)."""
    from rwkvrt.models.shapes import make_config, random_state_dict, save_official_pth

    cache = {}
    root = tmp_path_factory.mktemp("ckpt")

    def make(n_layer: int, n_embd: int, vocab: int, seed: int = 0) -> Path:
        key = (n_layer, n_embd, vocab, seed)
        if key not in cache:
            cfg = make_config(n_layer, n_embd, vocab)
            p = root / f"rwkv7-L{n_layer}-C{n_embd}-V{vocab}-s{seed}.pth"
            save_official_pth(random_state_dict(cfg, seed=seed), p)
            cache[key] = p
        return cache[key]

    return make


@pytest.fixture(scope="session")
def official_factory(ckpt_factory):
    """Same key -> the official rwkv package's RWKV-7 model on 'cpu fp32' (cached; slow to build)."""
    rwkv_model = pytest.importorskip("rwkv.model")
    cache = {}

    def make(n_layer: int, n_embd: int, vocab: int, seed: int = 0):
        key = (n_layer, n_embd, vocab, seed)
        if key not in cache:
            p = ckpt_factory(*key)
            cache[key] = rwkv_model.RWKV(model=str(p)[: -len(".pth")], strategy="cpu fp32")
        return cache[key]

    return make


# the small checkpoints many test modules share (a byte-level and a World-vocab one); the models are
# loaded once per module, as each module had them before
@pytest.fixture(scope="session")
def byte_ckpt(ckpt_factory):
    return ckpt_factory(2, 64, 256, 0)


@pytest.fixture(scope="module")
def byte_model(byte_ckpt):
    import rwkvrt
    return rwkvrt.load(byte_ckpt)


@pytest.fixture(scope="session")
def world_path(ckpt_factory):
    return ckpt_factory(2, 64, 65536, 0)


@pytest.fixture(scope="module")
def world_model(world_path):
    import rwkvrt
    return rwkvrt.load(world_path)
