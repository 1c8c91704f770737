"""`ingest`: raw documents -> normalised, content-addressed Parquet shards, plus rejects.

Normalisation: invalid UTF-8 and lone surrogates become U+FFFD (counted), CR/CRLF -> LF,
C0/C1 control characters other than tab and newline are removed (counted), Unicode NFC (counted).
A record's id is sha256(normalised text)[:32]. Bad records — invalid JSON, not an object,
missing or non-string text, empty text, an exact repeat of an earlier text — are written to
rejects/ with the reason and the raw record: never silently dropped.
"""
from __future__ import annotations

import hashlib
import json
import re
import unicodedata
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from k2core.config import PipelineConfig
from k2core.sources import SourceError, fingerprint as source_fingerprint, iter_records, list_source
from k2core.store import s3_client
from k2core.stage import StageContext
from schemas.documents import DOCUMENT_SCHEMA, REJECT_SCHEMA

# C0 except \t and \n, DEL, C1: removed. (\r is handled first, as a newline.) A regex search is
# ~15x faster than str.translate with a deletion table on clean text, the common case.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SURROGATE = re.compile("[\ud800-\udfff]")


# the ASCII control characters _CONTROL removes, as bytes: ASCII text (most of it) is checked with
# one bytes.translate instead of a regex scan, and has no surrogates and nothing to NFC-normalise
_CONTROL_ASCII = bytes(c for c in range(128) if _CONTROL.match(chr(c)))


def normalize(text: str, flags: Counter) -> str:
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if text.isascii():
        raw = text.encode("ascii")
        if len(raw.translate(None, _CONTROL_ASCII)) != len(raw):
            flags["control_chars_removed"] += 1
            text = _CONTROL.sub("", text)
        return text
    if _CONTROL.search(text):
        flags["control_chars_removed"] += 1
        text = _CONTROL.sub("", text)
    if _SURROGATE.search(text):  # JSON "\ud800" escapes decode to lone surrogates
        flags["invalid_unicode"] += 1
        text = _SURROGATE.sub("\ufffd", text)
    if not unicodedata.is_normalized("NFC", text):
        flags["nfc_changed"] += 1
        text = unicodedata.normalize("NFC", text)
    return text


def doc_id(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class ShardWriter:
    """Streams rows into numbered Parquet shards of at most `max_rows` rows / `max_bytes` bytes."""

    def __init__(self, directory: Path, schema: pa.Schema, max_rows: int, max_bytes: int,
                 row_group: int = 1000):
        self.dir, self.schema = directory, schema
        self.max_rows, self.max_bytes, self.row_group = max_rows, max_bytes, row_group
        self.shards = 0
        self._writer: pq.ParquetWriter | None = None
        self._buf: list[dict[str, Any]] = []
        self._rows = self._bytes = 0

    def add(self, row: dict[str, Any], nbytes: int) -> None:
        if self._writer is not None and (self._rows >= self.max_rows or self._bytes >= self.max_bytes):
            self._close_shard()
        if self._writer is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self.dir / f"part-{self.shards:05d}.parquet", self.schema,
                                            compression="zstd")
            self.shards += 1
        self._buf.append(row)
        self._rows += 1
        self._bytes += nbytes
        if len(self._buf) >= self.row_group:
            self._flush()

    def _flush(self) -> None:
        if self._buf and self._writer is not None:
            self._writer.write_table(pa.Table.from_pylist(self._buf, schema=self.schema))
            self._buf = []

    def _close_shard(self) -> None:
        self._flush()
        if self._writer is not None:
            self._writer.close()
        self._writer, self._rows, self._bytes = None, 0, 0

    def close(self) -> None:
        self._close_shard()


