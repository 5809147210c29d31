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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(2, 1, 64), (2, 37, 96), (2, 513, 224), (2, 0, 32)])
def test_tanh_sigmoid_triton_matches_reference(kernel_device, dtype, shape):
    """The LoRA hidden's decay rows -> tanh, gate rows -> sigmoid, in place, one launch: equal to
    torch's tanh_ / sigmoid_ within one rounding (tanh as 2 * sigmoid(2x) - 1 in fp32)."""
    fn = pytest.importorskip("rwkvrt.ops.ffn.triton_relu").tanh_sigmoid_triton_
    gen = torch.Generator().manual_seed(sum(shape))
    hid = (3 * torch.randn(4, *shape[1:], generator=gen)).to(device=kernel_device, dtype=dtype)
    if hid[2].numel():
        hid[2:4, 0, :4] = torch.tensor([0.0, -0.0, 40.0, -40.0], dtype=dtype)
    x2 = hid[2:4]  # the w and g rows of a [v, a, w, g] hidden, as the model passes them
    want = ffn.tanh_sigmoid_reference_(x2.clone())
    rest = hid[:2].clone()
    out = fn(x2)
    assert out.data_ptr() == x2.data_ptr() and torch.equal(hid[:2], rest)
    ulp = 2e-6 if dtype == torch.float32 else 1e-3
    torch.testing.assert_close(out.float(), want.float(), rtol=0, atol=ulp)
    if x2.numel():
        assert torch.equal(out[0, 0, :2].float().abs(), torch.zeros(2)) and out[0, 0, 2] == 1 and out[0, 0, 3] == -1


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
