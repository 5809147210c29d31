"""Plain-torch squared ReLU, in place: the spec for the Triton kernel."""
from __future__ import annotations

import torch


def relu_square_reference_(x: torch.Tensor) -> torch.Tensor:
    """See ``rwkvrt.ops.ffn``: x [..., F] mutated to relu(x) ** 2 and returned."""
    return torch.relu_(x).square_()


def tanh_sigmoid_reference_(x2: torch.Tensor) -> torch.Tensor:
    """See ``rwkvrt.ops.ffn``: x2 [2, ...]; x2[0] mutated to tanh, x2[1] to sigmoid; returned."""
    x2[0].tanh_()
    x2[1].sigmoid_()
    return x2
