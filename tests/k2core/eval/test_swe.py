"""SWE-style tasks: the shipped sample repositories (their fixes resolve them, the bugs do not),
the agent's repository tools, and whole episodes through the rollout loop with a scripted agent."""
from __future__ import annotations

import json

import pytest

from k2core.agentic.domains.base import ToolError
from k2core.eval import swe
from k2core.infer.llm import LLM, Completion
from k2core.text import chat

ROWS = [json.loads(x) for x in (swe.SAMPLES / "swe_style.jsonl").read_text().splitlines()]


def test_the_samples_fail_before_their_fix_and_resolve_after_it():
    tasks, bad = swe.read_tasks()
    assert len(tasks) == 4 and not bad and all("not SWE-bench" in r["source"] for r in ROWS)
    for t, row in zip(tasks, ROWS):
        before = swe.grade(t, t["files"])
        assert not before["resolved"] and before["reason"].startswith("FAIL_TO_PASS still failing"), before
        assert all(before["tests"][x] == "passed" for x in t["PASS_TO_PASS"])
        after = swe.grade(t, {**t["files"], **row["k2_gold_files"]})
        assert after["resolved"] and after["reason"] == "resolved", after
    # a "fix" that breaks what worked is not a resolution
    t = tasks[1]
    broken = swe.grade(t, {**t["files"], "stats.py": "def mean(xs):\n    return 0\n\n\ndef median(xs):\n"
                                                     "    s = sorted(xs)\n    n = len(s)\n    return s[n // 2] if n % 2 "
                                                     "else (s[n // 2 - 1] + s[n // 2]) / 2\n"})
    assert not broken["resolved"] and broken["reason"].startswith("PASS_TO_PASS broken: test_stats.py::test_mean")


def test_repository_tools_stay_inside_and_say_what_is_wrong():
    env = swe.RepoEnv(ROWS[1]["files"], timeout_s=5)
    assert env.call("list_files", {}) == "stats.py\ntest_stats.py"
    for bad in ("/etc/passwd", "../x.py", "."):
        with pytest.raises(ToolError, match="outside the repository"):
            env.call("read_file", {"path": bad})
    with pytest.raises(ToolError, match="occurs 0 times"):
        env.call("replace_in_file", {"path": "stats.py", "old": "nope", "new": "x"})
    with pytest.raises(ToolError, match="no file"):
        env.call("read_file", {"path": "missing.py"})
    out = json.loads(env.call("run_tests", {}))
    assert out == {"passed": 2, "total": 2, "failed": {}}                  # the visible tests pass
    env.call("write_file", {"path": "./stats.py", "content": "raise ValueError('boom')\n"})
    out = json.loads(env.call("run_tests", {"tests": ["test_stats.py::test_mean"]}))
    assert out["failed"] == {"test_stats.py::test_mean": "failed: ValueError: boom"}
    run = json.loads(env.call("run_python", {"code": "import os; print(sorted(os.listdir('.')))"}))
    assert "'stats.py'" in run["stdout"]


def test_bad_rows_are_counted(tmp_path):
    p = tmp_path / "swe.jsonl"
    good = {k: v for k, v in ROWS[0].items()}
    p.write_text("\n".join(json.dumps(x) for x in [
        good, {**good, "FAIL_TO_PASS": "[]"}, {**good, "files": "not a map"},
        {**good, "FAIL_TO_PASS": json.dumps(good["FAIL_TO_PASS"]), "PASS_TO_PASS": json.dumps([])}]) + "\n")
    tasks, bad = swe.read_tasks(str(p))
    assert [t["instance_id"] for t in tasks] == [good["instance_id"]] * 2 and tasks[1]["PASS_TO_PASS"] == []
    assert bad == ["line 2: FAIL_TO_PASS must list at least one test id (path::function)",
                   "line 3: needs problem_statement, files and test_files (path -> content)"]


class Fixer(LLM):
    """A scripted agent: reads the buggy file, applies the sample's fix with replace_in_file /
    write_file, then answers; on the last task it only answers (no edit)."""

    backend, model = "scripted", "fixer"

    def generate(self, prompts, params=None, progress=True):
        outs = []
        for p in prompts:
            row = next(r for r in ROWS if r["problem_statement"] in p)
            [(path, fixed)] = list(row["k2_gold_files"].items())
            done = p.count("<|tool_call_begin|>")
            if row is ROWS[-1] or done >= 2:
                outs.append("Fixed the issue.")
                continue
            call = ({"name": "read_file", "arguments": {"path": path}} if done == 0 else
                    {"name": "write_file", "arguments": {"path": path, "content": fixed}})
            outs.append("Looking." + chat.render_tool_calls([{"id": chat.call_id(call["name"], done), "function": call}]))
        return [Completion(t, "stop", 10, 5) for t in outs]


def test_episodes_through_the_rollout_loop_are_graded_by_the_hidden_tests():
    tasks, _ = swe.read_tasks()
    results = swe.attempt(Fixer(), tasks, max_turns=4, max_tokens=64, temperature=0.0, seed=0, timeout_s=5)
    assert [r["resolved"] for r in results] == [True, True, True, False]
    assert results[0]["calls"] == 2 and results[0]["termination"] == "user_stop"
    assert results[0]["edited"] == list(ROWS[0]["k2_gold_files"]) and results[3]["edited"] == []
    s = swe.score(results)
    assert s["resolved"] == 0.75 and s["edited_any"] == 3 and s["failures"] == {"FAIL_TO_PASS still failing": 1}
