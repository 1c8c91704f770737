"""SWE-style tasks (SWE-bench's shape, offline): a small repository with an issue; the agent reads
and edits files through tools, runs code and the repository's tests in k2's sandbox, and stops
with a summary. Then the hidden tests are written over the repository (SWE-bench's ``test_patch``)
and run: **resolved** = every ``FAIL_TO_PASS`` test passes and every ``PASS_TO_PASS`` test still does.

A row: ``instance_id``, ``problem_statement``, ``files`` (path -> content: the repository),
``test_files`` (the hidden tests), ``FAIL_TO_PASS`` / ``PASS_TO_PASS`` (test ids ``path::function``;
lists or SWE-bench's JSON-encoded lists). Tests are plain functions (``def test_…``: an exception
fails them), run by k2's own harness in the sandbox — no pytest needed there.

The episode runs in the one rollout loop (k2core/agentic/rollout.py): the problem statement is the
user's only turn; the agent's first answer without a tool call ends it.
"""
from __future__ import annotations

import json
import posixpath
import random
from typing import Any

from k2core.agentic.domains.base import ToolError, result_text
from k2core.eval.files import SAMPLES, field, read_jsonl

FORMAT = ("JSON Lines of {instance_id, problem_statement, files, test_files, FAIL_TO_PASS, PASS_TO_PASS} "
          "(files: path -> content)")
SYSTEM = ("You are a software engineer fixing an issue in a Python repository. Use the tools to list, read "
          "and edit files and to run code and tests. When the issue is fixed, answer with a one-line summary "
          "and no tool call.")
MAX_READ = 8000


