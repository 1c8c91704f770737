"""LiveCodeBench-style rows: stdin and functional tests in k2's sandbox, LCB's compressed private
tests, broken rows counted with a reason."""
from __future__ import annotations

import base64
import json
import pickle
import zlib

from k2core.eval import livecodebench as L

ROWS = [json.loads(x) for x in (L.SAMPLES / "livecodebench_style.jsonl").read_text().splitlines()]


def test_the_samples_reference_solutions_pass_and_wrong_answers_fail_with_a_reason():
    problems, bad = L.read_problems()
    assert len(problems) == 8 and not bad and sum(p.functional for p in problems) == 4
    assert all("not LiveCodeBench" in r["source"] for r in ROWS)
    answers = [f"Here it is:\n```python\n{r['k2_reference_solution']}\n```" for r in ROWS]
    results = L.run(problems, answers, samples=1, timeout_s=5)
    assert [r["passed"] for r in results] == [True] * 8, [r["result"] for r in results]
    wrong = ["```python\nprint(0)\n```", "no code", "```python\nclass Solution:\n    def twoSum(self, nums, target):\n"
             "        return [0, 0]\n```", "```python\nwhile True: pass\n```"]
    picks = [problems[0], problems[1], problems[4], problems[2]]
    res = L.run(picks, wrong, samples=1, timeout_s=1)
    assert not any(r["passed"] for r in res)
    assert res[0]["result"].startswith("failed: test 1: got") and res[1]["result"] == "unparsable: no ```python block"
    assert res[2]["result"].startswith("failed: test 1: got [0, 0], expected [0, 1]")
    assert "timeout" in res[3]["result"]
    s = L.score(results[:2] + res[:2], ks=(1, 2))
    assert s["problems"] == 2 and s["pass@1"] == 0.5 and s["pass@2"] == 1.0


def test_compressed_private_tests_are_read_and_pickled_objects_refused(tmp_path):
    row = dict(ROWS[0])
    private = json.loads(row["private_test_cases"])
    row["private_test_cases"] = base64.b64encode(zlib.compress(pickle.dumps(json.dumps(private)))).decode()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    evil = dict(ROWS[1], question_id="evil",
                private_test_cases=base64.b64encode(zlib.compress(pickle.dumps(Evil()))).decode())
    nofunc = dict(ROWS[4], question_id="nofunc", metadata="{}")
    mixed = dict(ROWS[0], question_id="mixed", public_test_cases=json.dumps(
        [{"input": "1", "output": "1", "testtype": "stdin"}, {"input": "1", "output": "1", "testtype": "functional"}]))
    p = tmp_path / "lcb.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in [row, evil, nofunc, mixed, {"question_id": "x"}]))
    problems, bad = L.read_problems(str(p))
    assert [x.id for x in problems] == [row["question_id"]] and len(problems[0].tests) == 2 + len(private)
    assert "refused: builtins.print" in bad[0] and "need metadata.func_name" in bad[1]
    assert "of one testtype" in bad[2] and bad[3] == "line 5: no question_content"
