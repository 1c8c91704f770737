"""Build a JSONL.gz text corpus from the Python packages installed in this environment (their
`.py` sources, and their docstrings as prose; `.md` / `.rst` / `.txt` files), for pre-training
runs that need more text than the standard library (the `h200` profile on one GPU):

    python bench/pycorpus.py --out .bench-data/corpus/pycorpus.jsonl.gz --max-mb 40
    k2 run --profile h200 --source .bench-data/corpus/pycorpus.jsonl.gz ...

Exact duplicates are dropped, files are ordered by content hash (a shuffle that is stable across
machines), and writing stops once the compressed file reaches --max-mb (it fits the device's
carry limit). Prints one JSON line: files, documents, text MB, compressed MB.
"""
from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import json
import os
import site
import sys
import sysconfig
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from k2core.sources import _docstrings  # noqa: E402  (the stdlib reader's own extraction)

SUFFIXES = {".py": "code", ".md": "prose", ".rst": "prose", ".txt": "prose"}


def roots() -> list[Path]:
    paths = [sysconfig.get_paths()["stdlib"], *site.getsitepackages()]
    return [Path(p) for p in dict.fromkeys(paths) if Path(p).is_dir()]


def files(min_bytes: int, max_bytes: int) -> list[tuple[str, Path, str]]:
    out = []
    for root in roots():
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for fn in filenames:
                kind = SUFFIXES.get(Path(fn).suffix)
                p = Path(dirpath) / fn
                if kind and min_bytes <= p.stat().st_size <= max_bytes:
                    out.append((kind, p, str(p.relative_to(root))))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-mb", type=float, default=40.0, help="stop once the .gz file reaches this size")
    ap.add_argument("--min-bytes", type=int, default=400)
    ap.add_argument("--max-bytes", type=int, default=200_000)
    args = ap.parse_args()
    found = files(args.min_bytes, args.max_bytes)
    seen: set[str] = set()
    items = []
    for kind, p, rel in found:
        data = p.read_bytes()
        h = hashlib.sha1(data).hexdigest()
        if h not in seen:
            seen.add(h)
            items.append((h, kind, p, rel))
    items.sort()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    n_docs = n_files = text_bytes = 0
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9) as gz:
        for _, kind, p, rel in items:
            text = p.read_bytes().decode("utf-8", "replace")
            docs = [{"text": text, "path": rel}]
            if kind == "code":
                try:
                    doc = "\n\n".join(_docstrings(ast.parse(text)))
                except (SyntaxError, ValueError, RecursionError):
                    doc = ""
                if len(doc) >= 200:
                    docs.append({"text": doc, "path": rel + "#docstrings"})
            for d in docs:
                line = (json.dumps(d, ensure_ascii=False) + "\n").encode()
                gz.write(line)
                text_bytes += len(d["text"].encode())
                n_docs += 1
            n_files += 1
            if raw.tell() >= args.max_mb * 1e6:
                break
    os.replace(tmp, out)
    print(json.dumps({"files": n_files, "of_files": len(items), "docs": n_docs,
                      "text_mb": round(text_bytes / 1e6, 1), "gz_mb": round(out.stat().st_size / 1e6, 1)}))


if __name__ == "__main__":
    main()
