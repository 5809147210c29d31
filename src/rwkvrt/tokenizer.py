"""Tokenizers: the RWKV World vocabulary (``rwkv_vocab_v20230424``) and raw bytes.

Both implement :class:`Tokenizer`: ``name``, ``vocab_size``, ``eot_id``,
``encode(text) -> list[int]``, ``decode(ids) -> str``, ``decode_bytes(ids) -> bytes``
and ``incremental_decoder()`` for streaming.

World encoding is greedy longest match over UTF-8 bytes, id for id the same as the
official ``rwkv.rwkv_tokenizer.TRIE_TOKENIZER``. The work is done by the Rust package
``pyrwkv_tokenizer`` (about 20x faster than the official trie walk), but only after
checking, token by token at load time, that it parsed the vocabulary file exactly as
the official loader does; otherwise, or when it is not installed, a pure-Python
encoder (one trie-shaped regex, about 2x the official speed) gives the same ids.

Decoding never raises on bad ids or bad bytes: ids outside ``[0, vocab_size)`` and
ids with no entry (World id 0, the end-of-text id) contribute nothing, and bytes that
are not valid UTF-8 become U+FFFD (``errors="replace"``). Note the official decoder
instead returns the single string ``"\\ufffd"`` when any byte is invalid.
"""
from __future__ import annotations

import ast
import codecs
import functools
import logging
import operator
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import BackendError, RWKVRTError, TokenError

__all__ = ["Tokenizer", "WorldTokenizer", "ByteTokenizer", "IncrementalDecoder", "get_tokenizer",
           "WORLD_VOCAB_NAME"]

log = logging.getLogger(__name__)

WORLD_VOCAB_NAME = "rwkv_vocab_v20230424"
_DEFAULT_VOCAB = Path(__file__).resolve().parent / "data" / f"{WORLD_VOCAB_NAME}.txt"
# A bytes literal the Rust loader parses exactly: nothing but \xNN escapes.
_HEX_BYTES_LITERAL = re.compile(r"b'(?:\\x[0-9a-fA-F]{2})+'")


def _utf8(text: str) -> bytes:
    if not isinstance(text, str):
        raise TokenError("text to encode is not a str", expected="str", got=type(text).__name__,
                         fix="decode bytes to str first (WorldTokenizer.encode_bytes takes raw bytes)")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise _surrogate_error(e) from e


def _surrogate_error(e: UnicodeEncodeError) -> TokenError:
    return TokenError("text has no UTF-8 form", expected="a str without lone surrogates",
                      got=f"{e.object[e.start:e.end]!r} at index {e.start}",
                      fix="clean the text, e.g. text.encode('utf-8', 'replace').decode('utf-8')")


class IncrementalDecoder:
    """Streaming detokenizer: turns ids, one at a time, into text that is complete.

    A UTF-8 sequence split across tokens is held back until its last byte arrives;
    invalid bytes become U+FFFD. ``"".join(push(i) for i in ids) + flush()`` equals
    ``decode(ids)`` for any ids. Unknown ids are skipped, as in ``decode``.
    """

    def __init__(self, token_bytes: Callable[[int], bytes]):
        self._token_bytes = token_bytes
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """Add one token; return the text that is now complete (possibly "")."""
        return self._dec.decode(self._token_bytes(token_id))

    def flush(self) -> str:
        """End the stream: return held-back bytes (as U+FFFD) and start afresh."""
        out = self._dec.decode(b"", final=True)
        self._dec.reset()
        return out


