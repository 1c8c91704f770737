"""Suite files by path or S3 URI (``.gz`` ok), and the shipped sample files (``samples/``)."""
from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from k2core.errors import K2Error

SAMPLES = Path(__file__).parent / "samples"


def read_text(uri: str | Path, expected: str) -> str:
    """The file's text; a missing or unreadable file names the path and the format `expected`."""
    uri = str(uri)
    try:
        if uri.startswith("s3://"):
            from k2core.sources import _split_s3
            from k2core.store import s3_client

            bucket, key = _split_s3(uri)
            data = s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
        else:
            p = Path(uri).expanduser()
            if not p.exists():
                raise K2Error(f"suite file: no file {uri} (expected {expected})")
            data = p.read_bytes()
        if uri.endswith(".gz"):
            data = gzip.decompress(data)
        return data.decode("utf-8")
    except K2Error:
        raise
    except Exception as e:                # noqa: BLE001 — S3 errors, bad gzip, bad UTF-8: one clear message
        raise K2Error(f"suite file {uri}: unreadable ({type(e).__name__}: {e}; expected {expected})") from None


def read_jsonl(uri: str | Path, expected: str) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
    """(line number, object) per JSON line, and the reasons lines were skipped."""
    rows, bad = [], []
    for i, line in enumerate(read_text(uri, expected).splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            bad.append(f"line {i}: not JSON ({e.msg})")
            continue
        if not isinstance(r, dict):
            bad.append(f"line {i}: not a JSON object")
            continue
        rows.append((i, r))
    return rows, bad


def field(row: dict[str, Any], *names: str) -> Any:
    """The first of `names` present in `row` (native files spell their columns differently)."""
    for n in names:
        if row.get(n) not in (None, ""):
            return row[n]
    return None
