"""rwkvrt: a fast, exact runtime for RWKV-7 language models.

Native API: ``rwkvrt.load(path, strategy)`` returns a ``Model`` whose ``forward``
takes token ids and a ``State``. Drop-in API of BlinkDL's ``rwkv`` package:
``from rwkvrt import RWKV, PIPELINE, PIPELINE_ARGS``.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import RWKVRTError
from .model import Model, load
from .state import State

__all__ = ["RWKV", "PIPELINE", "PIPELINE_ARGS", "Model", "State", "load", "save_state", "load_state",
           "RWKVRTError", "__version__"]


def __getattr__(name):
    # the compatibility layer and state files load lazily, so `import rwkvrt` stays light
    if name in ("RWKV", "PIPELINE", "PIPELINE_ARGS"):
        from . import compat
        return getattr(compat, name)
    if name in ("save_state", "load_state"):
        from . import state_io
        return getattr(state_io, name)
    raise AttributeError(f"module 'rwkvrt' has no attribute {name!r}")
