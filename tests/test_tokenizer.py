"""Tokenizers: World ids identical to the official TRIE_TOKENIZER on mixed text, speed, robust
decoding, streaming, the byte tokenizer, lookup by name, and the pure-Python fallback encoder."""
from __future__ import annotations

import glob
import os
import random
import sys
import time
import unicodedata
from pathlib import Path

import pytest

from rwkvrt.errors import RWKVRTError, TokenError
from rwkvrt.tokenizer import ByteTokenizer, WorldTokenizer, get_tokenizer

rwkv = pytest.importorskip("rwkv")
from rwkv.rwkv_tokenizer import TRIE_TOKENIZER  # noqa: E402

OFFICIAL_VOCAB = Path(rwkv.__file__).parent / "rwkv_vocab_v20230424.txt"


@pytest.fixture(scope="module")
def official():
    return TRIE_TOKENIZER(str(OFFICIAL_VOCAB))


@pytest.fixture(scope="module")
def world():
    return get_tokenizer("rwkv_vocab_v20230424")


def _read_files(pattern_roots, suffixes, limit):
    out, n = [], 0
    for root in pattern_roots:
        for f in sorted(glob.glob(os.path.join(root, "**", "*"), recursive=True)):
            if not f.endswith(suffixes) or not os.path.isfile(f):
                continue
            try:
                s = Path(f).read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            out.append(s)
            n += len(s)
            if n >= limit:
                return "".join(out)
    return "".join(out)


def _python_source(limit=1_000_000):
    import torch

    return _read_files([os.path.dirname(rwkv.__file__), os.path.dirname(torch.__file__)], (".py",), limit)


def _prose(limit=400_000):
    # license texts, READMEs and package descriptions shipped in site-packages
    site = os.path.dirname(os.path.dirname(rwkv.__file__))
    text = _read_files([site], ("LICENSE", "LICENSE.txt", "METADATA", ".md", ".rst"), limit)
    rng = random.Random(1)
    words = "the of and a to in is you that it he was for on are as with his they I at be this have from".split()
    sents = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 20))).capitalize() + rng.choice(".!?,;:")
             for _ in range(3000)]
    return text + " ".join(sents)


