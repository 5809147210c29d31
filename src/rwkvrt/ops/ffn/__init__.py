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


from .reference import relu_square_reference_

__all__ = ["relu_square_reference_", "resolve"]


def resolve(device: str, backend: str = "auto"):
    """Return ``relu_square_`` for ``device``; auto -> triton on cuda, reference elsewhere.

    An explicitly requested triton backend that cannot be imported raises BackendError.
    """
    from .._backend import choose

    def triton():
        from .triton_relu import relu_square_triton_
        return relu_square_triton_

    return choose("the FFN element-wise ops", device, backend, relu_square_reference_, triton)
