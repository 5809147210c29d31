"""Token shift (lerp6 / lerp1): Triton vs the plain-torch reference (GPU, or the Triton interpreter on CPU)."""
from __future__ import annotations

import pytest
import torch

from test_timemix_triton import nan_empty, sm90_ptxas_report  # noqa: F401 (fixture)

from rwkvrt.ops import token_shift
from rwkvrt.ops.token_shift.reference import lerp1_reference, lerp6_reference

pytestmark = pytest.mark.gpu

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _lerp():
    return pytest.importorskip("rwkvrt.ops.token_shift.triton_lerp")


def _data(B, T, C, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, C, generator=gen).to(device=device, dtype=dtype)
    prev = torch.randn(B, C, generator=gen).to(device=device, dtype=dtype)
    mix = torch.rand(6, C, generator=gen).to(device)
    return x, prev, mix


def _close(ours, ref):
    assert ours.dtype == ref.dtype and ours.shape == ref.shape and ours.is_contiguous()
    # same fp32 formula, one rounding: at most an FMA-contraction ulp apart
    torch.testing.assert_close(ours, ref, rtol=1e-5 if ref.dtype == torch.float32 else 1e-2, atol=1e-5)


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("T", [1, 2, 15, 16, 17, 63, 100])
def test_lerp6_triton_matches_reference(kernel_device, B, T):
    x, prev, mix = _data(B, T, 96, torch.float32, kernel_device, seed=T + B)
    xs, new_prev = _lerp().lerp6_triton(x, prev, mix)
    ref, ref_prev = lerp6_reference(x, prev, mix)
    _close(xs, ref)
    assert torch.equal(new_prev, ref_prev)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C", [64, 160, 1100])
def test_lerp_triton_dtypes_and_widths(kernel_device, dtype, C):
    """Non-power-of-2 widths (masked tail, several channel blocks) and half dtypes; mix in fp32."""
    x, prev, mix = _data(2, 5, C, dtype, kernel_device, seed=C)
    _close(_lerp().lerp6_triton(x, prev, mix)[0], lerp6_reference(x, prev, mix)[0])
    _close(_lerp().lerp1_triton(x, prev, mix[2])[0], lerp1_reference(x, prev, mix[2])[0])


def test_lerp_triton_chained_calls(kernel_device):
    """Two halves, carrying new_prev, == the whole sequence."""
    lerp = _lerp()
    x, prev, mix = _data(3, 30, 96, torch.float32, kernel_device, seed=3)
    whole = lerp.lerp6_triton(x, prev, mix)[0]
    first, p1 = lerp.lerp6_triton(x[:, :13], prev, mix)
    second, _ = lerp.lerp6_triton(x[:, 13:], p1.clone(), mix)
    assert torch.equal(torch.cat([first, second], dim=2), whole)


def test_lerp_triton_strided_x(kernel_device):
    """x as a view with a non-contiguous batch / time layout (unit stride along C)."""
    x_big, prev, mix = _data(4, 7, 96, torch.float16, kernel_device, seed=9)
    x = x_big[::2, 1:]
    prev = prev[::2]
    _close(_lerp().lerp6_triton(x, prev, mix)[0], lerp6_reference(x, prev, mix)[0])


def test_token_shift_resolve():
    assert token_shift.resolve("cpu").backend == "reference"
    pytest.importorskip("triton")
    ops = token_shift.resolve("cuda", "triton")
    assert ops.backend == "triton" and ops.lerp6 is _lerp().lerp6_triton


@pytest.mark.parametrize("M", [1, 6])
def test_lerp_kernel_compiles_for_sm90_without_spills(M):
    tlp = pytest.importorskip("rwkvrt.ops.token_shift.triton_lerp")
    report = sm90_ptxas_report(tlp.lerp_fwd_kernel, {"x_ptr": "*bf16", "prev_ptr": "*bf16", "out_ptr": "*bf16"},
                               {"M": M, "BLOCK_C": 512}, 4)
    assert " 0 bytes spill stores" in report, report


def _block_data(B, T, C, dtype, res_dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, C, generator=gen).to(device=device, dtype=dtype)
    res = (2 + 3 * torch.randn(B, T, C, generator=gen)).to(device=device, dtype=res_dtype)
    w = (1 + 0.2 * torch.randn(C, generator=gen)).to(device)
    b = (0.1 * torch.randn(C, generator=gen)).to(device)
    pool = torch.randn(5, C, generator=gen).to(device=device, dtype=dtype)
    mix = torch.rand(6, C, generator=gen).to(device)
    return x, res, w, b, pool, mix


@pytest.mark.gpu
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("T", [1, 2, 17])
@pytest.mark.parametrize("add,use_slots,M", [(True, True, 6), (False, False, 6), (True, False, 1)],
                         ids=["add-slots-6", "noadd-6", "add-1"])
