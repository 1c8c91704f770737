"""Sandbox throughput: runs per second for a trivial program and for a 100-test problem.

    sudo-less as root:  .venv/bin/python bench/sandbox.py [--runs 60]

Each isolation layer side by side with the reference: a bare `subprocess.run` of the same
interpreter (no isolation at all). Pool = as many parallel runs as cores. Prints one JSON line,
then a table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from k2core.sandbox import LAYERS, SANDBOX_PYTHON, Limits, SandboxPool, WarmWorker, detect_isolation, run, \
    run_function_tests, run_stdio_tests

TRIVIAL = "print('hello')"
ADD = "a, b = map(int, input().split())\nprint(a + b)"
FUNC = "def add(a, b):\n    return a + b"


def rate(fn, n: int, workers: int) -> float:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(lambda _: fn(), range(n)))
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=60)
    a = ap.parse_args()
    cores = os.cpu_count() or 2
    best = detect_isolation()
    layers = [l for l in LAYERS if LAYERS.index(l) >= LAYERS.index(best)]
    rows = []
    ref = lambda: subprocess.run([SANDBOX_PYTHON, "-c", TRIVIAL], capture_output=True)  # noqa: E731
    rows.append({"layer": "reference (bare subprocess)", "trivial_seq_per_s": round(rate(ref, a.runs, 1), 1),
                 "trivial_pool_per_s": round(rate(ref, a.runs, cores), 1)})
    tests_stdio = [(f"{i} {i}\n", f"{2 * i}\n") for i in range(100)]
    tests_func = [((i, i), 2 * i) for i in range(100)]
    for layer in layers:
        triv = lambda: run(["python", "-c", TRIVIAL], layer=layer, limits=Limits(timeout_s=20))  # noqa: E731
        lat = [run(["python", "-c", TRIVIAL], layer=layer).wall_s for _ in range(10)]
        with SandboxPool(cores, warm=False) as pool:
            t0 = time.perf_counter()
            res = run_stdio_tests(ADD, tests_stdio, layer=layer, pool=pool)
            stdio_s = time.perf_counter() - t0
        assert res.passed == 100, res.tests[:3]
        t0 = time.perf_counter()
        fres = run_function_tests(FUNC, "add", tests_func, layer=layer)
        func_s = time.perf_counter() - t0
        assert fres.passed == 100
        rows.append({"layer": layer, "trivial_seq_per_s": round(rate(triv, a.runs, 1), 1),
                     "trivial_pool_per_s": round(rate(triv, a.runs, cores), 1),
                     "median_wall_ms": round(1000 * statistics.median(lat), 1),
                     "stdio_100_tests_s": round(stdio_s, 2), "function_100_tests_s": round(func_s, 3)})
    if best == "bubblewrap":   # warm workers: one sandboxed interpreter per pool thread, a fork per program
        with WarmWorker(Limits(timeout_s=20)) as w:
            lat = [w.run(["python", "-S", "-c", TRIVIAL]).wall_s for _ in range(10)]
            seq = rate(lambda: w.run(["python", "-S", "-c", TRIVIAL]), a.runs, 1)
        with SandboxPool(cores) as pool:
            pool.map([{"argv": ["python", "-S", "-c", "pass"], "limits": Limits(timeout_s=20)}] * cores)
            t0 = time.perf_counter()
            pool.map([{"argv": ["python", "-S", "-c", TRIVIAL], "limits": Limits(timeout_s=20)}] * a.runs)
            pooled = a.runs / (time.perf_counter() - t0)
            t0 = time.perf_counter()
            res = run_stdio_tests(ADD, tests_stdio, pool=pool)
            stdio_s = time.perf_counter() - t0
        assert res.passed == 100, res.tests[:3]
        rows.append({"layer": "bubblewrap, warm workers (python -S)", "trivial_seq_per_s": round(seq, 1),
                     "trivial_pool_per_s": round(pooled, 1), "median_wall_ms": round(1000 * statistics.median(lat), 1),
                     "stdio_100_tests_s": round(stdio_s, 2)})
    print(json.dumps({"bench": "sandbox", "machine": f"{platform.machine()} {cores} cores", "runs": a.runs,
                      "results": rows}))
    print("\n| layer | trivial runs/s (1 at a time) | trivial runs/s (pool of %d) | median wall ms | "
          "stdin/stdout problem, 100 tests (s) | function problem, 100 tests (s) |\n|---|---|---|---|---|---|" % cores)
    for r in rows:
        print(f"| {r['layer']} | {r['trivial_seq_per_s']} | {r['trivial_pool_per_s']} | {r.get('median_wall_ms', '-')} | "
              f"{r.get('stdio_100_tests_s', '-')} | {r.get('function_100_tests_s', '-')} |")


if __name__ == "__main__":
    main()
