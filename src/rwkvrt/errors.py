"""One exception family for every error a user can cause.

Each message says what was expected, what was found, and how to fix it, on one
line, so the CLI can print it as is and exit with code 2.
"""
from __future__ import annotations


class RWKVRTError(Exception):
    """Base class of every user-facing rwkvrt error."""

    def __init__(self, what: str, *, expected: str | None = None, got: str | None = None,
                 fix: str | None = None):
        parts = [what.rstrip(".")]
        if expected is not None:
            parts.append(f"expected {expected}")
        if got is not None:
            parts.append(f"got {got}")
        msg = "; ".join(parts)
        if fix:
            msg += f". Fix: {fix}"
        super().__init__(msg)
        self.what, self.expected, self.got, self.fix = what, expected, got, fix


class CheckpointError(RWKVRTError, ValueError):
    """A model file is missing, unreadable, truncated or not an RWKV-7 checkpoint."""


class StrategyError(RWKVRTError, ValueError):
    """A strategy string (device and dtype) that rwkvrt does not understand or cannot run."""


class TokenError(RWKVRTError, ValueError):
    """A token id outside the vocabulary, or an empty token list."""


class SamplingError(RWKVRTError, ValueError):
    """A sampling parameter out of its range."""


class StateError(RWKVRTError, ValueError):
    """A state (object or file) that does not fit the model."""


class BackendError(RWKVRTError, RuntimeError):
    """An explicitly requested backend (e.g. triton) is not available."""
