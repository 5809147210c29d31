"""Plain-torch LayerNorm and residual-add + LayerNorm: the spec for the Triton kernels."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def layer_norm_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                         eps: float = 1e-5) -> torch.Tensor:
    """See ``rwkvrt.ops.norm``: LN over the last axis in fp32, returned in x's dtype."""
    C = x.shape[-1]
    return F.layer_norm(x.float(), (C,), weight.float(), bias.float(), eps).to(x.dtype)


def add_layer_norm_reference(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                             bias: torch.Tensor, eps: float = 1e-5):
    """See ``rwkvrt.ops.norm``: (normed in x's dtype, new_residual in residual's dtype)."""
    new_residual = (x.float() + residual.float()).to(residual.dtype)
    C = x.shape[-1]
    normed = F.layer_norm(new_residual.float(), (C,), weight.float(), bias.float(), eps)
    return normed.to(x.dtype), new_residual
