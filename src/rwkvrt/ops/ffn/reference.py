"""Plain-torch squared ReLU, in place: the spec for the Triton kernel."""
from __future__ import annotations

import torch


def relu_square_reference_(x: torch.Tensor) -> torch.Tensor:
    """See ``rwkvrt.ops.ffn``: x [..., F] mutated to relu(x) ** 2 and returned."""
    return torch.relu_(x).square_()
