"""LayerNorm and residual-add + LayerNorm: Triton vs the plain-torch reference (GPU or the Triton interpreter)."""
from __future__ import annotations

import pytest
import torch

from test_timemix_triton import nan_empty, sm90_ptxas_report  # noqa: F401 (fixture)

from rwkvrt.ops import norm
from rwkvrt.ops.norm.reference import add_layer_norm_reference, layer_norm_reference

pytestmark = pytest.mark.gpu


def _tn():
    return pytest.importorskip("rwkvrt.ops.norm.triton_norm")


def _data(shape, dtype, res_dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    C = shape[-1]
    x = torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)
    # an offset residual stream: a one-pass E[x^2]-E[x]^2 variance would lose digits here
    res = (3.0 + 2 * torch.randn(*shape, generator=gen)).to(device=device, dtype=res_dtype)
    w = (1 + 0.2 * torch.randn(C, generator=gen)).to(device)
    b = (0.1 * torch.randn(C, generator=gen)).to(device)
    return x, res, w, b


def _close(ours, ref, dtype):
    assert ours.dtype == ref.dtype and ours.shape == ref.shape and ours.is_contiguous()
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(ours, ref, **tol)


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("T", [1, 2, 15, 16, 17, 63, 100])
def test_add_layer_norm_triton_matches_reference(kernel_device, B, T):
    x, res, w, b = _data((B, T, 96), torch.float32, torch.float32, kernel_device, seed=T + B)
    normed, new_res = _tn().add_layer_norm_triton(x, res, w, b)
    ref_n, ref_r = add_layer_norm_reference(x, res, w, b)
    assert torch.equal(new_res, ref_r)
    _close(normed, ref_n, torch.float32)
    _close(_tn().layer_norm_triton(x, w, b), layer_norm_reference(x, w, b), torch.float32)


@pytest.mark.parametrize("dtype,res_dtype", [(torch.float16, torch.float16), (torch.bfloat16, torch.bfloat16),
                                             (torch.float16, torch.float32), (torch.bfloat16, torch.float32)])
@pytest.mark.parametrize("C", [64, 160, 2048])
def test_add_layer_norm_triton_dtypes(kernel_device, dtype, res_dtype, C):
    """Half activations with a half or fp32 residual stream; widths with a masked tail."""
    x, res, w, b = _data((2, 3, C), dtype, res_dtype, kernel_device, seed=C)
    normed, new_res = _tn().add_layer_norm_triton(x, res, w, b)
    ref_n, ref_r = add_layer_norm_reference(x, res, w, b)
    assert new_res.dtype == res_dtype and normed.dtype == dtype
    # the sum is rounded once (nearest-even on the GPU); the 3.6 interpreter truncates fp32 -> bf16
    loose = kernel_device != "cuda" and res_dtype == torch.bfloat16
    torch.testing.assert_close(new_res, ref_r, rtol=2**-7 if loose else 0, atol=0)
    _close(normed, ref_n, dtype)
    _close(_tn().layer_norm_triton(x, w, b, eps=1e-3), layer_norm_reference(x, w, b, eps=1e-3), dtype)


def test_add_layer_norm_triton_inputs_not_mutated_and_strided(kernel_device):
    x_big, res, w, b = _data((4, 5, 96), torch.float32, torch.float32, kernel_device, seed=4)
    x = x_big[::2]
    res = res[::2].contiguous()
    x_copy, res_copy = x.clone(), res.clone()
    normed, new_res = _tn().add_layer_norm_triton(x, res, w, b)
    assert torch.equal(x, x_copy) and torch.equal(res, res_copy)
    ref_n, ref_r = add_layer_norm_reference(x, res, w, b)
    assert torch.equal(new_res, ref_r)
    _close(normed, ref_n, torch.float32)


def test_norm_resolve():
    assert norm.resolve("cpu").backend == "reference"
    pytest.importorskip("triton")
    ops = norm.resolve("cuda", "triton")
    assert ops.backend == "triton" and ops.add_layer_norm is _tn().add_layer_norm_triton


@pytest.mark.parametrize("C,num_warps", [(1024, 4), (2048, 8), (4096, 8), (8192, 16)])
def test_norm_kernel_compiles_for_sm90_without_spills(C, num_warps):
    """The launch's own warp choice for each width (bf16 activations, fp32 residual stream)."""
    tn = pytest.importorskip("rwkvrt.ops.norm.triton_norm")
    types = {"x_ptr": "*bf16", "res_ptr": "*fp32", "out_ptr": "*bf16", "newres_ptr": "*fp32", "eps": "fp32"}
    report = sm90_ptxas_report(tn.add_layer_norm_fwd_kernel, types, {"HAS_RESIDUAL": True, "BLOCK_C": C}, num_warps)
    assert " 0 bytes spill stores" in report, report


@pytest.mark.gpu
def test_norm_outputs_fully_written(kernel_device, nan_empty):
    x, res, w, b = _data((3, 7, 160), torch.float16, torch.float32, kernel_device, seed=8)
    normed, new_res = _tn().add_layer_norm_triton(x, res, w, b)
    assert torch.isfinite(normed).all() and torch.isfinite(new_res).all()
    assert torch.isfinite(_tn().layer_norm_triton(x, w, b)).all()
