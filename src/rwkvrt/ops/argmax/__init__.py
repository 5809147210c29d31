"""Row-wise argmax over logits, written straight into a caller's int64 buffer (greedy decode).

    out = argmax_rows(logits, out, scratch)

    logits : [B, V] float (fp32 from the decode head; any float dtype), unit stride along V, not mutated
    out    : [B] int64, WRITTEN and returned: the index of the first maximum of each row, as
             ``torch.argmax`` gives it (a NaN counts as the maximum, the first NaN wins)
    scratch: the kernel's per-row keys and tickets (``ArgmaxScratch(max_rows, device)``, made once
             and reused by every call on one stream; the reference's factory returns None)
    pdl    : (keyword) programmatic dependent launch (``rwkvrt.ops._pdl``), None = the device default

Why: ``torch.argmax`` over one 65,536-wide row is one reduction kernel of ~20 us on an H100 (a
sixth of a 1.5B decode step's time outside the layers; 3.8 us with this op). This op splits every row over programs that
each take a slice, combine their (value, index) keys with one 64-bit atomic max (order does not
matter, so the result is the same bits on every replay), and the last program of a row (ticket)
writes the index and resets the row's key and ticket for the next call.
"""
from __future__ import annotations

from .reference import argmax_rows_reference, no_scratch

__all__ = ["argmax_rows_reference", "no_scratch", "resolve"]


def resolve(device: str, backend: str = "auto"):
    """(argmax_rows, scratch factory (max_rows, device)) for ``device``; auto -> triton on cuda."""
    from .._backend import choose

    def triton():
        from .triton_argmax import ArgmaxScratch, argmax_rows_triton
        return argmax_rows_triton, ArgmaxScratch

    return choose("the argmax op", device, backend, (argmax_rows_reference, no_scratch), triton)
