"""LiveCodeBench-style code generation (its ``code_generation_lite`` rows): ``question_content``,
``starter_code``, ``public_test_cases`` + ``private_test_cases`` (JSON text; LCB's zlib + base64
pickled form is read too, with an unpickler that admits no class), ``metadata.func_name``.

Two kinds of tests, as LCB has: ``stdin`` (the program reads stdin; output compared line-wise,
trailing whitespace ignored) and ``functional`` (LeetCode-style ``class Solution``: each input line
is one JSON argument, the return value compared with the JSON output). The answer's last
```python block runs in k2's sandbox; a sample passes when every test does; unbiased pass@k.
"""
from __future__ import annotations

import base64
import concurrent.futures as cf
import json
import pickle
import re
import zlib
from dataclasses import dataclass, field
from typing import Any

from k2core.eval.files import SAMPLES, read_jsonl
from k2core.eval.metrics import pass_at_k_score

FORMAT = ("JSON Lines of LiveCodeBench rows: question_content, starter_code, public_test_cases, "
          "private_test_cases, metadata (func_name for functional tests)")
# what LiveCodeBench puts before a functional solution (its prompts let answers use these freely)
HEADER = ("from typing import *\nfrom collections import *\nfrom functools import *\nfrom itertools import *\n"
          "from heapq import *\nfrom bisect import *\nimport math\nimport string\nimport re\n")


@dataclass
class CodeProblem:
    id: str
    prompt: str
    tests: list[dict[str, str]]                 # {input, output, testtype}
    func_name: str | None = None                # functional problems
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def functional(self) -> bool:
        return self.tests[0]["testtype"] == "functional"


class _NoClasses(pickle.Unpickler):
    def find_class(self, module, name):             # a pickled str needs none: anything else is refused
        raise pickle.UnpicklingError(f"refused: {module}.{name}")


def _tests(value: Any) -> list[dict]:
    if isinstance(value, list):
        return value
    if not isinstance(value, str) or not value.strip():
        return []
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        import io

        raw = zlib.decompress(base64.b64decode(value.encode("utf-8")))
        return json.loads(_NoClasses(io.BytesIO(raw)).load())


def prompt_of(content: str, starter: str) -> str:
    if starter.strip():
        tail = ("Complete the starter code below; answer with the whole solution in one ```python block.\n"
                f"```python\n{starter}\n```")
    else:
        tail = ("Read the input from stdin and write the answer to stdout; answer with the program in one "
                "```python block.")
    return f"Write a correct Python program for this problem.\n\nQuestion: {content}\n\n{tail}"


def read_problems(path: str | None = None, limit: int | None = None) -> tuple[list[CodeProblem], list[str]]:
    rows, bad = read_jsonl(path or SAMPLES / "livecodebench_style.jsonl", FORMAT)
    out = []
    for i, r in rows:
        content = r.get("question_content")
        if not isinstance(content, str) or not content.strip():
            bad.append(f"line {i}: no question_content")
            continue
        try:
            tests = _tests(r.get("public_test_cases")) + _tests(r.get("private_test_cases"))
            meta = r.get("metadata") or {}
            meta = json.loads(meta) if isinstance(meta, str) and meta.strip() else (meta if isinstance(meta, dict) else {})
        except Exception as e:                  # noqa: BLE001 — a broken row is counted, never a crash
            bad.append(f"line {i}: unreadable tests or metadata ({type(e).__name__}: {str(e)[:100]})")
            continue
        kinds = {t.get("testtype") for t in tests if isinstance(t, dict)}
        if not tests or not all(isinstance(t, dict) and isinstance(t.get("input"), str) and isinstance(t.get("output"), str)
                                for t in tests) or not kinds <= {"stdin", "functional"} or len(kinds) != 1:
            bad.append(f"line {i}: tests must be {{input, output, testtype}} of one testtype, stdin or functional")
            continue
        func = meta.get("func_name")
        if kinds == {"functional"} and not func:
            bad.append(f"line {i}: functional tests need metadata.func_name")
            continue
        out.append(CodeProblem(str(r.get("question_id") or f"lcb-{i}"), prompt_of(content, r.get("starter_code") or ""),
                               tests, func, {"title": r.get("question_title"), "difficulty": r.get("difficulty")}))
    return out[:limit] if limit else out, bad


def code_of(answer: str) -> str | None:
    blocks = re.findall(r"```(?:python|py|Python)?\n(.*?)```", answer or "", flags=re.S)
    return blocks[-1] if blocks else None


def check(p: CodeProblem, answer: str | None, timeout_s: float, pool=None) -> dict[str, Any]:
    """One sample's result: {id, passed, result, tests_passed, tests_total}."""
    from k2core.sandbox import Limits, run_function_tests, run_stdio_tests

    out = {"id": p.id, "passed": False, "tests_passed": 0, "tests_total": len(p.tests)}
    code = code_of(answer) if answer is not None else None
    if answer is None:
        return {**out, "result": "not generated: prompt + max_tokens exceed the model's context"}
    if code is None:
        return {**out, "result": "unparsable: no ```python block"}
    limits = Limits(timeout_s=timeout_s, memory_mb=1024)
    if p.functional:
        try:
            cases = [([json.loads(x) for x in t["input"].split("\n") if x.strip()], json.loads(t["output"]))
                     for t in p.tests]
        except json.JSONDecodeError as e:
            return {**out, "result": f"bad test: not JSON ({e.msg})"}
        entry = "__k2_entry"
        target = f"Solution().{p.func_name}" if re.search(r"^class Solution\b", code, flags=re.M) else p.func_name
        prog = f"{HEADER}\n{code}\n\ndef {entry}(*args):\n    return {target}(*args)\n"
        res = run_function_tests(prog, entry, cases, limits)
    else:
        res = run_stdio_tests(code, [(t["input"], t["output"]) for t in p.tests], limits, pool=pool)
    first = next((t for t in res.tests if not t.passed), None)
    result = "passed" if res.passed == res.total else f"failed: test {first.index + 1}: {first.detail[:200]}"
    return {**out, "passed": res.passed == res.total, "tests_passed": res.passed, "result": result}


def run(problems: list[CodeProblem], answers: list[str | None], samples: int, timeout_s: float = 6.0,
        workers: int | None = None) -> list[dict[str, Any]]:
    """`answers`: `samples` per problem, in order; every sample checked, in parallel."""
    import os

    from k2core.sandbox import SandboxPool

    expanded = [p for p in problems for _ in range(samples)]
    n = workers or max(2, os.cpu_count() or 2)
    with SandboxPool(n) as pool, cf.ThreadPoolExecutor(n) as ex:
        return list(ex.map(lambda pa: check(pa[0], pa[1], timeout_s, pool), zip(expanded, answers)))


def score(results: list[dict], ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, Any]:
    return pass_at_k_score("livecodebench", results, "id", ks,
                           lambda r: re.sub(r"test \d+: ", "", r["result"].removeprefix("failed: ")).split(":")[0][:60])
