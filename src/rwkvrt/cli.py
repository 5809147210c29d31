"""The ``rwkvrt`` command: generate, chat, convert, info, bench.

Every user error (a bad path, checkpoint, strategy, sampling value, state file...) is
printed as one line ``rwkvrt: error: ...`` on stderr with exit code 2; Ctrl-C exits
with 130. ``main(argv)`` returns the exit code, so tests can call it in-process.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import RWKVRTError

EXIT_USAGE = 2
EXIT_INTERRUPT = 130


class UserError(RWKVRTError):
    """A CLI-level user error (bad option combination, missing demo model...)."""


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line error format (argparse's own prints the usage block first)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"rwkvrt: error: {message}. Fix: see `{self.prog} --help`\n")


def default_strategy() -> str:
    """'cuda fp16' when PyTorch sees a CUDA GPU, else 'cpu fp32'."""
    import torch

    return "cuda fp16" if torch.cuda.is_available() else "cpu fp32"


# ---------------------------------------------------------------- arguments

def _add_model_args(p: argparse.ArgumentParser, *, model_option: bool = True) -> None:
    if model_option:
        p.add_argument("--model", "-m", metavar="PATH",
                       help="RWKV-7 checkpoint: an official x070 .pth (the '.pth' suffix may be left out) or a "
                            "directory made by `rwkvrt convert`. Default: the bundled byte-level Shakespeare demo.")
    p.add_argument("--strategy", "-s", metavar="S", default=None,
                   help="device and dtype, e.g. 'cpu fp32', 'cpu bf16', 'cuda fp16', 'cuda:1 bf16'. "
                        "Default: 'cuda fp16' when a CUDA GPU is visible, else 'cpu fp32'.")


def _add_sampling_args(p: argparse.ArgumentParser, *, max_tokens: int, top_p: float = 0.85, presence: float = 0.2,
                       frequency: float = 0.2, source: str = "the official PIPELINE_ARGS") -> None:
    g = p.add_argument_group(f"sampling (defaults are {source} ones)")
    g.add_argument("--max-tokens", "-n", type=int, default=max_tokens, metavar="N",
                   help=f"most tokens to generate (default {max_tokens}); 0 only reads the prompt")
    g.add_argument("--temperature", "-t", type=float, default=1.0, metavar="T",
                   help="sampling temperature >= 0; 0 is greedy (default 1.0)")
    g.add_argument("--top-p", type=float, default=top_p, metavar="P",
                   help=f"nucleus sampling, in [0, 1]; 1 is off, 0 is greedy (default {top_p})")
    g.add_argument("--top-k", type=int, default=0, metavar="K", help="keep the K most likely tokens; 0 is off (default 0)")
    g.add_argument("--min-p", type=float, default=0.0, metavar="M",
                   help="keep tokens with p >= M * max p, in [0, 1]; 0 is off (default 0)")
    g.add_argument("--presence-penalty", type=float, default=presence, metavar="X",
                   help=f"subtracted from the logit of every token already generated (default {presence})")
    g.add_argument("--frequency-penalty", type=float, default=frequency, metavar="X",
                   help=f"subtracted once per (decayed) occurrence of a generated token (default {frequency})")
    g.add_argument("--penalty-decay", type=float, default=0.996, metavar="D",
                   help="occurrence counts are multiplied by D after each token, in [0, 1] (default 0.996)")
    g.add_argument("--stop", action="append", default=[], metavar="STR",
                   help="stop when this text is produced (not printed); repeatable; '\\n' is a newline")
    g.add_argument("--seed", type=int, default=None, metavar="N", help="random seed, for reproducible sampling")
    g.add_argument("--chunk-len", type=int, default=256, metavar="N",
                   help="prompt tokens read per forward call (default 256)")


def _add_state_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state", metavar="FILE",
                   help="start from a saved state (written by --save-state, /save or rwkvrt.save_state, "
                        "or an official state-tuning .pth)")
    p.add_argument("--save-state", metavar="FILE", help="write the final state here (safetensors)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(
        prog="rwkvrt", description="A fast, exact runtime for RWKV-7 language models.",
        epilog="Run `rwkvrt COMMAND --help` for the options of a command. Errors print one line and exit 2.")
    parser.add_argument("--version", action="version", version=f"rwkvrt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("generate", help="continue a prompt, streaming the text to stdout",
                       description="Continue PROMPT with the model, printing text as it is produced.")
    p.add_argument("prompt", metavar="PROMPT", nargs="?", default=None,
                   help="the text to continue; '-' reads it from stdin")
    p.add_argument("--prompt-file", "-f", metavar="FILE", help="read the prompt from this UTF-8 file instead")
    _add_model_args(p)
    _add_sampling_args(p, max_tokens=200)
    _add_state_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="interactive chat (reads lines from stdin)",
                       description="Chat with the model. Each line is a user message, sent as "
                                   "'User: MSG\\n\\nAssistant:'; the reply streams and ends at a blank line. "
                                   "The conversation state is kept between turns. Commands: /reset (forget the "
                                   "conversation), /save FILE (save the state), /quit (or end of input) to exit.")
    _add_model_args(p)
    _add_sampling_args(p, max_tokens=500, top_p=0.3, presence=0.5, frequency=0.5,
                       source="the official chat demo's (API_DEMO_CHAT.py)")
    _add_state_args(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("convert", help="convert an official .pth to rwkvrt's directory format",
                       description="Write IN (an official RWKV-7 .pth) as OUT_DIR/model.safetensors + config.json.")
    p.add_argument("input", metavar="IN.pth", help="the official checkpoint to read (never modified)")
    p.add_argument("output", metavar="OUT_DIR", help="the directory to create")
    p.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default=None,
                   help="store floating-point weights in this dtype (default: keep the file's dtypes)")
    p.add_argument("--tokenizer", metavar="NAME", default=None,
                   help="record the tokenizer ('rwkv_vocab_v20230424', 'bytes' or a vocab .txt path); "
                        "default: from the vocabulary size")
    p.add_argument("--force", action="store_true", help="write into OUT_DIR even if it is not empty")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("info", help="print a model's shapes, sizes and state size",
                       description="Print layers, width, heads, LoRA ranks, vocabulary, parameters, file size, "
                                   "dtype and the state size per sequence.")
    p.add_argument("model", metavar="MODEL", help="an official .pth or an rwkvrt model directory")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("bench", help="measure speed (prefill and decode tokens/s)",
                       description="Benchmark the runtime.")
    try:
        from . import bench
    except ImportError as e:  # not written yet, or a dependency of it is missing
        p.set_defaults(func=cmd_bench_missing, bench_problem=f"cannot import rwkvrt.bench ({e})")
    else:
        try:
            bench.add_arguments(p)
            p.set_defaults(func=cmd_bench)
        except Exception as e:  # noqa: BLE001 - a bug in bench must not take down the other commands
            p.set_defaults(func=cmd_bench_missing, bench_problem=f"rwkvrt.bench.add_arguments failed ({e})")
    return parser


# ---------------------------------------------------------------- helpers

def _load_model(args):
    from .engine import DEMO_MODEL
    from .model import load

    path = getattr(args, "model", None)
    if path is None:
        if not DEMO_MODEL.is_file():
            raise UserError("no --model given and the bundled demo model is missing", got=f"'{DEMO_MODEL}'",
                            fix="pass --model PATH (an RWKV-7 .pth or an rwkvrt directory)")
        path = DEMO_MODEL
    model = load(path, default_strategy() if args.strategy is None else args.strategy)
    _ = model.tokenizer  # fail now, with its one-line error, if the model has no known tokenizer
    return model


def _params(args):
    from .sampling import SamplingParams

    return SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, min_p=args.min_p,
                          presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty,
                          penalty_decay=args.penalty_decay, seed=args.seed)


def _stops(args) -> tuple[str, ...]:
    # a shell cannot easily pass a newline, so accept the escapes \n, \t and \\
    out = []
    for s in args.stop:
        out.append(s.replace("\\\\", "\0").replace("\\n", "\n").replace("\\t", "\t").replace("\0", "\\"))
    return tuple(out)


def _generator(args, model):
    from .engine import Generator

    return Generator(model, chunk_len=args.chunk_len)


def _check_save_path(args) -> None:
    """Fail before generating, not after, when --save-state cannot be written."""
    if not args.save_state:
        return
    p = Path(args.save_state).expanduser()
    if p.is_dir():
        raise UserError("--save-state names a directory", got=f"'{p}'", fix="give a file name, e.g. state.safetensors")
    if not p.parent.is_dir():
        raise UserError("--save-state: the directory does not exist", got=f"'{p.parent}'",
                        fix="create it first or choose another path")


def _initial_state(args, model):
    from .state_io import load_state

    return load_state(args.state, model) if args.state else model.zero_state(1)


def _safe_stdout() -> None:
    # a terminal that cannot show some character gets '?' instead of a crash mid-stream
    try:
        sys.stdout.reconfigure(errors="replace")
    except (AttributeError, ValueError):  # not a TextIOWrapper (e.g. replaced by a test)
        pass


def _write(out, text: str) -> None:
    out.write(text)
    out.flush()


# ---------------------------------------------------------------- commands

def cmd_generate(args) -> int:
    from .engine import Generation
    from .state_io import save_state

    if (args.prompt is None) == (args.prompt_file is None):
        raise UserError("give the prompt either as PROMPT or with --prompt-file", got="both" if args.prompt else "neither",
                        fix="e.g. rwkvrt generate 'ROMEO:' (or '-' to read stdin)")
    if args.prompt_file is not None:
        try:
            prompt = Path(args.prompt_file).read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"prompt file '{args.prompt_file}' is not UTF-8 text", got=f"byte {e.object[e.start]:#x} "
                            f"at offset {e.start}", fix="save the prompt as UTF-8") from None
    else:
        prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    params, stops = _params(args), _stops(args)
    _check_save_path(args)
    model = _load_model(args)
    gen = _generator(args, model)
    state = _initial_state(args, model)
    res = Generation()
    _safe_stdout()
    for piece in gen.stream(prompt, state=state, max_tokens=args.max_tokens, params=params, stop=stops, result=res):
        _write(sys.stdout, piece)
    if res.text and not res.text.endswith("\n") and sys.stdout.isatty():
        _write(sys.stdout, "\n")  # end the line for a terminal; piped output is exactly the text
    if args.save_state:
        save_state(res.state, args.save_state, model)
    return 0


def normalize_message(text: str) -> str:
    """As the official chat demo: a typed '\\n' is a newline; strip; collapse blank lines inside the
    message (a blank line ends a turn in the chat format)."""
    text = text.replace("\r\n", "\n").replace("\\n", "\n").strip()
    while "\n\n" in text:
        text = text.replace("\n\n", "\n")
    return text


def chat_prompt(msg: str) -> str:
    return f"User: {msg}\n\nAssistant:"


def cmd_chat(args) -> int:
    from .engine import Generation
    from .state_io import save_state

    import dataclasses

    params, stops = _params(args), _stops(args) or ("\n\n",)
    if "\n\n" not in stops:
        stops = stops + ("\n\n",)
    _check_save_path(args)
    model = _load_model(args)
    eot = model.tokenizer.eot_id
    if eot is not None:  # as the official chat demo: a reply ends with a blank line, never end-of-text
        params = dataclasses.replace(params, token_ban=tuple(params.token_ban) + (eot,))
    gen = _generator(args, model)
    state = _initial_state(args, model)
    interactive = sys.stdin.isatty()
    _safe_stdout()
    while True:
        if interactive:
            try:
                line = input("User: ")
            except EOFError:
                break
        else:
            line = sys.stdin.readline()
            if not line:
                break
        msg = normalize_message(line)
        if not msg:
            continue
        if msg in ("/quit", "/exit"):
            break
        if msg == "/reset":
            state = _initial_state(args, model)
            print("(conversation reset)", file=sys.stderr)
            continue
        if msg.split()[0] == "/save":
            parts = msg.split(maxsplit=1)
            if len(parts) != 2:
                print("rwkvrt: error: /save needs a file name. Fix: type /save FILE", file=sys.stderr)
                continue
            try:
                target = Path(parts[1]).expanduser()
                if target.is_dir() or not target.parent.is_dir():
                    raise UserError("cannot save the state there", got=f"'{target}'",
                                    fix="give a file name in an existing directory")
                save_state(state, target, model)
            except (RWKVRTError, OSError) as e:  # keep chatting after a bad /save
                print(f"rwkvrt: error: {' '.join(str(e).split())}", file=sys.stderr)
                continue
            print(f"(state saved to {parts[1]})", file=sys.stderr)
            continue
        res = Generation()
        _write(sys.stdout, "Assistant:")
        for piece in gen.stream(chat_prompt(msg), state=state, max_tokens=args.max_tokens, params=params,
                                stop=stops, result=res):
            _write(sys.stdout, piece)
        _write(sys.stdout, "\n\n")
        state = res.state
    if args.save_state:
        save_state(state, args.save_state, model)
    return 0


def cmd_convert(args) -> int:
    import dataclasses

    import torch

    from .weights import load_state_dict, resolve_model_path, save_rwkvrt

    src = resolve_model_path(args.input)
    out = Path(args.output)
    if out.exists() and out.resolve() == src.resolve():
        raise UserError("convert would overwrite its input", got=f"'{out}'", fix="choose another output directory")
    if out.exists() and not out.is_dir():
        raise UserError("output exists and is not a directory", got=f"'{out}'", fix="choose another output directory")
    if out.is_dir() and any(out.iterdir()) and not args.force:
        raise UserError("output directory is not empty", got=f"'{out}'",
                        fix="choose a new directory, or pass --force to write into it")
    old = out / "model.safetensors"
    if args.force and old.exists() and old.resolve() == src.resolve():
        raise UserError("convert would overwrite its input", got=f"'{src}'", fix="choose another output directory")
    sd, cfg, _ = load_state_dict(src)  # read (and check) the input before touching the output
    if args.tokenizer:
        from .tokenizer import get_tokenizer

        tok = get_tokenizer(args.tokenizer)
        if tok.vocab_size != cfg.vocab_size:
            raise UserError("tokenizer does not fit the model", expected=f"vocab size {cfg.vocab_size}",
                            got=f"'{args.tokenizer}' with {tok.vocab_size}", fix="pick the model's tokenizer")
        cfg = dataclasses.replace(cfg, tokenizer=args.tokenizer)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(args.dtype)
    if args.force and old.exists():
        old.unlink()  # save_rwkvrt refuses to overwrite a model; --force said to
    save_rwkvrt(sd, cfg, out, dtype=dtype)
    print(f"wrote {out} ({_size(_disk_bytes(out))})")
    return 0


def _disk_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def model_info(path) -> dict:
    """Shapes and sizes of a checkpoint, without building the model."""
    from .weights import load_state_dict

    sd, cfg, p = load_state_dict(path)
    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in sd.values()})
    n_params = sum(v.numel() for v in sd.values())
    numel = cfg.state_numel()
    # token-shift vectors (2C per layer) in the activation dtype, WKV matrices always float32
    state_fp32 = numel * 4
    state_16 = cfg.n_layer * 2 * cfg.n_embd * 2 + cfg.n_layer * cfg.n_head * cfg.head_size ** 2 * 4
    return {"path": str(p), "format": "rwkvrt" if p.is_dir() else p.suffix.lstrip(".") or "pth",
            "arch": "rwkv7-x070", "n_layer": cfg.n_layer, "n_embd": cfg.n_embd, "n_head": cfg.n_head,
            "head_size": cfg.head_size, "d_decay": cfg.d_decay, "d_aaa": cfg.d_aaa, "d_mv": cfg.d_mv,
            "d_gate": cfg.d_gate, "d_ffn": cfg.d_ffn, "vocab_size": cfg.vocab_size, "tokenizer": cfg.tokenizer,
            "n_params": n_params, "bytes_on_disk": _disk_bytes(p), "dtype": dtypes[0] if len(dtypes) == 1 else dtypes,
            "state_numel": numel, "state_bytes_fp32": state_fp32, "state_bytes_fp16": state_16}


def cmd_info(args) -> int:
    info = model_info(args.model)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    dt = info["dtype"] if isinstance(info["dtype"], str) else ", ".join(info["dtype"])
    lines = [
        ("path", f"{info['path']} ({info['format']})"),
        ("architecture", info["arch"]),
        ("layers", info["n_layer"]),
        ("width", info["n_embd"]),
        ("heads", f"{info['n_head']} x head size {info['head_size']}"),
        ("LoRA dims", f"decay {info['d_decay']}, a {info['d_aaa']}, value {info['d_mv']}, gate {info['d_gate']}"),
        ("FFN width", info["d_ffn"]),
        ("vocab", info["vocab_size"]),
        ("tokenizer", info["tokenizer"] or "unknown"),
        ("parameters", f"{info['n_params']:,} ({info['n_params'] / 1e6:.2f}M)"),
        ("bytes on disk", f"{info['bytes_on_disk']:,} ({_size(info['bytes_on_disk'])})"),
        ("dtype", dt),
        ("state/sequence", f"{info['state_numel']:,} numbers; {_size(info['state_bytes_fp32'])} (fp32), "
                           f"{_size(info['state_bytes_fp16'])} (fp16/bf16; WKV stays fp32)"),
    ]
    w = max(len(k) for k, _ in lines)
    for k, v in lines:
        print(f"{k + ':':<{w + 1}} {v}")
    return 0


def cmd_bench(args) -> int:
    from . import bench

    return int(bench.run(args) or 0)


def cmd_bench_missing(args) -> int:
    raise UserError("the bench command is not available in this build", got=args.bench_problem,
                    fix="update or reinstall rwkvrt")


# ---------------------------------------------------------------- entry point

def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 user error, 130 interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on bad usage, 0 on --help
        return int(e.code or 0)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.func(args)
    except KeyboardInterrupt:
        try:
            sys.stdout.write("\n")
            sys.stdout.flush()
        except Exception:  # stdout may be gone (closed pipe)
            pass
        return EXIT_INTERRUPT
    except BrokenPipeError:  # e.g. `rwkvrt generate ... | head`
        return 0
    except (RWKVRTError, FileNotFoundError, IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        if isinstance(e, OSError) and e.filename:
            msg = f"{e.strerror or type(e).__name__}: '{e.filename}'. Fix: check the path"
        print(f"rwkvrt: error: {msg}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