def _unicode_mix(rng: random.Random, n=200_000):
    cjk = [chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(n // 4)]
    kana = [chr(rng.randint(0x3040, 0x30FF)) for _ in range(n // 10)]
    hangul = [chr(rng.randint(0xAC00, 0xD7A3)) for _ in range(n // 10)]
    emoji = [chr(rng.randint(0x1F300, 0x1FAFF)) for _ in range(n // 10)]
    emoji += ["👨‍👩‍👧‍👦", "🏳️‍🌈", "👍🏽", "🇯🇵", "❤️"] * (n // 200)
    combining = [rng.choice("aeiouAEIOU") + "".join(chr(rng.randint(0x300, 0x36F)) for _ in range(rng.randint(1, 4)))
                 for _ in range(n // 20)]
    control = [chr(rng.randint(0, 31)) for _ in range(n // 20)] + ["\x7f", "\x85", "\u2028", "\u200b", "\ufeff"] * 50
    spaces = [" " * rng.randint(1, 40), "\t" * rng.randint(1, 8), "\n" * rng.randint(1, 6), "\r\n", " \n \t "] * (n // 100)
    prose_cjk = ["中华人民共和国", "日本語のテキスト", "한국어 문장입니다", "你好，世界！", "。", "、", "「引用」"] * (n // 100)
    pieces = cjk + kana + hangul + emoji + combining + control + spaces + prose_cjk
    rng.shuffle(pieces)
    out, i = [], 0
    while i < len(pieces):  # runs of same-script text separated by ascii
        j = i + rng.randint(1, 30)
        out.append("".join(pieces[i:j]))
        out.append(rng.choice(["", " ", "abc", "The ", "123", ", "]))
        i = j
    return "".join(out)


def _random_codepoints(rng: random.Random, n=150_000):
    chars = []
    for _ in range(n):
        r = rng.random()
        cp = rng.randint(0, 0x7F) if r < 0.3 else rng.randint(0x80, 0xFFFF) if r < 0.8 else rng.randint(0x10000, 0x10FFFF)
        if 0xD800 <= cp <= 0xDFFF:  # lone surrogates have no UTF-8 form
            cp = 0xFFFD
        chars.append(chr(cp))
    return "".join(chars)


def _vocab_concat(official, rng: random.Random, n=150_000) -> tuple[str, bytes]:
    toks = [t for t in official.idx2token.values()]
    text_toks = []
    for t in toks:
        try:
            text_toks.append(t.decode("utf-8"))
        except UnicodeDecodeError:
            pass
    text = "".join(rng.choice(text_toks) for _ in range(n))
    raw = b"".join(rng.choice(toks) for _ in range(n // 4))  # need not be valid UTF-8
    return text, raw


@pytest.fixture(scope="module")
def corpus(official):
    rng = random.Random(1234)
    vt, vb = _vocab_concat(official, rng)
    return {"python": _python_source(), "prose": _prose(), "unicode": _unicode_mix(rng),
            "codepoints": _random_codepoints(rng), "vocab": vt, "vocab_bytes": vb}


def test_corpus_is_large_and_mixed(corpus):
    total = sum(len(s.encode("utf-8")) if isinstance(s, str) else len(s) for s in corpus.values())
    assert total > 3_000_000
    u = corpus["unicode"]
    cats = {unicodedata.category(c) for c in u}
    assert {"Lo", "So", "Mn", "Cc", "Zs"} <= cats


@pytest.mark.parametrize("part", ["python", "prose", "unicode", "codepoints", "vocab"])
def test_world_ids_match_official(world, official, corpus, part):
    text = corpus[part]
    got = world.encode(text)
    assert got == official.encode(text)
    assert world.decode(got) == text


def test_world_encode_bytes_matches_official(world, official, corpus):
    raw = corpus["vocab_bytes"]
    ids = world.encode_bytes(raw)
    assert ids == official.encodeBytes(raw)
    assert world.decode_bytes(ids) == raw
    # valid UTF-8 through encode_bytes equals encode
    s = corpus["prose"][:20000]
    assert world.encode_bytes(s.encode("utf-8")) == world.encode(s)


def test_small_edge_strings(world, official):
    cases = ["", " ", "\n", "\x00", "\x00\x01\x02", "a" * 1000, " " * 1000, "\n\n\n", "\r\n\r\n", "é", "e\u0301",
             "😀", "👨‍👩‍👧", "中", "\ufeffhello", "\U0010ffff", "\u0085\u2028", "\t\t x", "User: hi\n\nAssistant:"]
    for s in cases:
        assert world.encode(s) == official.encode(s), repr(s)
        assert world.decode(world.encode(s)) == s


def test_encode_rejects_bad_input(world):
    with pytest.raises(TokenError):
        world.encode("abc\ud800def")
    with pytest.raises(TokenError):
        world.encode(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(TokenError):
        world.encode_bytes("str")  # type: ignore[arg-type]


def test_encode_speed_vs_official(world, official, corpus):
    text = corpus["python"][:1_000_000]
    world.encode(text[:1000])  # warm
    t0 = time.perf_counter()
    a = official.encode(text)
    t1 = time.perf_counter()
    b = world.encode(text)
    t2 = time.perf_counter()
    # best of a few for ours (cheap), to ride out scheduler noise on a shared machine
    ours = t2 - t1
    for _ in range(2):
        t3 = time.perf_counter()
        world.encode(text)
        ours = min(ours, time.perf_counter() - t3)
    ratio = (t1 - t0) / ours
    print(f"\nencode 1 MB python source: official {t1 - t0:.3f} s, rwkvrt ({world.backend}) {ours:.4f} s, "
          f"speedup {ratio:.1f}x", file=sys.stderr)
    assert a == b
    if world.backend == "rust":
        assert ratio >= 5.0


def test_python_fallback_matches_official(official, corpus):
    py = WorldTokenizer(backend="python")
    assert py.backend == "python"
    for part in ("python", "unicode", "codepoints", "vocab"):
        text = corpus[part][:60_000]
        assert py.encode(text) == official.encode(text), part
    raw = corpus["vocab_bytes"][:60_000]
    assert py.encode_bytes(raw) == official.encodeBytes(raw)
    for s in ("", "\x00", "😀 e\u0301", " " * 77):
        assert py.encode(s) == official.encode(s)


def test_backend_argument():
    with pytest.raises(RWKVRTError):
        WorldTokenizer(backend="java")
    try:
        import pyrwkv_tokenizer  # noqa: F401
    except ImportError:
        with pytest.raises(RWKVRTError):
            WorldTokenizer(backend="rust")


def test_falls_back_without_rust(monkeypatch, official):
    monkeypatch.setitem(sys.modules, "pyrwkv_tokenizer", None)  # import now raises ImportError
    tok = WorldTokenizer()
    assert tok.backend == "python"
    s = "fallback: héllo 世界 😀\n\tdef f(x): return x"
    assert tok.encode(s) == official.encode(s)
    with pytest.raises(RWKVRTError):
        WorldTokenizer(backend="rust")


def test_decode_never_raises(world):
    assert world.decode([0]) == ""
    assert world.decode([]) == ""
    assert world.decode([-1, 65536, 10 ** 9, 0]) == ""
    hello = world.encode("hello")
    assert world.decode([0, *hello, 99999, -5, 0]) == "hello"
    assert world.decode(hello[0]) == world.decode(hello[:1])  # a single int
    assert world.decode(tuple(hello)) == "hello"
    assert world.decode(iter(hello)) == "hello"
    assert world.decode(["x", None, 1.5, *hello]) == "hello"  # type: ignore[list-item]
    import numpy as np
    import torch

    assert world.decode(torch.tensor(hello)) == "hello"
    assert world.decode(np.array(hello)) == "hello"
    assert world.token_bytes(-1) == b"" and world.token_bytes(0) == b"" and world.token_bytes(1 << 40) == b""


def test_decode_partial_utf8(world):
    ids = world.encode_bytes("😀".encode("utf-8")[:2]) + world.encode_bytes("😀".encode("utf-8")[2:])
    assert len(ids) >= 2
    assert world.decode(ids) == "😀"
    assert "\ufffd" in world.decode(ids[:1])  # half a char becomes U+FFFD, no exception
    assert world.decode(world.encode_bytes(b"\xff\xfe a")) == "\ufffd\ufffd a"


def test_incremental_decoder_streams_exactly(world, corpus):
    rng = random.Random(5)
    for part in ("unicode", "codepoints", "vocab", "prose"):
        text = corpus[part][:5000]
        ids = world.encode(text)
        # also force multi-byte chars to be split over several ids
        raw = text.encode("utf-8")
        split_ids = []
        i = 0
        while i < len(raw):
            j = i + rng.randint(1, 3)
            split_ids += world.encode_bytes(raw[i:j])
            i = j
        for seq in (ids, split_ids):
            dec = world.incremental_decoder()
            out, pos = [], 0
            for t in seq:
                piece = dec.push(t)
                # only complete chars, in order: each piece continues the text exactly
                assert text.startswith(piece, pos)
                pos += len(piece)
                out.append(piece)
            out.append(dec.flush())
            assert "".join(out) == world.decode(seq) == text


def test_incremental_decoder_bad_ids_and_reuse(world):
    dec = world.incremental_decoder()
    half = world.encode_bytes(b"\xe4\xb8")  # first two bytes of a 3-byte char
    out = dec.push(0) + dec.push(-3) + dec.push(10 ** 7) + "".join(dec.push(t) for t in half)
    assert out == ""
    assert dec.flush() == "\ufffd"  # held bytes that never completed
    assert dec.push(world.encode("ok")[0]) != "\ufffd"  # usable after flush


def test_byte_tokenizer():
    bt = get_tokenizer("bytes")
    assert isinstance(bt, ByteTokenizer) and bt.vocab_size == 256 and bt.eot_id is None
    s = "héllo 世界 😀\x00"
    assert bt.encode(s) == list(s.encode("utf-8"))
    assert bt.decode(bt.encode(s)) == s
    assert bt.decode([0]) == "\x00"  # 0 is a real byte here
    assert bt.decode([256, -1, 104, 105]) == "hi"
    assert bt.decode([0xE4, 0xB8]) == "\ufffd"  # truncated char
    dec = bt.incremental_decoder()
    assert "".join(dec.push(i) for i in "😀".encode("utf-8")) + dec.flush() == "😀"
    with pytest.raises(TokenError):
        bt.encode("\udc80")


def test_get_tokenizer_names(world):
    assert world.name == "rwkv_vocab_v20230424" and world.vocab_size == 65536 and world.eot_id == 0
    assert get_tokenizer("world") is world
    assert get_tokenizer("rwkv_vocab_v20230424") is world
    assert get_tokenizer("byte") is get_tokenizer("bytes")
    assert get_tokenizer(str(OFFICIAL_VOCAB)).encode("hello world") == world.encode("hello world")
    for bad in ("nope", "", "gpt2"):
        with pytest.raises(RWKVRTError) as e:
            get_tokenizer(bad)
        assert "rwkv_vocab_v20230424" in str(e.value)
