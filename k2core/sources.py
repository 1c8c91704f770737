"""Raw document sources for `ingest`: local files, directories, globs, S3 objects, and the
Python standard library (real code and English docstrings, present offline on any machine).

Every reader streams: JSONL line by line, Parquet by record batch, so a source larger than
memory works. Readers yield ``(locator, record, nbytes)`` where record is the raw line (bytes)
for JSONL and a dict for Parquet rows and stdlib documents.
"""
from __future__ import annotations

import ast
import functools
import glob as globlib
import gzip
import hashlib
import io
import os
import re
import sys
import sysconfig
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from k2core.errors import K2Error
from k2core.store import s3_client

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".jsonl.gz": "jsonl", ".ndjson.gz": "jsonl",
           ".json.gz": "jsonl", ".parquet": "parquet"}


class SourceError(K2Error):
    """The source cannot be read at all (missing, empty, unsupported)."""


@dataclass(frozen=True)
class SourceFile:
    uri: str          # path, s3://bucket/key, or stdlib:<relative path>
    fmt: str          # jsonl | parquet | python
    gz: bool
    size: int
    stamp: str        # mtime_ns or ETag: changes when the content does


def _fmt(name: str) -> tuple[str, bool] | None:
    low = name.lower()
    for ext, fmt in sorted(FORMATS.items(), key=lambda kv: -len(kv[0])):
        if low.endswith(ext):
            return fmt, low.endswith(".gz")
    return None


def _split_s3(uri: str) -> tuple[str, str]:
    m = re.match(r"^s3://([^/]+)/?(.*)$", uri)
    if not m:
        raise SourceError(f"invalid S3 source {uri!r}: expected s3://bucket/key-or-prefix")
    return m.group(1), m.group(2)


@functools.cache
def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _stdlib_files() -> list[SourceFile]:
    root = stdlib_root()
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__"))
        for fn in sorted(filenames):
            if fn.endswith(".py"):
                p = Path(dirpath) / fn
                st = p.stat()
                out.append(SourceFile(f"stdlib:{p.relative_to(root).as_posix()}", "python", False,
                                      st.st_size, str(st.st_mtime_ns)))
    return sorted(out, key=lambda f: f.uri)


def list_source(uri: str, endpoint_url: str | None = None, region: str | None = None) -> list[SourceFile]:
    """The files a source URI names, sorted; a missing or empty source is a clear error."""
    if uri in ("stdlib", "builtin:stdlib"):
        return _stdlib_files()
    if uri.startswith("s3://"):
        bucket, key = _split_s3(uri)
        client = s3_client(endpoint_url, region)
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            objs = []
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
                objs.extend(page.get("Contents", []))
        except (ClientError, BotoCoreError) as e:
            raise SourceError(f"source {uri}: cannot list objects ({e})") from None
        exact = [o for o in objs if o["Key"] == key]
        objs = exact or [o for o in objs if not key or key.endswith("/") or o["Key"].startswith(key.rstrip("/") + "/")]
        files = []
        for o in objs:
            f = _fmt(o["Key"])
            if f:
                files.append(SourceFile(f"s3://{bucket}/{o['Key']}", f[0], f[1], o["Size"], o["ETag"].strip('"')))
        if exact and not files:
            raise SourceError(f"source {uri}: unsupported format; use one of {', '.join(FORMATS)}")
        if not files:
            raise SourceError(f"source {uri}: no objects ending in {', '.join(FORMATS)}")
        return sorted(files, key=lambda f: f.uri)
    path = Path(uri).expanduser()
    if path.is_file():
        candidates = [path]
        if not _fmt(path.name):
            raise SourceError(f"source {uri}: unsupported format; use one of {', '.join(FORMATS)}")
    elif path.is_dir():
        candidates = [p for p in path.rglob("*") if p.is_file() and _fmt(p.name)]
        if not candidates:
            raise SourceError(f"source {uri}: no files ending in {', '.join(FORMATS)} under this directory")
    elif any(c in uri for c in "*?["):
        candidates = [Path(p) for p in globlib.glob(os.path.expanduser(uri), recursive=True)
                      if Path(p).is_file() and _fmt(p)]
        if not candidates:
            raise SourceError(f"source {uri}: the pattern matches no {', '.join(FORMATS)} files")
    else:
        raise SourceError(f"source {uri}: does not exist")
    files = []
    for p in candidates:
        fmt, gz = _fmt(p.name)  # type: ignore[misc]
        st = p.stat()
        files.append(SourceFile(str(p.resolve()), fmt, gz, st.st_size, str(st.st_mtime_ns)))
    return sorted(files, key=lambda f: f.uri)


