"""CLI timings a user feels: `k2 --help` start-up and a fully cached `k2 run`.

    .venv/bin/python bench/cli.py [--repeat 5]

Targets (issue 2): `k2 --help` < 2 s; the second `k2 run --stages ingest --source FILE` (all
cache hits) < 10 s. Prints one JSON line, then a table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

K2 = str(Path(sys.executable).parent / "k2")


def timed(args: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([K2, *args], env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--docs", type=int, default=20_000)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="k2-bench-"))
    # a fresh K2_HOME: the first run starts k2's local Prefect server there (stopped at the end)
    env = dict(os.environ, PREFECT_HOME=str(tmp / "prefect"), K2_HOME=str(tmp / "k2home"), K2_PROGRESS="0")
    env.pop("PREFECT_API_URL", None)
    env.pop("K2_LOCAL_API", None)
    src = tmp / "docs.jsonl"
    with open(src, "w") as f:
        for i in range(a.docs):
            f.write(json.dumps({"text": f"document {i}: " + "some words of text " * 20}) + "\n")
    run = ["run", "--stages", "ingest", "--source", str(src), "--store", str(tmp / "store")]
    help_s = [timed(["--help"], env) for _ in range(a.repeat)]
    try:
        first_s = timed(run, env)
        cached_s = [timed(run, env) for _ in range(a.repeat)]
    finally:
        subprocess.run([K2, "server", "--stop"], env=env, capture_output=True)
    result = {
        "bench": "cli", "machine": f"{platform.machine()} {os.cpu_count()} cores", "python": platform.python_version(),
        "source_mb": round(src.stat().st_size / 1e6, 2), "docs": a.docs,
        "help_median_s": round(statistics.median(help_s), 3),
        "first_run_s": round(first_s, 2), "cached_run_median_s": round(statistics.median(cached_s), 3),
    }
    print(json.dumps(result))
    print(f"\n| measure | median (s) | target |\n|---|---|---|\n"
          f"| `k2 --help` | {result['help_median_s']} | < 2 |\n"
          f"| first `k2 run --stages ingest` ({result['source_mb']} MB, starts the local Prefect server) | {result['first_run_s']} | - |\n"
          f"| second run, all cache hits | {result['cached_run_median_s']} | < 10 |")


if __name__ == "__main__":
    main()
