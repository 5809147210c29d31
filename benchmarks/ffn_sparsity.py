"""Channel-mix (FFN) activation sparsity in decode: how often, and what skipping it would save.

RWKV-7's FFN is ``k = relu(xk @ W_key.T) ** 2 ; out = k @ W_value.T`` (W_key [F, C], W_value [C, F],
official [out, in] layout, F = 4C). A zero in k makes one row of W_value.T (one column of W_value)
unnecessary for that token; decode is bound by weight bytes, so skipping rows could save time.

Part 1, "often" (real trained weights only; random weights say nothing about sparsity): feed real
text byte by byte (byte tokenizer: token = byte value) to the bundled Shakespeare demo model and to the
real tiny fixture, record k of every layer and report per layer the fraction of exact zeros in k
(mean, p10, p90 over tokens) and the fraction of W_value.T rows that ANY of B tokens needs
(B = 1, 4, 16; "consecutive": B consecutive tokens of one text, "random": B tokens drawn from
anywhere in the text, a proxy for B independent sequences decoded together).
k is captured by running the model's own T-generic path with ``_channel_mix`` replaced (on that
instance only) by a recomputation of the FFN from the reference math that also records k; the
logits are checked against an untouched instance (the one-token fast path) and, where the
official ``rwkv`` package is importable, against it.

Part 2, "much": one token's ``k @ W_value.T`` on this CPU, 1 thread, random weights at the 0.1B
(C=768, F=3072) and 1.5B (C=2048, F=8192) shapes, dense (both layouts) vs skipping zero rows
(nonzero + index_select + mv, or a fused weighted gather via F.embedding_bag), at 50-95% sparsity.
Several layers' worth of weights are cycled so they stream from memory as in a real decode step.

    python benchmarks/ffn_sparsity.py                   # both parts (< 2 minutes)
    python benchmarks/ffn_sparsity.py --part often --text .corpus/val.txt --tokens 4000
    python benchmarks/ffn_sparsity.py --part much --json   # one JSON line per result

Results and conclusion: docs/perf_cpu.md, section "FFN sparsity (channel-mix)".
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("RWKV_V7_ON", "1")  # the official package reads these at import time
os.environ.setdefault("RWKV_JIT_ON", "1")
os.environ.setdefault("RWKV_CUDA_ON", "0")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "demo": ROOT / "src" / "rwkvrt" / "data" / "rwkv7-shakespeare-demo.pth",
    "tiny": Path("/work/shared/fixtures/tiny-rwkv-7v0-834K.pth"),
}
SHAPES = {"0.1B": (768, 3072, 12), "1.5B": (2048, 8192, 24)}  # C, F, L (L: for the weight-byte share)
SPARSITIES = (0.5, 0.55, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)

# Julius Caesar, Act III Scene II (Project Gutenberg, public domain): a held-out play of the demo
# model (docs/demo-model.md), so this is text the model predicts but never trained on.
TEXT = """\
ANTONY.
Friends, Romans, countrymen, lend me your ears;
I come to bury Caesar, not to praise him.
The evil that men do lives after them;
The good is oft interred with their bones:
So let it be with Caesar. The noble Brutus
Hath told you Caesar was ambitious:
If it were so, it was a grievous fault;
And grievously hath Caesar answer'd it.
Here, under leave of Brutus and the rest,--
For Brutus is an honourable man;
So are they all, all honorable men,--
Come I to speak in Caesar's funeral.
He was my friend, faithful and just to me:
But Brutus says he was ambitious;
And Brutus is an honourable man.
He hath brought many captives home to Rome,
Whose ransoms did the general coffers fill:
Did this in Caesar seem ambitious?
When that the poor have cried, Caesar hath wept:
Ambition should be made of sterner stuff:
Yet Brutus says he was ambitious;
And Brutus is an honourable man.
You all did see that on the Lupercal
I thrice presented him a kingly crown,
Which he did thrice refuse: was this ambition?
Yet Brutus says he was ambitious;
And, sure, he is an honourable man.
I speak not to disprove what Brutus spoke,
But here I am to speak what I do know.
You all did love him once,--not without cause:
What cause withholds you, then, to mourn for him?--
"""


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


# ----------------------------------------------------------------------------- part 1: how often
def capture_ffn_k(path: Path, tokens: list[int], *, official: bool = True) -> dict:
    """Run ``tokens`` one at a time (state carried) and return the FFN activations.

    Returns dict(k=[L] tensors [T, F] fp32 (relu(.)^2 of each token), cfg, and the logit checks:
    max |hooked - fast| / std(fast) over all tokens, and the same vs the official package (or None).
    """
    import rwkvrt

    fast = rwkvrt.load(str(path), "cpu fp32")  # untouched: one-token fast path
    hooked = rwkvrt.load(str(path), "cpu fp32")
    net = hooked.net
    net._fast = False  # this instance only: the T-generic path, which calls _channel_mix per layer
    L = net.cfg.n_layer
    rec: list[list[torch.Tensor]] = [[] for _ in range(L)]

    def channel_mix(i, p, x, state):
        # the FFN from the reference math (rwkv7-math.md), recording k: x [B, T=1, C] is ln2(x)
        xx = state.ffn_x[i].unsqueeze(1) - x
        state.ffn_x[i].copy_(x[:, -1])
        k = torch.relu(F.linear(x + xx * p.ffn_x_k, p.ffn_key)) ** 2  # [B, 1, F]
        rec[i].append(k[0, 0].clone())
        return F.linear(k, p.ffn_value)

    net._channel_mix = channel_mix  # instance attribute: the class and every other model are untouched
    ref = None
    if official:
        try:
            from rwkv.model import RWKV as Official

            ref = Official(model=str(path).removesuffix(".pth"), strategy="cpu fp32")
        except Exception as e:  # noqa: BLE001  (the check is optional: report why it was skipped)
            print(f"  (official rwkv package check skipped: {e})", file=sys.stderr)
    s_fast = s_hook = s_ref = None
    d_fast = d_ref = 0.0
    with torch.no_grad():
        for t in tokens:
            lf, s_fast = fast.forward([[t]], s_fast)
            lh, s_hook = hooked.forward([[t]], s_hook)
            d_fast = max(d_fast, ((lh - lf).abs().max() / lf.std()).item())
            if ref is not None:
                lo, s_ref = ref.forward([t], s_ref)
                d_ref = max(d_ref, ((lh[0] - lo.float()).abs().max() / lo.float().std()).item())
    return dict(k=[torch.stack(r) for r in rec], cfg=net.cfg, d_fast=d_fast, d_ref=d_ref if ref else None)


def union_fraction(nz: torch.Tensor, B: int, *, random: bool, gen: torch.Generator) -> float:
    """nz: [T, F] bool (row needed by that token). Mean over groups of B tokens of the fraction of rows
    needed by ANY token of the group: consecutive groups, or B tokens drawn without replacement."""
    T = nz.shape[0]
    if random:
        n = max(1, T // B)
        idx = torch.stack([torch.randperm(T, generator=gen)[:B] for _ in range(n)])  # [n, B]
        groups = nz[idx]
    else:
        groups = nz[: T // B * B].view(T // B, B, -1)
    return groups.any(dim=1).float().mean().item()


def part_often(args) -> list[dict]:
    text = Path(args.text).read_bytes() if args.text else TEXT.encode()
    reps = -(-args.tokens // len(text))
    tokens = list((text * reps)[: args.tokens]) if args.text is None else list(text[: args.tokens])
    gen = torch.Generator().manual_seed(0)
    rows = []
    for name in args.models.split(","):
        path = MODELS[name]
        t0 = time.perf_counter()
        cap = capture_ffn_k(path, tokens, official=not args.no_official)
        cfg = cap["cfg"]
        print(f"\n[{name}] {path.name}: L={cfg.n_layer} C={cfg.n_embd} F={cap['k'][0].shape[1]}, "
              f"{len(tokens)} tokens, {time.perf_counter() - t0:.1f} s; logits: hooked vs fast path "
              f"max|d|/std {cap['d_fast']:.2e}, vs official "
              + ("n/a" if cap["d_ref"] is None else f"{cap['d_ref']:.2e}"))
        print("layer | zeros in k: mean  p10   p90 | rows needed, consecutive B=1/4/16 | random B=4/16")
        for i, k in enumerate(cap["k"]):
            nz = k != 0  # [T, F]
            zf = (1 - nz.float().mean(1)).tolist()  # per token
            r = dict(kind="often", model=name, layer=i, tokens=len(tokens), zero_mean=statistics.fmean(zf),
                     zero_p10=_pct(zf, 0.1), zero_p90=_pct(zf, 0.9))
            for B in (1, 4, 16):
                r[f"need_consec_B{B}"] = union_fraction(nz, B, random=False, gen=gen)
            for B in (4, 16):
                r[f"need_random_B{B}"] = union_fraction(nz, B, random=True, gen=gen)
            # rows no token of the whole text ever needs (dead channels)
            r["dead_rows"] = 1 - nz.any(0).float().mean().item()
            rows.append(r)
            print(f"{i:5d} | {r['zero_mean']:17.3f} {r['zero_p10']:5.3f} {r['zero_p90']:5.3f} | "
                  f"{r['need_consec_B1']:.3f} {r['need_consec_B4']:.3f} {r['need_consec_B16']:.3f}"
                  f"{'':14s} | {r['need_random_B4']:.3f} {r['need_random_B16']:.3f}"
                  f"   (dead rows {r['dead_rows']:.3f})")
        allk = torch.cat([k != 0 for k in cap["k"]], 1)
        print(f" all  | {1 - allk.float().mean().item():17.3f}   (mean over layers and tokens)")
        rows.append(dict(kind="often-check", model=name, d_fast=cap["d_fast"], d_official=cap["d_ref"],
                         zero_mean_all=1 - allk.float().mean().item()))
    return rows


# ----------------------------------------------------------------------------- part 2: how much
def _timeit(fn, iters: int) -> float:
    """Median of 5 runs of ``iters`` calls, microseconds per call (fn cycles its own inputs)."""
    for _ in range(max(3, iters // 10)):
        fn()
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        runs.append((time.perf_counter() - t0) / iters * 1e6)
    return statistics.median(runs)


def sparse_gather_mv(k: torch.Tensor, WvT: torch.Tensor) -> torch.Tensor:
    """k [1, F] fp32, WvT [F, C] fp32 (W_value.T, [in, out]); neither mutated. Returns k @ WvT [1, C] reading
    only the rows where k != 0: nonzero, index_select (an [n, C] copy of those rows), mv."""
    idx = k[0].nonzero().squeeze(1)
    rows = WvT.index_select(0, idx)
    return torch.mv(rows.t(), k[0].index_select(0, idx)).unsqueeze(0)


def sparse_embedding_bag(k: torch.Tensor, WvT: torch.Tensor) -> torch.Tensor:
    """Same contract as ``sparse_gather_mv``: sum_j k[idx_j] * WvT[idx_j] as one fused weighted gather
    (F.embedding_bag, mode "sum"), with no [n, C] copy."""
    idx = k[0].nonzero().squeeze(1)
    return F.embedding_bag(idx.unsqueeze(0), WvT, per_sample_weights=k[0, idx].unsqueeze(0), mode="sum")


def decode_step_ms(C: int, L: int, V: int = 65536, steps: int = 40) -> float:
    """Milliseconds per one-token decode step (B = 1, 1 thread) of rwkvrt's CPU fp32 fast path on random
    weights of shape L x C (speed does not depend on the values)."""
    from rwkvrt.models.rwkv7 import RWKV7
    from rwkvrt.models.shapes import make_config, random_state_dict
    from rwkvrt.state import State

    cfg = make_config(L, C, V)
    m = RWKV7(cfg, random_state_dict(cfg, seed=0))
    st, tok = State.zeros(cfg, 1), torch.tensor([[1]])
    with torch.no_grad():
        for _ in range(5):
            m.forward(tok, st)
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(steps // 3):
                m.forward(tok, st)
            runs.append((time.perf_counter() - t0) / (steps // 3) * 1e3)
    return statistics.median(runs)


def value_byte_share(C: int, L: int, V: int = 65536) -> float:
    """Share of W_value in the weight bytes one decode step reads: 4C*C of ~13.9*C*C per layer, plus the head."""
    return L * 4 * C * C / (L * 13.9 * C * C + V * C)


def part_much(args) -> list[dict]:
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for shape in args.shapes.split(","):
        C, Fd, L = SHAPES[shape]
        # enough distinct layers that the set (>= 96 MiB) does not fit the 32 MiB L3: each call streams
        # its weights from memory, as in a decode step where every layer's matrices are read once
        n = max(2, -(-96 * 2**20 // (C * Fd * 4)))
        WvT = [torch.randn(Fd, C, generator=gen) / Fd**0.5 for _ in range(n)]  # [F, C] = W_value.T, [in, out]
        Wv = [torch.randn(C, Fd, generator=gen) / Fd**0.5 for _ in range(n)]  # [C, F] = W_value, [out, in]
        iters = 60 if shape == "0.1B" else 20
        ctr = [0]

        def nxt():
            ctr[0] += 1
            return ctr[0] % n

        kd = torch.rand(1, Fd, generator=gen)
        t_dense_oi = _timeit(lambda: F.linear(kd, Wv[nxt()]), iters)  # [out, in] (the CPU model's layout)
        t_dense_io = _timeit(lambda: torch.mm(kd, WvT[nxt()]), iters)  # [in, out]
        base = min(t_dense_oi, t_dense_io)
        mb = C * Fd * 4 / 2**20
        print(f"\n[{shape}] C={C} F={Fd}, 1 thread, {n} weight copies cycled ({mb:.1f} MiB each)")
        print(f"dense F.linear [out,in] {t_dense_oi:7.1f} us ({mb / t_dense_oi * 1e6 / 1024:.1f} GiB/s)"
              f" | mm [in,out] {t_dense_io:7.1f} us ({mb / t_dense_io * 1e6 / 1024:.1f} GiB/s)")
        rows.append(dict(kind="much", shape=shape, method="dense-out_in", sparsity=0.0, us=t_dense_oi))
        rows.append(dict(kind="much", shape=shape, method="dense-in_out", sparsity=0.0, us=t_dense_io))
        print("sparsity | gather+mv [in,out] | embedding_bag [in,out] | ideal (dense x (1-s)) | best/dense")
        for s in SPARSITIES:
            # a fresh random pattern per call would cost randperm time inside the loop: cycle 16 patterns
            ks = []
            for _ in range(16):
                k = torch.rand(1, Fd, generator=gen)
                k[0, torch.randperm(Fd, generator=gen)[: round(s * Fd)]] = 0
                ks.append(k)

            # exactness of both against dense, once per level
            ref = torch.mm(ks[0], WvT[0])
            rel = max(((f(ks[0], WvT[0]) - ref).abs().max() / ref.abs().max()).item()
                      for f in (sparse_gather_mv, sparse_embedding_bag))
            assert rel < 1e-5, rel
            gather_mv = lambda: sparse_gather_mv(ks[ctr[0] % 16], WvT[nxt()])  # noqa: E731
            emb_bag = lambda: sparse_embedding_bag(ks[ctr[0] % 16], WvT[nxt()])  # noqa: E731
            t_g = _timeit(gather_mv, iters)
            t_e = _timeit(emb_bag, iters)
            best = min(t_g, t_e)
            print(f"  {s:5.0%}  | {t_g:12.1f} us    | {t_e:14.1f} us      | {base * (1 - s):12.1f} us     "
                  f"| {best / base:5.2f}")
            rows.append(dict(kind="much", shape=shape, method="gather-mv", sparsity=s, us=t_g, dense_us=base))
            rows.append(dict(kind="much", shape=shape, method="embedding_bag", sparsity=s, us=t_e, dense_us=base))
        # break-even: the lowest measured sparsity where the best sparse method beats the best dense one
        be = [r["sparsity"] for r in rows if r.get("shape") == shape and r.get("dense_us") and r["us"] < r["dense_us"]]
        print(f"break-even ({shape}): " + (f"<= {min(be):.0%} sparsity" if be else "not reached at <= 95%"))
        print(f"W_value share of the bytes of a decode step at {shape}: {value_byte_share(C, L):.1%}")
        if shape == "0.1B" and not args.no_step:
            step = decode_step_ms(C, L)
            print(f"whole decode step ({shape}, rwkvrt cpu fp32 fast path, B=1, 1 thread): {step:.2f} ms; "
                  f"dense W_value products {L} x {t_dense_oi:.0f} us = {L * t_dense_oi / 1e3:.2f} ms "
                  f"({L * t_dense_oi / 1e3 / step:.1%})")
            print("  step time change with the embedding_bag product, by sparsity:  "
                  + "  ".join(f"{r['sparsity']:.0%}: {-L * (t_dense_oi - r['us']) / 1e3 / step:+.1%}"
                              for r in rows if r.get("shape") == shape and r.get("method") == "embedding_bag"))
            rows.append(dict(kind="step", shape=shape, step_ms=step, value_dense_us=t_dense_oi, layers=L))
        del WvT, Wv
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=("often", "much", "both"), default="both")
    ap.add_argument("--models", default="demo,tiny", help="comma list of: " + ",".join(MODELS))
    ap.add_argument("--text", default=None, help="a text file to feed (bytes); default: the built-in passage")
    ap.add_argument("--tokens", type=int, default=1024, help="tokens fed per model (>= 500)")
    ap.add_argument("--no-official", action="store_true", help="skip the logits check vs the official package")
    ap.add_argument("--shapes", default="0.1B,1.5B")
    ap.add_argument("--no-step", action="store_true", help="skip the whole-decode-step timing at 0.1B")
    ap.add_argument("--json", action="store_true", help="also print one JSON line per result")
    args = ap.parse_args()
    rows = []
    if args.part in ("often", "both"):
        torch.set_num_threads(1)
        rows += part_often(args)
    if args.part in ("much", "both"):
        rows += part_much(args)
    if args.json:
        for r in rows:
            print(json.dumps(r))


if __name__ == "__main__":
    main()
