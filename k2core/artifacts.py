"""Readers of committed artifacts: rows of an artifact's Parquet shards, the curated documents a
stage takes as input, a tokenize artifact's index and memory-mapped token rows."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from k2core.errors import K2Error
from k2core.stage import StageContext
from k2core.store import Artifact


def read_input_rows(ctx: StageContext, stage: str, columns: list[str]) -> list[dict[str, Any]]:
    """`columns` of every row in the `stage` input's data/ shards, sorted by id (shard layout never
    changes the result); none when the stage is not an input."""
    art = ctx.inputs.get(stage)
    return read_artifact_rows(art, columns) if art is not None else []


def read_artifact_rows(art: Artifact, columns: list[str], key: str = "id") -> list[dict[str, Any]]:
    """`columns` of every row in an artifact's data/ shards (Parquet files), sorted by `key`."""
    import pyarrow.parquet as pq

    rows = []
    for rel in art.files("data/"):
        if rel.endswith(".parquet"):
            rows += pq.read_table(art.path(rel), columns=columns).to_pylist()
    rows.sort(key=lambda r: r[key])
    return rows


def read_documents(ctx: StageContext) -> list[dict[str, Any]]:
    """The curated documents (id, text, domain)."""
    return read_input_rows(ctx, "curate", ["id", "text", "domain"])


def load_index(art: Artifact) -> dict[str, Any]:
    """A tokenize artifact's index.json (dtype, seq_len, vocab_size, shards)."""
    return json.loads(Path(art.path("index.json")).read_text())


def read_rows(files: list[str], dtype: str, seq_len: int) -> np.ndarray:
    """Memory-mapped [rows, seq_len] token rows of shard files; an empty or truncated file is an
    error naming it."""
    row_bytes = seq_len * np.dtype(dtype).itemsize
    for f in files:
        size = Path(f).stat().st_size
        if size == 0 or size % row_bytes:
            raise K2Error(f"token shard {f} is {'empty' if size == 0 else 'truncated'} "
                          f"({size} bytes; rows are {row_bytes} bytes)")
    maps = [np.memmap(f, dtype=dtype, mode="r").reshape(-1, seq_len) for f in files]
    return maps[0] if len(maps) == 1 else np.concatenate(maps)