def _fn(name: str, description: str, props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": props, "required": required}}}


_PATH = {"type": "string", "description": "a path relative to the repository root"}
TOOLS = [
    _fn("list_files", "List the repository's files.", {}, []),
    _fn("read_file", "Read a file of the repository.", {"path": _PATH}, ["path"]),
    _fn("write_file", "Create or overwrite a file.", {"path": _PATH, "content": {"type": "string"}}, ["path", "content"]),
    _fn("replace_in_file", "Replace the one occurrence of `old` in a file with `new`.",
        {"path": _PATH, "old": {"type": "string"}, "new": {"type": "string"}}, ["path", "old", "new"]),
    _fn("run_tests", "Run the repository's tests (test_*.py files, functions named test_*); all of them unless "
        "`tests` lists ids path::function.", {"tests": {"type": "array", "items": {"type": "string"}}}, []),
    _fn("run_python", "Run a Python program with the repository as its working directory.",
        {"code": {"type": "string"}}, ["code"]),
]

# Runs in the sandbox: each test id `path::function` imported from its file and called; a JSON map
# id -> "passed" | "failed: …" after a marker (the work dir is gone after the run).
_HARNESS = r'''
import importlib.util, json, os, sys, traceback
sys.path.insert(0, os.getcwd())
ids = json.load(open("_k2_tests.json"))
if not ids:
    for root, dirs, files in os.walk("."):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
        for f in sorted(files):
            if f.startswith("test_") and f.endswith(".py"):
                path = os.path.relpath(os.path.join(root, f))
                src = open(path).read()
                ids += [f"{path}::{line[4:].split('(')[0]}" for line in src.splitlines() if line.startswith("def test_")]
mods, out = {}, {}
for tid in ids:
    path, _, name = tid.partition("::")
    try:
        if path not in mods:
            spec = importlib.util.spec_from_file_location(path[:-3].replace("/", "."), path)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            mods[path] = mod
        getattr(mods[path], name)()
        out[tid] = "passed"
    except BaseException as e:
        out[tid] = ("failed: " + type(e).__name__ + (": " + str(e) if str(e) else ""))[:300]
sys.stdout.write("\n\x00K2TESTS\x00\n" + json.dumps(out))
'''
_MARKER = "\n\x00K2TESTS\x00\n"


def run_tests(files: dict[str, str], ids: list[str], timeout_s: float = 10.0) -> tuple[dict[str, str], str]:
    """Each test id's outcome ("passed" / "failed: …"; empty `ids`: every test found), and the run's
    problem when the harness gave no result (a timeout, a crash)."""
    from k2core import sandbox

    r = sandbox.run(["python", "_k2_harness.py"],
                    files={**files, "_k2_harness.py": _HARNESS, "_k2_tests.json": json.dumps(ids)},
                    limits=sandbox.Limits(timeout_s=timeout_s, memory_mb=1024))
    if _MARKER not in r.stdout:
        why = r.stopped_by or f"exit {r.exit_code}: {r.stderr.strip()[-200:]}"
        return {t: f"failed: not run ({why})" for t in ids}, why
    got = json.loads(r.stdout.rsplit(_MARKER, 1)[1])
    return {t: got.get(t, "failed: not found") for t in (ids or got)}, ""


class RepoEnv:
    """The agent's tools over the repository (a path -> content map in memory: reading and editing
    run no code; code and tests run in the sandbox on a copy)."""

    names = {t["function"]["name"] for t in TOOLS}

    def __init__(self, files: dict[str, str], timeout_s: float = 10.0):
        self.files, self.timeout_s = dict(files), timeout_s

    @staticmethod
    def _path(p: Any) -> str:
        if not isinstance(p, str) or not p.strip():
            raise ToolError("Error: path must be a non-empty string")
        norm = posixpath.normpath(p.strip())
        if norm.startswith("/") or norm == "." or norm == ".." or norm.startswith("../"):
            raise ToolError(f"Error: {p!r} is outside the repository")
        return norm

    def call(self, name: str, args: dict[str, Any]) -> str:
        if name == "list_files":
            return "\n".join(sorted(self.files))
        if name == "read_file":
            p = self._path(args.get("path"))
            if p not in self.files:
                raise ToolError(f"Error: no file {p}")
            return self.files[p][:MAX_READ]
        if name == "write_file":
            p = self._path(args.get("path"))
            self.files[p] = str(args.get("content", ""))
            return f"wrote {p} ({len(self.files[p])} characters)"
        if name == "replace_in_file":
            p = self._path(args.get("path"))
            old, new = args.get("old", ""), args.get("new", "")
            if p not in self.files:
                raise ToolError(f"Error: no file {p}")
            n = self.files[p].count(old) if old else 0
            if n != 1:
                raise ToolError(f"Error: `old` occurs {n} times in {p} (it must occur exactly once)")
            self.files[p] = self.files[p].replace(old, new)
            return f"replaced 1 occurrence in {p}"
        if name == "run_tests":
            tests = args.get("tests") or []
            res, why = run_tests(self.files, [str(t) for t in tests], self.timeout_s)
            return result_text({"passed": sum(v == "passed" for v in res.values()), "total": len(res),
                                "failed": {k: v for k, v in res.items() if v != "passed"}, **({"error": why} if why else {})})
        if name == "run_python":
            from k2core import sandbox

            code = args.get("code")
            if not isinstance(code, str):
                raise ToolError("Error: run_python needs a string argument code")
            r = sandbox.run(["python", "_k2_main.py"], files={**self.files, "_k2_main.py": code},
                            limits=sandbox.Limits(timeout_s=self.timeout_s))
            return result_text({"exit_code": r.exit_code, "stdout": r.stdout[-2000:], "stderr": r.stderr[-2000:],
                                **({"stopped_by": r.stopped_by} if r.stopped_by else {})})
        raise ToolError(f"Error: unknown tool {name!r}")


class IssueUser:
    """The user of an SWE-style episode: the problem statement, then a stop once the agent answers."""

    def respond(self, task: dict[str, Any], messages: list[dict[str, Any]], rng: random.Random) -> str:
        from k2core.agentic.user import STOP

        if not any(m["role"] == "user" for m in messages):
            return task["problem_statement"]
        return STOP


def _ids(v: Any) -> list[str] | None:
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except json.JSONDecodeError:
            return None
    return [str(x) for x in v] if isinstance(v, list) else None


def read_tasks(path: str | None = None, limit: int | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    rows, bad = read_jsonl(path or SAMPLES / "swe_style.jsonl", FORMAT)
    out = []
    for i, r in rows:
        files, tests = r.get("files"), r.get("test_files")
        f2p, p2p = _ids(r.get("FAIL_TO_PASS")), _ids(r.get("PASS_TO_PASS", []))
        problem = field(r, "problem_statement")
        if not isinstance(problem, str) or not isinstance(files, dict) or not isinstance(tests, dict):
            bad.append(f"line {i}: needs problem_statement, files and test_files (path -> content)")
            continue
        if not f2p or p2p is None:
            bad.append(f"line {i}: FAIL_TO_PASS must list at least one test id (path::function)")
            continue
        if not all(isinstance(v, str) for v in [*files.values(), *tests.values()]):
            bad.append(f"line {i}: file contents must be strings")
            continue
        out.append({"instance_id": str(r.get("instance_id") or f"swe-{i}"), "problem_statement": problem,
                    "files": files, "test_files": tests, "FAIL_TO_PASS": f2p, "PASS_TO_PASS": p2p})
    return out[:limit] if limit else out, bad


def grade(task: dict[str, Any], files: dict[str, str], timeout_s: float = 10.0) -> dict[str, Any]:
    """The hidden tests over the edited repository: resolved, and each test's outcome."""
    ids = task["FAIL_TO_PASS"] + task["PASS_TO_PASS"]
    res, why = run_tests({**files, **task["test_files"]}, ids, timeout_s)
    f2p = [t for t in task["FAIL_TO_PASS"] if res[t] != "passed"]
    p2p = [t for t in task["PASS_TO_PASS"] if res[t] != "passed"]
    reason = ("resolved" if not f2p and not p2p else
              f"FAIL_TO_PASS still failing: {f2p[0]}: {res[f2p[0]]}" if f2p else
              f"PASS_TO_PASS broken: {p2p[0]}: {res[p2p[0]]}")
    return {"resolved": not f2p and not p2p, "reason": reason[:400], "tests": res, **({"run_error": why} if why else {})}


def attempt(llm, tasks: list[dict[str, Any]], max_turns: int, max_tokens: int, temperature: float, seed: int,
            timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """Every task attempted once, all episodes advanced together; each graded."""
    from k2core.agentic.rollout import Episode, run_episodes
    from k2core.infer.llm import TextParams

    eps = [Episode(t, RepoEnv(t["files"], timeout_s), TOOLS, [{"role": "system", "content": SYSTEM}], seed=seed + i)
           for i, t in enumerate(tasks)]
    if eps:
        run_episodes(eps, llm, TextParams(max_tokens=max_tokens, temperature=temperature, seed=seed),
                     user=IssueUser(), max_turns=max_turns)
    out = []
    for t, e in zip(tasks, eps):
        g = grade(t, e.env.files, timeout_s)
        edited = sorted(p for p in set(e.env.files) | set(t["files"]) if e.env.files.get(p) != t["files"].get(p))
        out.append({"instance_id": t["instance_id"], **g, "termination": e.termination, "turns": e.turns,
                    "calls": e.calls, "edited": edited, "errors": [x["kind"] for x in e.errors]})
    return out


def score(results: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(results)
    reasons: dict[str, int] = {}
    for r in results:
        if not r["resolved"]:
            key = r["reason"].split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
    return {"suite": "swe", "instances": n, "resolved": round(sum(r["resolved"] for r in results) / n, 4) if n else None,
            "edited_any": sum(bool(r.get("edited")) for r in results), "failures": reasons}