class Ingestor:
    """Turns raw records into documents or rejects; holds the counters."""

    def __init__(self, text_field: str, id_field: str | None):
        self.text_field, self.id_field = text_field, id_field
        self.flags: Counter = Counter()
        self.rejects: Counter = Counter()
        self._seen: dict[int, str] = {}  # 64-bit id prefix -> id: exact repeats become rejects

    def process(self, source: str, locator: str, record: Any) -> tuple[dict | None, dict | None]:
        """-> (document row, None) or (None, reject row)."""
        raw_text: str
        if isinstance(record, (bytes, bytearray)):
            line = bytes(record).rstrip(b"\r\n")
            try:
                raw_text = line.decode("utf-8")
            except UnicodeDecodeError:
                raw_text = line.decode("utf-8", "replace")
                self.flags["invalid_utf8"] += 1
            if not raw_text.strip():
                self.flags["blank_lines"] += 1
                return None, None
            try:
                record = json.loads(raw_text)
            except json.JSONDecodeError as e:
                return None, self.reject(source, locator, "invalid_json", str(e), raw_text)
            if not isinstance(record, dict):
                return None, self.reject(source, locator, "not_an_object",
                                          f"a JSON {type(record).__name__}, expected an object", raw_text)
        else:
            raw_text = ""
        text = record.get(self.text_field)
        if text is None:
            why = "missing" if self.text_field not in record else "null"
            return None, self.reject(source, locator, "missing_text",
                                      f"field {self.text_field!r} is {why}", raw_text or _dump(record))
        if isinstance(text, (bytes, bytearray)):  # stdlib files with a broken coding cookie
            try:
                text = bytes(text).decode("utf-8")
            except UnicodeDecodeError:
                text = bytes(text).decode("utf-8", "replace")
                self.flags["invalid_utf8"] += 1
        if not isinstance(text, str):
            return None, self.reject(source, locator, "non_string_text",
                                      f"field {self.text_field!r} is a {type(text).__name__}",
                                      raw_text or _dump(record))
        text = normalize(text, self.flags)
        if not text.strip():
            return None, self.reject(source, locator, "empty_text", "no text after normalisation",
                                      raw_text or _dump(record))
        did = doc_id(text)
        key = int(did[:16], 16)
        if key in self._seen:
            return None, self.reject(source, locator, "duplicate",
                                      f"same text as document {self._seen[key]}", raw_text or _dump(record))
        self._seen[key] = did
        meta = {k: v for k, v in record.items() if k != self.text_field}
        if self.id_field and self.id_field in record:
            meta["source_id"] = record[self.id_field]
        return {"id": did, "text": text, "source": source, "locator": locator, "n_chars": len(text),
                "meta": _dump(meta)}, None

    def reject(self, source: str, locator: str, reason: str, detail: str, raw: str) -> dict:
        """Count a reject under `reason` and build its row (the raw record kept)."""
        self.rejects[reason] += 1
        return {"source": source, "locator": locator, "reason": reason, "detail": detail, "raw": raw}


def _dump(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, default=str, sort_keys=True)


# ---------------------------------------------------------------------------- the stage
def fingerprint(cfg: PipelineConfig) -> dict[str, Any]:
    files = list_source(cfg.ingest.source, cfg.store.s3_endpoint_url, cfg.store.s3_region)
    return source_fingerprint(cfg.ingest.source, files)


def run(ctx: StageContext) -> dict[str, Any]:
    cfg, store_cfg = ctx.cfg, ctx.pipeline.store
    files = list_source(cfg.source, store_cfg.s3_endpoint_url, store_cfg.s3_region)
    client = s3_client(store_cfg.s3_endpoint_url, store_cfg.s3_region) \
        if any(f.uri.startswith("s3://") for f in files) else None
    docs = ShardWriter(ctx.workdir / "data", DOCUMENT_SCHEMA, cfg.shard_docs, cfg.shard_bytes)
    rejects = ShardWriter(ctx.workdir / "rejects", REJECT_SCHEMA, 100_000, 256 << 20)
    ing = Ingestor(cfg.text_field, cfg.id_field)
    records = written = text_bytes = files_read = 0
    done = False
    with ctx.progress(sum(f.size for f in files), "ingest", "B", unit_scale=True) as bar:
        for sf in files:
            files_read += 1
            try:
                for locator, rec, nbytes in iter_records(sf, text_field=cfg.text_field,
                                                         min_doc_chars=cfg.min_docstring_chars, client=client):
                    bar.update(nbytes)
                    doc, rej = ing.process(sf.uri, locator, rec)
                    if doc is None and rej is None:
                        continue
                    records += 1
                    if rej is not None:
                        rejects.add(rej, len(rej["raw"]))
                        continue
                    n = len(doc["text"].encode("utf-8"))
                    docs.add(doc, n)
                    written += 1
                    text_bytes += n
                    if cfg.max_docs is not None and written >= cfg.max_docs:
                        done = True
                        break
            except (OSError, EOFError, zlib.error, pa.ArrowException) as e:
                # a truncated gzip or corrupt Parquet file: what was read is kept, the rest is reported
                rejects.add(ing.reject(sf.uri, "file", "unreadable_file", f"{type(e).__name__}: {e}", ""), 0)
            if done:
                break
    docs.close()
    rejects.close()
    if records == 0:
        raise SourceError(f"source {cfg.source} holds no records ({len(files)} file(s) read)")
    rejected = sum(ing.rejects.values())
    return {
        "files": len(files), "files_read": files_read, "records_read": records,
        "docs": written, "rejected": rejected, "rejects_by_reason": dict(sorted(ing.rejects.items())),
        "reject_fraction": rejected / max(records, 1), "text_bytes": text_bytes,
        "shards": docs.shards, "stopped_at_max_docs": done,
        **{k: ing.flags.get(k, 0) for k in ("invalid_utf8", "invalid_unicode", "control_chars_removed",
                                             "nfc_changed", "blank_lines")},
    }