class Tokenizer:
    """The common interface; subclasses fill ``_table`` (bytes of each id, b"" where none)
    and implement ``encode``."""

    name: str
    vocab_size: int
    eot_id: int | None
    _table: list[bytes]

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def token_bytes(self, token_id: int) -> bytes:
        """Bytes of one id; b"" for an id outside the vocabulary or with no entry."""
        try:
            i = operator.index(token_id)
        except TypeError:
            return b""
        return self._table[i] if 0 <= i < len(self._table) else b""

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Concatenated bytes of ``ids`` (list, tuple, numpy array or torch tensor of ints,
        or one int). Never raises on the values: out-of-range, entry-less and non-integer
        items are skipped."""
        table = self._table
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if isinstance(ids, int):
            ids = [ids]
        elif not isinstance(ids, list):
            ids = list(ids)
        try:
            # One range check in C, then a join: the common case stays fast.
            if not ids or (min(ids) >= 0 and max(ids) < len(table)):
                return b"".join([table[i] for i in ids])
        except TypeError:
            pass
        return b"".join([self.token_bytes(i) for i in ids])

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; never raises on the values: unknown ids are skipped and bytes
        that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def incremental_decoder(self) -> IncrementalDecoder:
        return IncrementalDecoder(self.token_bytes)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size})"


class ByteTokenizer(Tokenizer):
    """Byte-level vocabulary of 256: token id = byte value (0 is NUL, a real byte).
    No end-of-text id."""

    def __init__(self) -> None:
        self.name = "bytes"
        self.vocab_size = 256
        self.eot_id = None
        self._table = [bytes([i]) for i in range(256)]

    def encode(self, text: str) -> list[int]:
        return list(_utf8(text))


def _read_vocab(path: Path) -> tuple[dict[int, bytes], set[int]]:
    """Parse an RWKV vocab file as the official loader does: each line is
    ``<id> <python str or bytes literal> <byte length>``. Returns ({id: bytes}, the ids
    whose literal the Rust loader is known to read correctly)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except (OSError, UnicodeDecodeError) as e:
        raise RWKVRTError("cannot read the vocab file", expected="a readable UTF-8 text file",
                          got=f"{path}: {e}", fix="check the path") from e
    id2bytes: dict[int, bytes] = {}
    rust_safe: set[int] = set()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            a, b = line.index(" "), line.rindex(" ")
            idx, lit, length = int(line[:a]), line[a + 1:b].strip(), int(line[b + 1:])
            q = lit[:1]
            # Most literals are plain quoted text; only escapes need the Python parser.
            if q in ("'", '"') and len(lit) >= 2 and lit[-1] == q and "\\" not in lit and q not in lit[1:-1]:
                val: object = lit[1:-1]
            else:
                val = ast.literal_eval(lit)
            tok = val.encode("utf-8") if isinstance(val, str) else val
            if not isinstance(tok, bytes) or len(tok) != length or not tok or idx < 0:
                raise ValueError("literal is not non-empty bytes of the stated length")
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as e:
            raise RWKVRTError(f"vocab file {path.name} line {n} is malformed",
                              expected="'<id> <python str or bytes literal> <byte length>'",
                              got=f"{line[:80]!r} ({e})", fix="use an RWKV World vocab file") from e
        id2bytes[idx] = tok
        if isinstance(val, str) or _HEX_BYTES_LITERAL.fullmatch(lit):
            rust_safe.add(idx)
    if not id2bytes:
        raise RWKVRTError("the vocab file is empty", expected="RWKV vocab lines", got=str(path),
                          fix="use an RWKV World vocab file")
    return id2bytes, rust_safe


def _regex_for(token2id: dict[bytes, int]) -> re.Pattern[bytes]:
    """One regex whose leftmost match at each position is the longest token there.

    It is the vocabulary trie written as nested groups: a node that ends a token makes
    its continuation an optional greedy group, so the engine tries longer tokens first
    and backs off to the deepest token node on the path."""
    trie: dict = {}
    for tok in token2id:
        node = trie
        for byte in tok:
            node = node.setdefault(byte, {})
        node[-1] = None

    def pattern(node: dict) -> bytes:
        alts = [re.escape(bytes([b])) + pattern(child) for b, child in sorted(node.items()) if b >= 0]
        body = b"" if not alts else alts[0] if len(alts) == 1 else b"(?:" + b"|".join(alts) + b")"
        return b"(?:" + body + b")?" if (-1 in node and body) else body

    return re.compile(pattern(trie), re.DOTALL)


