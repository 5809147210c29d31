"""Text generation on top of the native Model: streaming Generator and the bundled demo model's path."""
from __future__ import annotations

from pathlib import Path

from .generate import Generation, Generator

# The one place that names the bundled byte-level demo checkpoint (official x070 format,
# vocab 256, tokenizer "bytes"); the CLI uses it when --model is not given.
DEMO_MODEL: Path = Path(__file__).resolve().parent.parent / "data" / "rwkv7-shakespeare-demo.pth"

__all__ = ["DEMO_MODEL", "Generation", "Generator"]
