"""FFN element-wise ops: the in-place squared ReLU, Triton vs reference (GPU or the Triton interpreter)."""
from __future__ import annotations

import pytest
import torch

from test_timemix_triton import sm90_ptxas_report

from rwkvrt.ops import ffn
from rwkvrt.ops.ffn.reference import relu_square_reference_

pytestmark = pytest.mark.gpu


def _relu():
    return pytest.importorskip("rwkvrt.ops.ffn.triton_relu").relu_square_triton_


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1, 256), (3, 17, 384), (2, 100, 130), (0, 5, 64)])
def test_relu_square_triton_matches_reference(kernel_device, dtype, shape):
    gen = torch.Generator().manual_seed(sum(shape))
    x = (4 * torch.randn(*shape, generator=gen)).to(device=kernel_device, dtype=dtype)
    if x.numel():
        # zero, negative zero, and 300 (whose square overflows fp16 to inf in both versions)
        x[..., :3] = torch.tensor([0.0, -0.0, 300.0], dtype=dtype)
    ref = relu_square_reference_(x.clone())
    out = _relu()(x)
    assert out is x
    if dtype == torch.bfloat16 and kernel_device != "cuda":
        # the 3.6 interpreter truncates fp32 -> bf16 (the GPU rounds to nearest even)
        torch.testing.assert_close(out, ref, rtol=2**-7, atol=0)
    else:
        # one rounding of an exact product: bit-equal to the official relu(x) ** 2 (inf included)
        assert torch.equal(out, ref)


def test_relu_square_reference_is_official_formula():
    x = torch.randn(4, 64, dtype=torch.bfloat16)
    assert torch.equal(relu_square_reference_(x.clone()), torch.relu(x) ** 2)


def test_ffn_resolve():
    assert ffn.resolve("cpu") is relu_square_reference_
    pytest.importorskip("triton")
    assert ffn.resolve("cuda", "triton") is _relu()


def test_relu_square_kernel_compiles_for_sm90_without_spills():
    tr = pytest.importorskip("rwkvrt.ops.ffn.triton_relu")
    report = sm90_ptxas_report(tr.relu_square_fwd_kernel, {"x_ptr": "*bf16"}, {"BLOCK": tr.BLOCK}, 4)
    assert " 0 bytes spill stores" in report, report