@pytest.mark.parametrize("C", [96, 1100], ids=["C96", "C1100-split"])  # 1100: rows stored by 3 programs
def test_add_ln_lerp_triton_matches_reference(kernel_device, B, T, add, use_slots, M, C):
    lerp = _lerp()
    x, res, w, b, pool, mix = _block_data(B, T, C, torch.float32, torch.float32, kernel_device, seed=T * B)
    slots = torch.tensor([3, 0, 4][:B], device=kernel_device) if use_slots else None
    mix = mix[:M]
    pool_ref = pool.clone()
    xs_ref, res_ref = token_shift.add_ln_lerp_reference(x if add else None, res, w, b, pool_ref, mix, slots=slots)
    xs, new_res = lerp.add_ln_lerp_triton(x if add else None, res, w, b, pool, mix, slots=slots)
    assert xs.shape == (M, B, T, C) and xs.dtype == torch.float32
    assert torch.equal(new_res, res_ref) and (add or new_res is res)
    torch.testing.assert_close(xs, xs_ref, rtol=1e-5, atol=1e-5)
    # the updated rows and the untouched ones
    torch.testing.assert_close(pool, pool_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,res_dtype", [(torch.float16, torch.float32), (torch.bfloat16, torch.bfloat16)])
def test_add_ln_lerp_triton_half(kernel_device, dtype, res_dtype):
    x, res, w, b, pool, mix = _block_data(2, 5, 160, dtype, res_dtype, kernel_device, seed=1)
    pool_ref = pool.clone()
    xs_ref, res_ref = token_shift.add_ln_lerp_reference(x, res, w, b, pool_ref, mix)
    xs, new_res = _lerp().add_ln_lerp_triton(x, res, w, b, pool, mix)
    assert xs.dtype == dtype and new_res.dtype == res_dtype and pool.dtype == dtype
    # the 3.6 interpreter truncates fp32 -> bf16, the GPU rounds to nearest even: half tolerances
    torch.testing.assert_close(new_res, res_ref, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(xs, xs_ref, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(pool, pool_ref, rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
def test_add_ln_lerp_triton_chained_calls(kernel_device):
    """Two halves (the x_prev pool carrying the shift) == the whole sequence."""
    lerp = _lerp()
    x, res, w, b, pool, mix = _block_data(2, 12, 96, torch.float32, torch.float32, kernel_device, seed=4)
    p_whole, p_parts = pool.clone(), pool.clone()
    whole, _ = lerp.add_ln_lerp_triton(x, res, w, b, p_whole, mix)
    first, _ = lerp.add_ln_lerp_triton(x[:, :5], res[:, :5], w, b, p_parts, mix)
    second, _ = lerp.add_ln_lerp_triton(x[:, 5:], res[:, 5:], w, b, p_parts, mix)
    assert torch.equal(torch.cat([first, second], dim=2), whole)
    assert torch.equal(p_parts, p_whole)


@pytest.mark.parametrize("C,num_warps", [(2048, 8), (4096, 8)])
def test_add_ln_lerp_kernel_compiles_for_sm90_without_spills(C, num_warps):
    tlp = pytest.importorskip("rwkvrt.ops.token_shift.triton_lerp")
    types = {"x_ptr": "*bf16", "res_ptr": "*fp32", "prev_ptr": "*bf16", "slots_ptr": "*i64", "out_ptr": "*bf16",
             "newres_ptr": "*fp32", "eps": "fp32"}
    report = sm90_ptxas_report(tlp.add_ln_lerp_fwd_kernel, types, {"HAS_ADD": True, "HAS_SLOTS": True, "M": 6,
                                                                   "BLOCK_C": C}, num_warps)
    assert " 0 bytes spill stores" in report, report


@pytest.mark.gpu
def test_token_shift_outputs_fully_written(kernel_device, nan_empty):
    lerp = _lerp()
    x, res, w, b, pool, mix = _block_data(1, 1, 1100, torch.float32, torch.float32, kernel_device, seed=9)
    xs, new_res = lerp.add_ln_lerp_triton(x, res, w, b, pool, mix)  # the split (decode) path
    assert torch.isfinite(xs).all() and torch.isfinite(new_res).all()
    x, res, w, b, pool, mix = _block_data(3, 7, 160, torch.float32, torch.float32, kernel_device, seed=8)
    assert torch.isfinite(lerp.lerp6_triton(x, pool[:3], mix)[0]).all()
    assert torch.isfinite(lerp.lerp1_triton(x, pool[:3], mix[0])[0]).all()
    xs, new_res = lerp.add_ln_lerp_triton(x, res, w, b, pool, mix)
    assert torch.isfinite(xs).all() and torch.isfinite(new_res).all()
