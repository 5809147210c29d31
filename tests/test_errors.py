"""Bad inputs: one clear line (what was expected and a fix), the right RWKVRTError subclass in the API,
exit code 2 in the CLI, and the state left untouched by a failing call."""
from __future__ import annotations

import math

import pytest
import torch

import rwkvrt
from rwkvrt import cli
from rwkvrt.engine import Generator
from rwkvrt.errors import CheckpointError, SamplingError, StateError, StrategyError, TokenError
from rwkvrt.sampling import SamplingParams
from rwkvrt.strategy import parse_strategy


def one_line(msg: str) -> str:
    lines = msg.strip().splitlines()
    assert len(lines) == 1, msg
    return lines[0]


def cli_error(argv, capsys) -> str:
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    line = one_line(err)
    assert line.startswith("rwkvrt: error: ") and "Traceback" not in err
    return line


def api_error(exc, fn, *args, **kw) -> str:
    with pytest.raises(exc) as e:
        fn(*args, **kw)
    msg = one_line(str(e.value))
    assert "Fix:" in msg or "fix" in msg.lower()
    return msg


# ---------------------------------------------------------------- model files

def bad_files(tmp_path, good):
    d = tmp_path / "notamodel"
    d.mkdir(exist_ok=True)
    (d / "readme.txt").write_text("hello")
    txt = tmp_path / "text.pth"
    txt.write_text("this is a text file, not a checkpoint\n" * 20)
    trunc = tmp_path / "truncated.pth"
    data = good.read_bytes()
    trunc.write_bytes(data[: len(data) // 2])
    v6 = tmp_path / "v6.pth"
    torch.save({"emb.weight": torch.zeros(16, 8), "blocks.0.att.time_maa_x": torch.zeros(1, 1, 8),
                "blocks.0.att.time_faaaa": torch.zeros(1, 8)}, v6)
    v5 = tmp_path / "v5.pth"
    torch.save({"emb.weight": torch.zeros(16, 8), "blocks.0.att.time_faaaa": torch.zeros(1, 8),
                "blocks.0.att.time_decay": torch.zeros(1, 8)}, v5)
    return {"missing": (tmp_path / "nope.pth", "not found"), "dir": (d, "not an rwkvrt model"),
            "text": (txt, "cannot read"), "truncated": (trunc, "truncated"), "v6": (v6, "RWKV-6"),
            "v5": (v5, "RWKV-5")}


@pytest.mark.parametrize("kind", ["missing", "dir", "text", "truncated", "v6", "v5"])
def test_bad_model_file(kind, byte_ckpt, tmp_path, capsys):
    p, expected = bad_files(tmp_path, byte_ckpt)[kind]
    msg = api_error(CheckpointError, rwkvrt.load, p)
    assert expected in msg
    msg = api_error(CheckpointError, rwkvrt.RWKV, str(p))
    assert expected in msg
    line = cli_error(["generate", "-m", p, "hello"], capsys)
    assert expected in line and "Fix:" in line
    line = cli_error(["info", p], capsys)
    assert expected in line


# ---------------------------------------------------------------- strategies

@pytest.mark.parametrize("s, expected", [("gpu fp16", "unknown device"), ("cpu fp64", "unknown dtype"),
                                         ("cuda fp16 *10 -> cpu fp32", "one device"), ("", "empty")])
def test_bad_strategy(s, expected, byte_ckpt, capsys):
    msg = api_error(StrategyError, parse_strategy, s)
    assert expected in msg
    api_error(StrategyError, rwkvrt.load, byte_ckpt, s)
    line = cli_error(["generate", "-m", byte_ckpt, "-s", s, "hello"], capsys)
    assert expected in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu(byte_ckpt, capsys):
    line = cli_error(["generate", "-m", byte_ckpt, "-s", "cuda fp16", "hello"], capsys)
    assert "CUDA" in line and "cpu fp32" in line


# ---------------------------------------------------------------- tokens, state untouched

def snapshot(st):
    return st.att_x.clone(), st.wkv.clone(), st.ffn_x.clone()


def same(st, snap):
    return all(torch.equal(a, b) for a, b in zip((st.att_x, st.wkv, st.ffn_x), snap))


@pytest.mark.parametrize("bad", [-1, 256, 10**9, 1e9, 1.5, "a", [], [[1, 2], [3]], True])
def test_bad_token_ids_leave_state_untouched(bad, byte_model):
    _, st = byte_model.forward(list(b"warm up"), byte_model.zero_state(1))
    snap = snapshot(st)
    tokens = bad if isinstance(bad, list) else [1, 2, bad]
    with pytest.raises(TokenError) as e:
        byte_model.forward(tokens, st)
    msg = one_line(str(e.value))
    assert "Fix:" in msg
    if type(bad) is int and bad in (-1, 256, 10**9):
        assert "0 <= id < 256" in msg and str(bad) in msg
    assert same(st, snap)


def test_bad_token_ids_compat(byte_ckpt):
    m = rwkvrt.RWKV(str(byte_ckpt), "cpu fp32")
    st = m.zero_state(1)
    m.forward([1, 2], st)
    snap = snapshot(st)
    for bad in ([-1], [256], [1.5], 256):
        with pytest.raises(TokenError):
            m.forward(bad, st)
    assert same(st, snap)


def test_float_token_tensor_rejected(byte_model):
    with pytest.raises(TokenError):
        byte_model.forward(torch.tensor([[1.5, 2.0]]))


def test_state_of_another_model_rejected(byte_model, ckpt_factory):
    other = rwkvrt.load(ckpt_factory(3, 128, 256, 0))
    st = other.zero_state(1)
    snap = snapshot(st)
    msg = api_error(StateError, byte_model.forward, [1, 2], st)
    assert "state does not fit" in msg
    assert same(st, snap)
    msg = api_error(StateError, byte_model.forward, [1, 2], [torch.zeros(3)])
    assert "wrong length" in msg


# ---------------------------------------------------------------- sampling

@pytest.mark.parametrize("kw, name", [({"temperature": -0.1}, "temperature"), ({"temperature": math.nan}, "temperature"),
                                      ({"top_p": 1.5}, "top_p"), ({"top_p": -0.1}, "top_p"),
                                      ({"top_p": math.nan}, "top_p"), ({"top_k": -1}, "top_k"),
                                      ({"min_p": 2.0}, "min_p"), ({"penalty_decay": 1.5}, "penalty_decay"),
                                      ({"presence_penalty": math.inf}, "presence_penalty")])
def test_bad_sampling_parameters(kw, name, byte_model):
    msg = api_error(SamplingError, SamplingParams, **kw)
    assert name in msg


@pytest.mark.parametrize("opt, val, name", [("--temperature", "-1", "temperature"), ("--top-p", "1.5", "top_p"),
                                            ("--top-k", "-3", "top_k"), ("--temperature", "nan", "temperature"),
                                            ("--max-tokens", "-5", "max_tokens"), ("--chunk-len", "0", "chunk_len")])
def test_bad_sampling_cli(opt, val, name, byte_ckpt, capsys):
    line = cli_error(["generate", "-m", byte_ckpt, opt, val, "hello"], capsys)
    assert name in line and "Fix:" in line


def test_bad_sampling_leaves_state_untouched(byte_model):
    st = byte_model.zero_state(1)
    byte_model.forward([1, 2, 3], st)
    snap = snapshot(st)
    bad = SamplingParams()
    object.__setattr__(bad, "top_p", 7.0)  # bypass construction checks: stream() validates again
    with pytest.raises(SamplingError):
        list(Generator(byte_model).stream("abc", state=st, params=bad))
    assert same(st, snap)


def test_token_ban_outside_vocab(byte_model):
    st = byte_model.zero_state(1)
    with pytest.raises(SamplingError, match="token_ban"):
        list(Generator(byte_model).stream("abc", state=st, params=SamplingParams(token_ban=(300,))))
    assert not st.wkv.any()


# ---------------------------------------------------------------- state files and convert in the CLI

def test_cli_state_file_for_another_model(byte_model, ckpt_factory, byte_ckpt, tmp_path, capsys):
    other = rwkvrt.load(ckpt_factory(3, 128, 256, 0))
    _, st = other.forward([1, 2, 3])
    rwkvrt.save_state(st, tmp_path / "o.safetensors", other)
    line = cli_error(["generate", "-m", byte_ckpt, "--state", tmp_path / "o.safetensors", "hi"], capsys)
    assert "another model" in line
    line = cli_error(["generate", "-m", byte_ckpt, "--state", tmp_path / "none.safetensors", "hi"], capsys)
    assert "not found" in line


def test_cli_convert_onto_existing_dir(byte_ckpt, tmp_path, capsys):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    line = cli_error(["convert", byte_ckpt, out], capsys)
    assert "not empty" in line and "--force" in line
    assert (out / "keep.txt").read_text() == "precious" and not (out / "model.safetensors").exists()
    # a file as the output
    line = cli_error(["convert", byte_ckpt, out / "keep.txt"], capsys)
    assert "not a directory" in line


def test_cli_convert_never_overwrites_input(byte_ckpt, tmp_path, capsys):
    d = tmp_path / "m"
    assert cli.main(["convert", str(byte_ckpt), str(d)]) == 0
    capsys.readouterr()
    line = cli_error(["convert", d, d, "--force"], capsys)
    assert "overwrite its input" in line
    assert rwkvrt.load(d).config.n_layer == 2


def test_cli_prompt_file_missing(byte_ckpt, tmp_path, capsys):
    line = cli_error(["generate", "-m", byte_ckpt, "--prompt-file", tmp_path / "nope.txt"], capsys)
    assert "nope.txt" in line and "Fix:" in line


def test_cli_unknown_tokenizer(ckpt_factory, capsys):
    p = ckpt_factory(1, 64, 300, 0)  # vocab 300 has no known tokenizer
    line = cli_error(["generate", "-m", p, "hello"], capsys)
    assert "tokenizer" in line and "convert --tokenizer" in line


def test_bad_id_late_in_long_prompt_leaves_state_untouched(byte_model):
    st = byte_model.zero_state(1)
    byte_model.forward([1, 2, 3], st)
    snap = snapshot(st)
    prompt = [65] * 10 + [256]
    with pytest.raises(TokenError, match="outside the vocabulary"):
        list(Generator(byte_model, chunk_len=4).stream(prompt, state=st, max_tokens=3))
    assert same(st, snap)


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_bad_chunk_len(byte_model, bad):
    with pytest.raises(SamplingError, match="chunk_len"):
        Generator(byte_model, chunk_len=bad)


def test_cli_save_state_bad_path(byte_ckpt, tmp_path, capsys):
    line = cli_error(["generate", "-m", byte_ckpt, "--save-state", tmp_path / "no" / "dir" / "s", "hi"], capsys)
    assert "does not exist" in line
    line = cli_error(["generate", "-m", byte_ckpt, "--save-state", tmp_path, "hi"], capsys)
    assert "directory" in line


def test_chat_bad_save_keeps_going(byte_ckpt, tmp_path, capsys, monkeypatch):
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", io.StringIO(f"/save {tmp_path}/no/dir/s\nhi\n"))
    rc = cli.main(["chat", "-m", str(byte_ckpt), "-n", "3"])
    out, err = capsys.readouterr()
    assert rc == 0 and "cannot save" in err and out.startswith("Assistant:")


def test_save_state_missing_dir_is_state_error(byte_model, tmp_path):
    with pytest.raises(StateError):
        rwkvrt.save_state(byte_model.zero_state(1), tmp_path / "no" / "dir" / "s.safetensors")


@pytest.mark.parametrize("argv, expected", [(["generate", "-n", "abc", "x"], "invalid int value"),
                                            (["gen"], "invalid choice"), (["info"], "required"),
                                            (["convert", "a.pth", "out", "--dtype", "fp64"], "invalid choice")])
def test_usage_errors_are_one_line(argv, expected, capsys):
    line = cli_error(argv, capsys)
    assert expected in line and "--help" in line


def test_import_does_not_pull_triton():
    """`import rwkvrt` (and the fast model, runner and decode-op references) must not import triton."""
    import subprocess
    import sys

    code = ("import sys, rwkvrt, rwkvrt.models.rwkv7_fast, rwkvrt.engine.runner, rwkvrt.ops.decode; "
            "print('triton' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
