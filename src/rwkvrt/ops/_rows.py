"""Running a state-updating op on some rows of a state pool (no triton import)."""
from __future__ import annotations

import torch


def on_pool_rows(fn, *args, pool: torch.Tensor, slots: torch.Tensor, **kw):
    """(y, pool): ``y, rows = fn(*args, pool[slots], **kw)`` on a gathered copy of the rows, which
    are then written back into ``pool`` in place (in pool's dtype)."""
    y, rows = fn(*args, pool.index_select(0, slots), **kw)
    pool.index_copy_(0, slots, rows.to(pool.dtype))
    return y, pool
