"""Element-wise pieces of the RWKV-7 channel-mix (FFN): the squared ReLU between the two matmuls.

    x = relu_square_(x)

    x : [..., F] activation dtype (the key projection's output, F = 4C), contiguous,
        MUTATED IN PLACE to relu(x) ** 2 and returned. The square is taken in float32
        and rounded once; for fp16 / bf16 inputs that equals the official
        ``torch.relu(x) ** 2`` in the activation dtype bit for bit (the product of two
        half values is exact in fp32).

Doing it in place saves the allocation and one full write of a [B, T, 4C] tensor
compared with ``torch.relu(x) ** 2`` (two launches, two new tensors).

    x2 = tanh_sigmoid_(x2)

    x2 : [2, ...] activation dtype, contiguous (the decay and gate rows of the time-mix LoRA
         hidden, adjacent), MUTATED IN PLACE: x2[0] to tanh, x2[1] to sigmoid (fp32 math, one
         rounding); one launch where ``tanh_`` + ``sigmoid_`` are two.
"""
from __future__ import annotations


from .reference import relu_square_reference_, tanh_sigmoid_reference_

__all__ = ["relu_square_reference_", "resolve", "resolve_tanh_sigmoid", "tanh_sigmoid_reference_"]


def resolve(device: str, backend: str = "auto"):
    """Return ``relu_square_`` for ``device``; auto -> triton on cuda, reference elsewhere.

    An explicitly requested triton backend that cannot be imported raises BackendError.
    """
    from .._backend import choose

    def triton():
        from .triton_relu import relu_square_triton_
        return relu_square_triton_

    return choose("the FFN element-wise ops", device, backend, relu_square_reference_, triton)


def resolve_tanh_sigmoid(device: str, backend: str = "auto"):
    """Return ``tanh_sigmoid_`` for ``device``, chosen as ``resolve`` chooses."""
    from .._backend import choose

    def triton():
        from .triton_relu import tanh_sigmoid_triton_
        return tanh_sigmoid_triton_

    return choose("the FFN element-wise ops", device, backend, tanh_sigmoid_reference_, triton)