def fingerprint(uri: str, files: list[SourceFile]) -> dict[str, Any]:
    """Identity of the source's current content: changes when any file is added, removed or edited."""
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.uri}\0{f.size}\0{f.stamp}\n".encode())
    if not uri.startswith("s3://") and uri not in ("stdlib", "builtin:stdlib"):
        uri = str(Path(uri).expanduser().resolve()) if not any(c in uri for c in "*?[") \
            else os.path.abspath(os.path.expanduser(uri))
    fp = {"uri": uri, "files": len(files), "bytes": sum(f.size for f in files), "digest": h.hexdigest()[:20]}
    if uri in ("stdlib", "builtin:stdlib"):
        fp["python"] = sys.version.split()[0]
    return fp


class CountingReader(io.RawIOBase):
    """Counts bytes read from the underlying stream (progress for compressed / remote files)."""

    def __init__(self, raw: BinaryIO):
        self.raw, self.count = raw, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self.raw.read(len(b))
        n = len(data)
        b[:n] = data
        self.count += n
        return n


def _open_binary(sf: SourceFile, client=None) -> tuple[BinaryIO, CountingReader]:
    if sf.uri.startswith("s3://"):
        bucket, key = _split_s3(sf.uri)
        raw = client.get_object(Bucket=bucket, Key=key)["Body"]
    else:
        raw = open(sf.uri, "rb")
    counter = CountingReader(raw)
    buffered = io.BufferedReader(counter, buffer_size=1 << 20)
    return (gzip.GzipFile(fileobj=buffered) if sf.gz else buffered), counter


_DEFS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
_BODIES = ("body", "orelse", "handlers", "finalbody")


def _docstrings(tree: ast.Module) -> list[str]:
    """Module, class and function docstrings in source order (statements only: expressions
    cannot hold docstrings, and skipping them is ~10x faster than ast.walk)."""
    out = []
    doc = ast.get_docstring(tree, clean=True)
    if doc:
        out.append(doc)
    todo = list(reversed(tree.body))
    while todo:
        node = todo.pop()
        if isinstance(node, _DEFS) and (doc := ast.get_docstring(node, clean=True)):
            out.append(doc)
        for attr in _BODIES:
            todo.extend(reversed(getattr(node, attr, None) or []))
    return out


def _stdlib_records(sf: SourceFile, text_field: str, min_doc_chars: int) -> Iterator[tuple[str, Any, int]]:
    rel = sf.uri.split(":", 1)[1]
    data = (stdlib_root() / rel).read_bytes()
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        code = data.decode(encoding)
    except (SyntaxError, LookupError, UnicodeDecodeError):
        code = data  # left as bytes: ingest decodes it and counts the invalid UTF-8
    yield "code", {text_field: code, "kind": "code", "lang": "python", "path": rel}, len(data)
    try:
        tree = ast.parse(code if isinstance(code, str) else code.decode("utf-8", "replace"))
    except (SyntaxError, ValueError):
        return  # deliberately broken test files: their code is still a document
    docs = _docstrings(tree)
    text = "\n\n".join(docs)
    if docs and len(text) >= min_doc_chars:
        yield "docstrings", {text_field: text, "kind": "docstring", "path": rel}, 0


def iter_records(sf: SourceFile, *, text_field: str = "text", min_doc_chars: int = 200,
                 client=None, batch_rows: int = 1024) -> Iterator[tuple[str, Any, int]]:
    """Stream one source file as (locator, record, bytes consumed since the last item)."""
    if sf.fmt == "python":
        yield from _stdlib_records(sf, text_field, min_doc_chars)
        return
    if sf.fmt == "parquet":
        import pyarrow.parquet as pq

        if sf.uri.startswith("s3://"):
            bucket, key = _split_s3(sf.uri)
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()  # Parquet needs seeks
            pf = pq.ParquetFile(io.BytesIO(body))
        else:
            pf = pq.ParquetFile(sf.uri)
        total_rows = max(pf.metadata.num_rows, 1)
        row = 0
        for batch in pf.iter_batches(batch_size=batch_rows):
            rows = batch.to_pylist()
            per = sf.size * len(rows) // total_rows
            for i, rec in enumerate(rows):
                yield f"row {row}", rec, per if i == 0 else 0
                row += 1
        return
    stream, counter = _open_binary(sf, client)
    last = 0
    try:
        for lineno, line in enumerate(stream, start=1):
            yield f"line {lineno}", line, counter.count - last
            last = counter.count
    finally:
        stream.close()
