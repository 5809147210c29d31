"""Element-wise pieces of the RWKV-7 channel-mix (FFN): the squared ReLU between the two matmuls.

    x = relu_square_(x)

    x : [..., F] activation dtype (the key projection's output, F = 4C), contiguous,
        MUTATED IN PLACE to relu(x) ** 2 and returned. The square is taken in float32
        and rounded once; for fp16 / bf16 inputs that equals the official
        ``torch.relu(x) ** 2`` in the activation dtype bit for bit (the product of two
        half values is exact in fp32).

Doing it in place saves the allocation and one full write of a [B, T, 4C] tensor
compared with ``torch.relu(x) ** 2`` (two launches, two new tensors).
"""
from __future__ import annotations

import logging

from .reference import relu_square_reference_

log = logging.getLogger(__name__)

__all__ = ["relu_square_reference_", "resolve"]


def resolve(device: str, backend: str = "auto"):
    """Return ``relu_square_`` for ``device``; auto -> triton on cuda, reference elsewhere.

    An explicitly requested triton backend that cannot be imported raises BackendError.
    """
    from ...errors import BackendError

    if backend in ("reference", "torch") or (backend == "auto" and not device.startswith("cuda")):
        return relu_square_reference_
    if backend in ("triton", "auto"):
        try:
            from .triton_relu import relu_square_triton_
        except ImportError as e:
            if backend == "triton":
                raise BackendError("the triton backend for the FFN element-wise ops is not available",
                                   got=str(e), fix="pip install 'rwkvrt[gpu]' on a CUDA machine") from None
            log.warning("triton is not importable (%s): %s uses the plain-torch reference", e, __name__)
            return relu_square_reference_
        return relu_square_triton_
    raise BackendError("unknown ffn backend", expected="auto, reference, torch or triton",
                       got=repr(backend), fix="pick one of those")
