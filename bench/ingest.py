"""Ingest throughput, one process: the stdlib source and a synthetic JSONL corpus.

    .venv/bin/python bench/ingest.py

Measures the stage's run function alone (no gate, no Prefect): docs/s and MB/s of text in.
Prints one JSON line, then a table.
"""
from __future__ import annotations

import gzip
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from k2core.config import load_config
from k2core.data import ingest
from k2core.stage import StageContext


def measure(source: str, tmp: Path, name: str) -> dict:
    cfg = load_config("h200", overrides=[f"ingest.source={source}"])
    wd = tmp / name
    wd.mkdir()
    t0 = time.perf_counter()
    m = ingest.run(StageContext("ingest", "bench", cfg.ingest, cfg, wd, {}, None))
    s = time.perf_counter() - t0
    return {"source": name, "docs": m["docs"], "rejected": m["rejected"], "text_mb": round(m["text_bytes"] / 1e6, 2),
            "seconds": round(s, 2), "docs_per_s": round(m["records_read"] / s), "mb_per_s": round(m["text_bytes"] / 1e6 / s, 2)}


def main() -> None:
    os.environ["K2_PROGRESS"] = "0"
    tmp = Path(tempfile.mkdtemp(prefix="k2-bench-ingest-"))
    src = tmp / "synthetic.jsonl.gz"
    with gzip.open(src, "wt") as f:
        for i in range(100_000):
            f.write(json.dumps({"text": f"doc {i} caf\u00e9 " + "lorem ipsum dolor sit amet " * 40, "url": f"u{i}"}) + "\n")
    rows = [measure("stdlib", tmp, "stdlib"), measure(str(src), tmp, "synthetic-jsonl-gz")]
    print(json.dumps({"bench": "ingest", "machine": f"{platform.machine()} {os.cpu_count()} cores", "results": rows}))
    print("\n| source | docs | text MB | s | docs/s | MB/s |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['source']} | {r['docs']} | {r['text_mb']} | {r['seconds']} | {r['docs_per_s']} | {r['mb_per_s']} |")


if __name__ == "__main__":
    main()
