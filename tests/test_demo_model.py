"""The bundled byte-level demo model (src/rwkvrt/data/rwkv7-shakespeare-demo.pth).

Recipe and numbers: docs/demo-model.md. Checks that it ships, is small, is an ordinary
x070 checkpoint that the official package loads and agrees with, and has learned the
corpus (bits per byte on held-out text far below noise; readable greedy output).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import rwkvrt
from rwkvrt.models.config import TOKENIZER_FOR_VOCAB

DEMO = Path(rwkvrt.__file__).resolve().parent / "data" / "rwkv7-shakespeare-demo.pth"

# Julius Caesar, Act II Scene I (Project Gutenberg, public domain): one of the two plays
# held out of training (scripts/fetch_corpus.py VAL_WORKS).
HELD_OUT = """\
And therefore think him as a serpent's egg
Which hatch'd, would, as his kind grow mischievous;
And kill him in the shell.

[Re-enter Lucius.]

LUCIUS.
The taper burneth in your closet, sir.
Searching the window for a flint I found
This paper thus seal'd up, and I am sure
It did not lie there when I went to bed.

BRUTUS.
Get you to bed again; it is not day.
Is not tomorrow, boy, the Ides of March?

LUCIUS.
I know not, sir.

BRUTUS.
Look in the calendar, and bring me word.

LUCIUS.
I will, sir.
"""


@pytest.fixture(scope="module")
def model():
    if not DEMO.exists():
        pytest.fail(f"bundled demo model missing: {DEMO}")
    return rwkvrt.load(str(DEMO), "cpu fp32")


def test_file_ships_and_is_small():
    assert DEMO.exists()
    assert DEMO.stat().st_size <= 8 * 1000 * 1000


def test_config_and_tokenizer(model):
    cfg = model.config
    assert TOKENIZER_FOR_VOCAB[256] == "bytes"
    assert cfg.vocab_size == 256 and cfg.head_size == 64 and cfg.tokenizer == "bytes"
    assert (cfg.n_layer, cfg.n_embd) == (7, 192)
    assert model.tokenizer.encode("ROMEO:") == list(b"ROMEO:")


def test_official_tensor_format():
    sd = torch.load(str(DEMO), map_location="cpu", weights_only=True)
    assert "blocks.0.ln0.weight" in sd and "blocks.0.ln0.bias" in sd
    assert all(t.dtype == torch.bfloat16 for t in sd.values())
    assert sd["blocks.0.att.x_r"].shape == (1, 1, 192) and sd["blocks.0.att.r_k"].shape == (3, 64)


def test_held_out_bits_per_byte(model):
    ids = list(HELD_OUT.encode("ascii"))
    logits, _ = model.forward(ids, None, full_output=True)
    nll = F.cross_entropy(logits[0, :-1].float(), torch.tensor(ids[1:]), reduction="mean").item()
    bpb = nll / math.log(2)
    assert bpb < 2.3, bpb  # uniform noise is 8.0; the full held-out plays score ~1.88


def test_greedy_continuation_is_text(model):
    logits, state = model.forward(list(b"ROMEO:"), None)
    out = []
    for _ in range(120):
        t = int(logits[0].argmax())
        out.append(t)
        logits, state = model.forward([t], state)
    text = bytes(out)
    good = sum(1 for c in text if chr(c).isalpha() or c in b" \n.,;:'!?-")
    assert good >= 0.9 * len(text), text
    assert sum(1 for c in text if chr(c).isalpha()) >= 0.5 * len(text), text


def test_official_package_agrees(model):
    # tests/conftest.py sets RWKV_V7_ON=1 before anything imports rwkv.model
    assert os.environ.get("RWKV_V7_ON") == "1"
    rwkv_model = pytest.importorskip("rwkv.model")
    official = rwkv_model.RWKV(model=str(DEMO).removesuffix(".pth"), strategy="cpu fp32")
    ids = list(b"BRUTUS.\nGet you to bed again; it is not day.\n")
    ref, _ = official.forward(ids, None, full_output=True)
    ours, _ = model.forward(ids, None, full_output=True)
    ref, ours = ref.float(), ours[0].float()
    assert ours.shape == ref.shape
    rel = (ours - ref).abs().max().item() / ref.std().item()
    assert rel < 1e-4, rel
