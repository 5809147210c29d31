"""The WKV7 recurrence (generalised delta rule), in several implementations.

Convention shared by every implementation in this folder (they have the same
signature and are interchangeable):

    y, state = wkv7(r, w, k, v, a, b, state)

    r, w, k, v, a, b : [B, T, H, N]  activation dtype (fp32 / fp16 / bf16)
        w is the *raw* decay logit (w0 + LoRA(x)); the decay applied to the
        state is  exp(-exp(-0.5) * sigmoid(w))  in (0.545, 1), computed in fp32.
    state : [B, H, N, N] float32, layout [batch, head, value, key] (BlinkDL's).
    per head, per step t (column vectors of length N):
        S = S * decay[None, :] + (S @ a) b^T + v k^T
        y = S @ r
    returns y [B, T, H, N] in r's dtype and the final state [B, H, N, N] fp32.

Implementations may update ``state`` in place and return it; callers must use
the returned tensor. RWKV-7 uses a = -kk, b = kk * a_lr (no scale factor).

An implementation with the attribute ``takes_slots = True`` (the Triton one) also
takes ``slots=`` (int64 [B], distinct rows): ``state`` is then an fp32 pool
[S, H, N, N] whose rows slots[b] are read and updated in place, and the pool is
returned. Callers gather / scatter the rows themselves for the others.
"""
from __future__ import annotations

from .reference import wkv7_reference

__all__ = ["wkv7_reference", "resolve"]


def resolve(device: str, backend: str = "auto"):
    """Return the wkv7 function to use on ``device`` ("cpu" / "cuda").

    backend: "auto", "reference", "torch" (chunked, vectorised), "triton".
    Called once at model build time; a missing requested backend raises.
    """
    from ...errors import BackendError

    if backend == "reference":
        return wkv7_reference
    if backend in ("torch", "auto") and not (backend == "auto" and device.startswith("cuda")):
        from .torch_chunked import wkv7_torch_chunked
        return wkv7_torch_chunked
    if backend in ("triton", "auto"):
        try:
            from .triton_dispatch import wkv7_triton
        except ImportError as e:
            if backend == "triton":
                raise BackendError("the triton backend for wkv7 is not available",
                                   got=str(e), fix="pip install 'rwkvrt[gpu]' on a CUDA machine") from None
            from .torch_chunked import wkv7_torch_chunked
            return wkv7_torch_chunked
        return wkv7_triton
    raise BackendError("unknown wkv7 backend", expected="auto, reference, torch or triton",
                       got=repr(backend), fix="pick one of those")
