"""Plain-torch row argmax: the spec for the Triton kernel (see ``rwkvrt.ops.argmax``)."""
from __future__ import annotations

import torch


def argmax_rows_reference(logits: torch.Tensor, out: torch.Tensor, scratch=None, *, pdl=None) -> torch.Tensor:
    """See ``rwkvrt.ops.argmax``: out[b] = argmax(logits[b]) (first maximum; NaN is the maximum)."""
    assert logits.dim() == 2 and out.shape == (logits.shape[0],) and out.dtype == torch.int64
    out.copy_(logits.argmax(dim=-1))
    return out


def no_scratch(max_rows: int, device) -> None:
    """The reference needs no scratch (the Triton op's factory has this signature)."""
    return None