class WorldTokenizer(Tokenizer):
    """RWKV World tokenizer: greedy longest match of UTF-8 bytes; id 0 = end of text.

    ``vocab_path`` defaults to the bundled ``rwkv_vocab_v20230424.txt``. ``backend``:
    "auto" (Rust if installed and verified, else Python), "rust" (raise BackendError if
    it cannot be used) or "python". ``self.backend`` says which one runs.
    """

    def __init__(self, vocab_path: str | Path | None = None, *, backend: str = "auto"):
        if backend not in ("auto", "rust", "python"):
            raise BackendError("unknown tokenizer backend", expected='"auto", "rust" or "python"',
                               got=repr(backend), fix='use backend="auto"')
        path = Path(vocab_path).expanduser() if vocab_path is not None else _DEFAULT_VOCAB
        id2bytes, rust_safe = _read_vocab(path)
        self.vocab_path = path
        self.name = WORLD_VOCAB_NAME if path.resolve() == _DEFAULT_VOCAB else path.stem
        self.eot_id = 0
        # Models pad their vocabulary to a multiple of 64 (World: ids 0..65529 -> 65536 rows);
        # vocab_size is that model-side size, and the padding ids decode to nothing.
        self.vocab_size = -(-(max(id2bytes) + 1) // 64) * 64
        self._table = [b""] * self.vocab_size
        for i, tok in id2bytes.items():
            self._table[i] = tok
        # As in the official loader, a byte string listed twice keeps its last id.
        self._token2id = {tok: i for i, tok in id2bytes.items()}
        self._regex: re.Pattern[bytes] | None = None
        self._rust = None
        self.backend = "python"
        if backend != "python":
            self._rust, why = _load_rust(path, self._token2id, rust_safe)
            if self._rust is not None:
                self.backend = "rust"
            elif backend == "rust":
                raise BackendError("the Rust tokenizer cannot be used for this vocab", expected=
                                   "pyrwkv_tokenizer installed and agreeing with the official loader",
                                   got=why, fix='pip install pyrwkv-tokenizer, or use backend="python"')
            else:
                log.info("World tokenizer: using the pure-Python encoder (%s)", why)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, identical to the official TRIE_TOKENIZER.encode.
        Raises TokenError for a non-str or a str with lone surrogates (no UTF-8 form)."""
        if self._rust is not None and isinstance(text, str):
            try:
                return self._rust.encode(text)
            except UnicodeEncodeError as e:
                raise _surrogate_error(e) from e
        return self._encode_python(_utf8(text))

    def encode_bytes(self, data: bytes) -> list[int]:
        """Token ids of raw bytes (which need not be valid UTF-8), identical to the
        official TRIE_TOKENIZER.encodeBytes."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TokenError("encode_bytes takes bytes", expected="bytes", got=type(data).__name__,
                             fix="use encode() for str")
        data = bytes(data)
        if self._rust is not None:
            try:
                return self._rust.encode(data.decode("utf-8"))
            except UnicodeDecodeError:
                pass
        return self._encode_python(data)

    def _encode_python(self, data: bytes) -> list[int]:
        if self._regex is None:
            log.info("World tokenizer: compiling the longest-match regex (about 2 s, once)")
            self._regex = _regex_for(self._token2id)
        pieces = self._regex.findall(data)
        # findall silently skips a byte no token starts with; the official loader would crash.
        if sum(map(len, pieces)) != len(data):
            raise TokenError("the vocabulary cannot encode this text",
                             expected="every byte value to be a token", got=f"vocab {self.vocab_path}",
                             fix="use a vocab file that lists all 256 single bytes")
        get = self._token2id.__getitem__
        return list(map(get, pieces))


def _load_rust(path: Path, token2id: dict[bytes, int], rust_safe: set[int]):
    """Load ``pyrwkv_tokenizer`` on ``path`` and prove it sees our vocabulary: every
    token that is valid UTF-8 must encode to exactly its own id, and every other token
    must be a plain ``b'\\xNN..'`` literal, which its loader reads exactly. Identical
    token sets make greedy longest match identical. Returns (tokenizer or None, why)."""
    try:
        import pyrwkv_tokenizer
    except ImportError as e:
        return None, f"pyrwkv_tokenizer is not installed ({e})"
    try:
        rust = pyrwkv_tokenizer.WorldTokenizer(str(path))
        enc = rust.encode
        for tok, i in token2id.items():
            if i not in rust_safe:
                return None, f"token {i} is a bytes literal it may misread"
            try:
                text = tok.decode("utf-8")
            except UnicodeDecodeError:
                continue
            if enc(text) != [i]:
                return None, f"token {i} ({tok!r}) encodes to {enc(text)}"
    # pyo3 raises PanicException, a BaseException, when the Rust loader panics.
    except BaseException as e:  # noqa: BLE001
        if not isinstance(e, Exception) and type(e).__name__ != "PanicException":
            raise
        return None, f"pyrwkv_tokenizer failed: {type(e).__name__}: {e}"
    return rust, ""


@functools.lru_cache(maxsize=None)
def _world(path: str) -> WorldTokenizer:
    return WorldTokenizer(path)


@functools.lru_cache(maxsize=None)
def _bytes() -> ByteTokenizer:
    return ByteTokenizer()


def get_tokenizer(name: str) -> Tokenizer:
    """The tokenizer called ``name``, cached per process.

    "rwkv_vocab_v20230424" or "world": the bundled World vocabulary; a path to a vocab
    .txt file in the same format: that vocabulary; "bytes" or "byte": byte level."""
    key = str(name).strip()
    if key.lower() in ("bytes", "byte"):
        return _bytes()
    if key.lower() in (WORLD_VOCAB_NAME, "world", f"{WORLD_VOCAB_NAME}.txt"):
        return _world(str(_DEFAULT_VOCAB))
    path = Path(key).expanduser()
    if key and path.is_file():
        return _world(str(path.resolve()))
    raise TokenError("unknown tokenizer",
                      expected=f'"{WORLD_VOCAB_NAME}" (or "world"), "bytes", or a path to an RWKV vocab .txt file',
                      got=repr(name), fix=f'use "{WORLD_VOCAB_NAME}" for RWKV World models, "bytes" for byte-level ones')
