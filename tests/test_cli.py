"""The rwkvrt command, run in-process through rwkvrt.cli.main (plus one subprocess for the entry point)."""
from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys

import pytest
import torch

import rwkvrt
from rwkvrt import cli
from rwkvrt.state_io import load_state

GREEDY = ["-t", "0", "--presence-penalty", "0", "--frequency-penalty", "0"]


def greedy_tokens(model, tokens: list[int], n: int) -> list[int]:
    """The plain native loop: forward, argmax, feed back."""
    logits, st = model.forward(tokens)
    out = []
    for _ in range(n):
        t = int(logits[0].argmax())
        out.append(t)
        logits, st = model.forward([t], st)
    return out


def run(argv, capsys, stdin: str | None = None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_generate_greedy_equals_native_loop(byte_ckpt, byte_model, capsys):
    rc, out, err = run(["generate", "-m", byte_ckpt, "-n", 30, *GREEDY, "ROMEO:"], capsys)
    assert rc == 0, err
    tok = byte_model.tokenizer
    assert out == tok.decode(greedy_tokens(byte_model, tok.encode("ROMEO:"), 30))


def test_generate_streams_piece_by_piece(byte_ckpt, monkeypatch):
    writes = []

    class Out(io.StringIO):
        def flush(self):
            writes.append(self.getvalue())

    out = Out()
    monkeypatch.setattr(sys, "stdout", out)
    assert cli.main(["generate", "-m", str(byte_ckpt), "-n", "20", *GREEDY, "ab"]) == 0
    assert len(writes) >= 10  # flushed as it went, not once at the end
    assert writes[-1] == out.getvalue()


def test_generate_prompt_from_stdin(byte_ckpt, capsys, monkeypatch):
    rc1, out1, _ = run(["generate", "-m", byte_ckpt, "-n", 10, *GREEDY, "-"], capsys, "KING:", monkeypatch)
    rc2, out2, _ = run(["generate", "-m", byte_ckpt, "-n", 10, *GREEDY, "KING:"], capsys)
    assert rc1 == rc2 == 0 and out1 == out2


def test_generate_seed_reproducible(byte_ckpt, capsys):
    args = ["generate", "-m", byte_ckpt, "-n", 40, "--top-p", "1", "-t", "1.5", "ROMEO:"]
    a = run([*args, "--seed", 7], capsys)[1]
    b = run([*args, "--seed", 7], capsys)[1]
    c = run([*args, "--seed", 8], capsys)[1]
    assert a == b and len(a) > 0
    assert a != c


def test_generate_stop_string(byte_ckpt, byte_model, capsys):
    tok = byte_model.tokenizer
    text = tok.decode(greedy_tokens(byte_model, tok.encode("ROMEO:"), 40))
    # a 2-character stop string taken from the middle of the greedy text
    i = next(i for i in range(8, len(text) - 2)
             if "\\" not in text[i:i + 2] and "\ufffd" not in text[i:i + 2])
    stop = text[i:i + 2]
    rc, out, err = run(["generate", "-m", byte_ckpt, "-n", 40, *GREEDY, "--stop", "zzzz", "--stop", stop,
                        "ROMEO:"], capsys)
    assert rc == 0, err
    assert out == text[:text.find(stop)]


def test_generate_save_state_then_continue(byte_ckpt, byte_model, capsys, tmp_path):
    tok = byte_model.tokenizer
    st = tmp_path / "s.safetensors"
    rc, out1, err = run(["generate", "-m", byte_ckpt, "-n", 12, *GREEDY, "--save-state", st, "ROMEO:"], capsys)
    assert rc == 0, err
    p1 = tok.encode("ROMEO:")
    r1 = greedy_tokens(byte_model, p1, 12)
    assert out1 == tok.decode(r1)
    rc, out2, err = run(["generate", "-m", byte_ckpt, "-n", 12, *GREEDY, "--state", st, " JULIET:"], capsys)
    assert rc == 0, err
    # the saved state had read the prompt and every generated token
    assert out2 == tok.decode(greedy_tokens(byte_model, p1 + r1 + tok.encode(" JULIET:"), 12))


def test_generate_max_tokens_zero_primes_state(byte_ckpt, byte_model, capsys, tmp_path):
    st = tmp_path / "p.safetensors"
    rc, out, _ = run(["generate", "-m", byte_ckpt, "-n", 0, "--save-state", st, "ROMEO:"], capsys)
    assert rc == 0 and out == ""
    s = load_state(st, byte_model)
    _, ref = byte_model.forward(byte_model.tokenizer.encode("ROMEO:"))
    assert torch.equal(s.wkv, ref.wkv) and torch.equal(s.att_x, ref.att_x) and torch.equal(s.ffn_x, ref.ffn_x)


def test_chat_two_turns_keeps_state(byte_ckpt, byte_model, capsys, monkeypatch, tmp_path):
    tok = byte_model.tokenizer
    n = 10
    saved = tmp_path / "chat.safetensors"
    stdin = "  hello there \n\nsecond\n\n\nmessage\n/save " + str(saved) + "\n"
    rc, out, err = run(["chat", "-m", byte_ckpt, "-n", n, *GREEDY], capsys, stdin, monkeypatch)
    assert rc == 0, err

    def reply(prefix):
        toks = greedy_tokens(byte_model, prefix, n)
        text = tok.decode(toks)
        return toks, (text[:text.find("\n\n")] if "\n\n" in text else text)

    # blank lines between messages are skipped; each line is one turn
    p1 = tok.encode(cli.chat_prompt("hello there"))
    r1, t1 = reply(p1)
    p2 = tok.encode(cli.chat_prompt("second"))
    r2, t2 = reply(p1 + r1 + p2)
    p3 = tok.encode(cli.chat_prompt("message"))
    r3, t3 = reply(p1 + r1 + p2 + r2 + p3)
    if "\n\n" in tok.decode(r1 + r2 + r3):
        pytest.skip("random model produced a blank line; the exact transcript check assumes none")
    assert out == f"Assistant:{t1}\n\nAssistant:{t2}\n\nAssistant:{t3}\n\n"
    # the saved state equals one run over the whole transcript (prompts and every reply token)
    s = load_state(saved, byte_model)
    full = p1 + r1 + p2 + r2 + p3 + r3
    ref_logits, ref = byte_model.forward(full)
    nxt = tok.encode("U")
    a, _ = byte_model.forward(nxt, s.clone())
    b, _ = byte_model.forward(nxt, ref.clone())
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    torch.testing.assert_close(s.wkv, ref.wkv, rtol=0, atol=1e-5)


def test_chat_reset_and_quit(byte_ckpt, capsys, monkeypatch):
    rc, out, err = run(["chat", "-m", byte_ckpt, "-n", 5, *GREEDY], capsys, "hi\n/reset\nhi\n/quit\nnever\n",
                       monkeypatch)
    assert rc == 0, err
    turns = out.split("Assistant:")[1:]
    assert len(turns) == 2 and turns[0] == turns[1]  # after /reset the same message gives the same reply
    assert "reset" in err


def test_chat_normalizes_messages():
    assert cli.normalize_message("  a\n\n\nb \n") == "a\nb"
    assert cli.chat_prompt("hi") == "User: hi\n\nAssistant:"


def test_convert_round_trip(byte_ckpt, capsys, tmp_path):
    before = hashlib.sha256(byte_ckpt.read_bytes()).hexdigest()
    out_dir = tmp_path / "conv"
    rc, out, err = run(["convert", byte_ckpt, out_dir], capsys)
    assert rc == 0, err
    assert (out_dir / "model.safetensors").is_file() and (out_dir / "config.json").is_file()
    a, b = rwkvrt.load(byte_ckpt), rwkvrt.load(out_dir)
    assert a.config == b.config
    toks = list(b"To be, or not to be")
    assert torch.equal(a.forward(toks, full_output=True)[0], b.forward(toks, full_output=True)[0])
    assert hashlib.sha256(byte_ckpt.read_bytes()).hexdigest() == before
    # a second convert onto the same directory is refused, --force allows it
    rc, _, err = run(["convert", byte_ckpt, out_dir], capsys)
    assert rc == 2 and "--force" in err and len(err.strip().splitlines()) == 1
    rc, _, err = run(["convert", byte_ckpt, out_dir, "--force", "--dtype", "bf16"], capsys)
    assert rc == 0, err
    assert rwkvrt.load(out_dir).net is not None


def test_convert_with_tokenizer_name(ckpt_factory, capsys, tmp_path):
    p = ckpt_factory(1, 64, 300, 0)  # a vocabulary with no known tokenizer
    rc, _, err = run(["info", p], capsys)
    assert rc == 0
    rc, _, err = run(["convert", p, tmp_path / "x", "--tokenizer", "bytes"], capsys)
    assert rc == 2 and "vocab size 300" in err


def test_info_fields(byte_ckpt, capsys):
    rc, out, err = run(["info", byte_ckpt], capsys)
    assert rc == 0, err
    for field in ("layers:", "width:", "heads:", "head size 64", "LoRA dims:", "FFN width:", "vocab:", "tokenizer:",
                  "parameters:", "bytes on disk:", "dtype:", "state/sequence:"):
        assert field in out
    rc, out, _ = run(["info", byte_ckpt, "--json"], capsys)
    info = json.loads(out)
    cfg = rwkvrt.load(byte_ckpt).config
    assert info["n_layer"] == 2 and info["n_embd"] == 64 and info["n_head"] == 1 and info["head_size"] == 64
    assert info["vocab_size"] == 256 and info["tokenizer"] == "bytes" and info["d_ffn"] == 256
    assert info["n_params"] == cfg.n_params()
    assert info["bytes_on_disk"] == byte_ckpt.stat().st_size
    assert info["dtype"] == "float32"
    assert info["state_numel"] == 2 * (2 * 64 + 64 * 64) and info["state_bytes_fp32"] == 4 * info["state_numel"]


@pytest.mark.parametrize("sub", [None, "generate", "chat", "convert", "info", "bench"])
def test_help_lists_every_option(sub, capsys):
    rc, out, _ = run(["--help"] if sub is None else [sub, "--help"], capsys)
    assert rc == 0
    parser = cli.build_parser()
    if sub is not None:
        parser = next(a for a in parser._actions if hasattr(a, "choices") and isinstance(a.choices, dict)).choices[sub]
    for action in parser._actions:
        for opt in action.option_strings:
            assert opt in out
        if not action.option_strings and action.help is not None:
            assert action.help.split()[0] in out


def test_no_command_prints_help(capsys):
    rc, out, _ = run([], capsys)
    assert rc == 2 and "generate" in out


def test_keyboard_interrupt_exits_130(byte_ckpt, capsys, monkeypatch):
    from rwkvrt.engine import Generator

    def boom(*a, **k):
        raise KeyboardInterrupt
        yield  # pragma: no cover

    monkeypatch.setattr(Generator, "stream", boom)
    rc, _, err = run(["generate", "-m", byte_ckpt, "x"], capsys)
    assert rc == 130 and "Traceback" not in err


def test_python_m_entry_point():
    r = subprocess.run([sys.executable, "-m", "rwkvrt", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "generate" in r.stdout and "convert" in r.stdout


def test_missing_demo_model_message(capsys, monkeypatch, tmp_path):
    import rwkvrt.engine as engine

    monkeypatch.setattr(engine, "DEMO_MODEL", tmp_path / "absent.pth")
    rc, _, err = run(["generate", "ROMEO:"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "--model" in err


def test_default_model_generates(capsys):
    """Needs the bundled demo checkpoint (src/rwkvrt/data/rwkv7-shakespeare-demo.pth)."""
    rc, out, err = run(["generate", "ROMEO:", "--max-tokens", 40], capsys)
    assert rc == 0, err
    assert len(out) > 0


def test_generate_world_model(ckpt_factory, capsys):
    p = ckpt_factory(2, 64, 65536, 0)
    m = rwkvrt.load(p)
    tok = m.tokenizer
    rc, out, err = run(["generate", "-m", p, "-n", 12, *GREEDY, "--top-p", "0", "Hello world"], capsys)
    assert rc == 0, err
    ref = greedy_tokens(m, tok.encode("Hello world"), 12)
    if tok.eot_id in ref:
        ref = ref[:ref.index(tok.eot_id)]
    assert out == tok.decode(ref)


def test_stop_escapes_and_prompt_file(byte_ckpt, byte_model, capsys, tmp_path):
    assert cli._stops(type("A", (), {"stop": ["\\n\\n", "a\\\\nb", "\\t"]})()) == ("\n\n", "a\\nb", "\t")
    f = tmp_path / "prompt.txt"
    f.write_text("ROMEO:", encoding="utf-8")
    a = run(["generate", "-m", byte_ckpt, "-n", 8, *GREEDY, "--prompt-file", f], capsys)[1]
    b = run(["generate", "-m", byte_ckpt, "-n", 8, *GREEDY, "ROMEO:"], capsys)[1]
    assert a == b
    f.write_bytes(b"\xff\xfe bad")
    rc, _, err = run(["generate", "-m", byte_ckpt, "--prompt-file", f], capsys)
    assert rc == 2 and "not UTF-8" in err and len(err.strip().splitlines()) == 1
    rc, _, err = run(["generate", "-m", byte_ckpt, "--prompt-file", f, "also a prompt"], capsys)
    assert rc == 2 and "either" in err


def test_chat_message_escapes():
    assert cli.normalize_message("line one\\nline two\\n\\nthree ") == "line one\nline two\nthree"


def test_bench_registered(capsys):
    import importlib.util

    rc, out, err = run(["bench", "--help"], capsys)
    assert rc == 0 and "bench" in out
    if importlib.util.find_spec("rwkvrt.bench") is None:
        rc, _, err = run(["bench"], capsys)
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "bench" in err


def test_chat_bans_end_of_text_like_official_demo(ckpt_factory, capsys, monkeypatch):
    from rwkvrt.engine import Generator

    seen = []
    real = Generator.stream

    def spy(self, prompt, **kw):
        seen.append((prompt, kw["params"], kw["stop"]))
        return real(self, prompt, **kw)

    monkeypatch.setattr(Generator, "stream", spy)
    p = ckpt_factory(2, 64, 65536, 0)
    rc, out, err = run(["chat", "-m", p, "-n", 3], capsys, "hi\r\n", monkeypatch)
    assert rc == 0, err
    (prompt, params, stop), = seen
    assert prompt == "User: hi\n\nAssistant:" and 0 in params.token_ban and "\n\n" in stop
    assert (params.top_p, params.presence_penalty, params.frequency_penalty) == (0.3, 0.5, 0.5)
