"""decode_layer (one launch per layer, dataflow phases) vs its reference: the seven decode ops' references.

Runs on a GPU, or on CPU under TRITON_INTERPRET=1 (the interpreter runs programs one by one in
ticket order, so it checks the arithmetic and the phase wiring; the GPU run checks the waits)."""
from __future__ import annotations

import pytest
import torch

from rwkvrt.models.rwkv7_fast import RWKV7Fast
from rwkvrt.models.shapes import make_config, random_state_dict
from rwkvrt.ops.decode import decode_layer_reference

from conftest import rel_err


def _layer_op():
    from rwkvrt.ops.decode.triton_layer import CNT_TICKET, LayerScratch, decode_layer_triton
    return decode_layer_triton, LayerScratch, CNT_TICKET


def _pools(cfg, S, device, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    C, H, N, L = cfg.n_embd, cfg.n_head, cfg.head_size, cfg.n_layer
    att_x = (torch.randn(L, S, C, generator=g) * 0.5).to(device, dtype)
    ffn_x = (torch.randn(L, S, C, generator=g) * 0.5).to(device, dtype)
    wkv = (torch.randn(L, S, H, N, N, generator=g) * 0.3).to(device)
    return att_x, ffn_x, wkv


def _step(op, model, x, res, pools, slots, scratch):
    """All layers of one decode step; returns the per-layer outputs (copies) and the final residual."""
    att_x, ffn_x, wkv = pools
    C = model.cfg.n_embd
    outs, v_first = [], None
    if scratch is not None:
        scratch.begin()
    for i, p in enumerate(model.layers):
        x, rkvh = op(x, res, p, att_x[i], ffn_x[i], wkv[i], slots, v_first, scratch, layer=i, eps=1e-5)
        if i == 0:
            v_first = rkvh[:, 2 * C:3 * C]
        outs.append(x.clone())
    return outs, res


@pytest.mark.gpu
@pytest.mark.parametrize("B,dtype,nch", [(1, torch.float32, 1), (3, torch.float32, 1), (2, torch.float16, 1),
                                         (1, torch.float32, 2), (3, torch.float16, 4)])
def test_decode_layer_matches_reference_chained(kernel_device, B, dtype, nch, monkeypatch):
    """nch: BN-row chunks per GEMV item (the first loaded before the wait, the rest after)."""
    from rwkvrt.ops.decode import triton_layer
    monkeypatch.setattr(triton_layer, "NCH", nch)
    layer_op, LayerScratch, CNT_TICKET = _layer_op()
    cfg = make_config(3, 128, 97)
    model = RWKV7Fast(cfg, random_state_dict(cfg, seed=3), device=kernel_device, dtype=dtype, backend="reference",
                      decode_fused=True, ffn_sparse=False)
    C, S = cfg.n_embd, 5
    pools_ref = _pools(cfg, S, kernel_device, dtype, seed=B)
    pools_tri = tuple(t.clone() for t in pools_ref)
    slots = torch.tensor([4, 0, 2][:B], device=kernel_device)
    scratch = LayerScratch(n_layer=cfg.n_layer, batch=B, n_embd=C, d_ffn=cfg.d_ffn,
                           n_in=max(p.W_in.shape[0] for p in model.layers), device=kernel_device, dtype=dtype)
    g = torch.Generator().manual_seed(7)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for step in range(3):  # chained: the state each step leaves is the next one's input
        x = (torch.randn(B, C, generator=g)).to(kernel_device, dtype)
        res0 = (torch.randn(B, C, generator=g) * 2).to(kernel_device)
        for t in (scratch.rmid, scratch.xs, scratch.rkvh0, scratch.rkvh, scratch.tm, scratch.att, scratch.xk,
                  scratch.hk, scratch.out):
            t.fill_(float("nan"))  # poisoned: nothing may read a buffer before this step writes it
        want, res_ref = _step(decode_layer_reference, model, x, res0.clone(), pools_ref, slots, None)
        got, res_tri = _step(layer_op, model, x, res0.clone(), pools_tri, slots, scratch)
        for i, (a, b) in enumerate(zip(got, want)):
            assert torch.isfinite(a).all() and rel_err(a, b) < tol, (step, i, rel_err(a, b))
        assert rel_err(res_tri, res_ref) < tol
        for a, b, n in zip(pools_tri, pools_ref, ("att_x", "ffn_x", "wkv")):
            assert rel_err(a, b) < tol, (step, n)
        counters = scratch.counters.cpu()
        assert not scratch.errors().any(), "a wait gave up"
        assert (counters[:, -8:] == 0).all(), "an unused counter moved"
        tickets = counters[:, CNT_TICKET]  # every program took one ticket and signalled one phase done
        assert (tickets > 0).all() and torch.equal(counters[:, CNT_TICKET + 1:CNT_TICKET + 8].sum(1), tickets)
    # rows not in slots are untouched
    for a, b in zip(pools_tri, _pools(cfg, S, kernel_device, dtype, seed=B)):
        assert torch.equal(a[:, [1, 3]], b[:, [1, 3]])


def test_decode_layer_reference_updates_residual_in_place():
    cfg = make_config(1, 64, 50)
    model = RWKV7Fast(cfg, random_state_dict(cfg, seed=1), backend="reference", decode_fused=True, ffn_sparse=False)
    att_x, ffn_x, wkv = _pools(cfg, 2, "cpu", torch.float32, seed=0)
    res = torch.randn(1, 64)
    before = res.clone()
    x = torch.randn(1, 64)
    out, rkvh = decode_layer_reference(x, res, model.layers[0], att_x[0], ffn_x[0], wkv[0], torch.tensor([1]), None,
                                       layer=0)
    assert out.shape == (1, 64) and rkvh.shape == (1, model.layers[0].W_in.shape[0])
    assert not torch.equal(res, before)
    assert torch.equal(att_x[0, 0], _pools(cfg, 2, "cpu", torch.float32, seed=0)[0][0, 0])  # slot 0 untouched


def test_decode_layer_kernel_compiles_for_sm90_without_spills():
    """The 1.5B layer kernel as launched (uncapped registers, 4 chunks per item) compiles ahead of
    time for sm_90 with no spills (no GPU needed)."""
    pytest.importorskip("triton")
    from test_timemix_triton import sm90_ptxas_report

    from rwkvrt.models.shapes import published_config
    from rwkvrt.ops.decode import triton_layer

    cfg = published_config("1.5B")
    C, F = cfg.n_embd, cfg.d_ffn
    D = (cfg.d_decay, cfg.d_aaa, cfg.d_gate, cfg.d_mv)
    half = ["x", "xs", "rkvh", "vf", "tm", "att", "xk", "hk", "out", "attx", "ffnx", "mix6", "fmix", "win", "wo",
            "wk", "wv", "upw", "upa", "upg", "upv"]
    types = {n + "_ptr": "*fp16" for n in half}
    types.update({n: "*i32" for n in ("cnt_ptr", "prev_ptr", "xrow_ptr", "act_ptr")}, slots_ptr="*i64")
    types.update({n: "fp32" for n in ("eps", "decay_scale", "gn_eps", "l2_eps")})
    offs = [3 * C + sum(D[:i]) for i in range(4)]
    ce = dict(N_IN=3 * C + sum(D), C=C, F=F, H=C // 64, N=64, B=1, BLOCK_C=C, SLICE=triton_layer.SLICE, C_PAD=C,
              F_PAD=F, BN_IN=4, BN_C=4, BN_F=1, NCH=4, OFF_W=offs[0], OFF_A=offs[1], OFF_G=offs[2], OFF_V=offs[3],
              DW=D[0], DA=D[1], DG=D[2], DV=D[3], DCH=32, HAS_VRES=True, USE_PDL=True, TICKET=True, ASM=True,
              UP_LINES=4)
    rep = sm90_ptxas_report(triton_layer.decode_layer_kernel, types, ce, triton_layer.NUM_WARPS,
                            div16_extra=("s_rkvh", "s_vf", "s_up"))
    assert "0 bytes spill stores" in rep and "0 bytes spill loads" in rep, rep
