"""Row argmax: the Triton kernel vs torch.argmax (GPU or the Triton interpreter)."""
from __future__ import annotations

import pytest
import torch

from test_timemix_triton import sm90_ptxas_report

from rwkvrt.ops import argmax
from rwkvrt.ops.argmax.reference import argmax_rows_reference

pytestmark = pytest.mark.gpu


def _triton():
    return pytest.importorskip("rwkvrt.ops.argmax.triton_argmax")


def _logits(B, V, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(B, V, generator=gen)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("B,V", [(1, 1), (1, 17), (3, 2048), (2, 2049), (5, 5000), (1, 65536), (4, 65529)])
def test_argmax_rows_matches_torch(kernel_device, B, V, dtype):
    tr = _triton()
    x = _logits(B, V, B * 7 + V, dtype).to(kernel_device)
    sc = tr.ArgmaxScratch(8, kernel_device)
    for call in range(3):  # chained calls: the kernel leaves its scratch reset
        xx = x.roll(call * 37, dims=1)
        out = torch.full((B,), -5, dtype=torch.int64, device=kernel_device)  # poisoned
        assert tr.argmax_rows_triton(xx, out, sc) is out
        assert torch.equal(out.cpu(), xx.cpu().float().argmax(dim=-1))
    assert torch.equal(sc.key.cpu(), torch.full((8,), -1)) and int(sc.count.abs().sum()) == 0


def test_argmax_rows_ties_infinities_nan_and_signed_zero(kernel_device):
    tr = _triton()
    V = 6000
    x = torch.full((6, V), -1.0)
    x[0, [4100, 17, 5999]] = 2.5                 # ties: the first column wins, across program slices
    x[1] = float("-inf")                         # all -inf: column 0
    x[1, 4096] = -1e30
    x[2, 3000] = float("inf")
    x[2, 100] = 1e38
    x[3, [2500, 10]] = float("nan")               # NaN is the maximum, the first one wins
    x[3, 5] = float("inf")
    x[4] = -2.0
    x[4, [4097, 300]] = torch.tensor([0.0, -0.0])  # -0.0 == +0.0: the first wins
    x[5] = float("-inf")
    ref = x.argmax(dim=-1)
    assert ref.tolist() == [17, 4096, 3000, 10, 300, 0]
    out = torch.empty(6, dtype=torch.int64, device=kernel_device)
    tr.argmax_rows_triton(x.to(kernel_device), out, tr.ArgmaxScratch(6, kernel_device))
    assert out.cpu().tolist() == ref.tolist()


def test_argmax_rows_strided_rows(kernel_device):
    tr = _triton()
    big = _logits(3, 3000, 1).to(kernel_device)
    view = big[:, 100:2900]                        # row stride 3000, unit column stride
    out = torch.empty(3, dtype=torch.int64, device=kernel_device)
    tr.argmax_rows_triton(view, out, tr.ArgmaxScratch(4, kernel_device))
    assert torch.equal(out.cpu(), view.cpu().argmax(dim=-1))


def test_argmax_reference_and_resolve():
    x = _logits(3, 50, 3)
    out = torch.empty(3, dtype=torch.int64)
    assert torch.equal(argmax_rows_reference(x, out), x.argmax(-1))
    fn, factory = argmax.resolve("cpu")
    assert fn is argmax_rows_reference and factory(4, "cpu") is None
    pytest.importorskip("triton")
    assert argmax.resolve("cuda", "triton")[0] is _triton().argmax_rows_triton


def test_argmax_kernel_compiles_for_sm90_without_spills():
    tr = _triton()
    report = sm90_ptxas_report(tr.argmax_rows_kernel, {"x_ptr": "*fp32", "out_ptr": "*i64", "key_ptr": "*i64",
                                                       "count_ptr": "*i32", "V": "i32", "sxb": "i32"},
                               {"P": 32, "BLOCK": tr.BLOCK, "USE_PDL": True}, tr.NUM_WARPS)
    assert " 0 bytes spill stores" in report, report
