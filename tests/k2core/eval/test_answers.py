"""AIME-style math (avg@k with math-verify) and GPQA-style multiple choice, read in their native shapes."""
from __future__ import annotations

import csv
import json

import pytest

from k2core.errors import K2Error
from k2core.eval import answers as A


def test_the_shipped_math_sample_reads_and_is_marked_as_a_sample():
    problems, bad = A.read_math()
    assert len(problems) == 16 and not bad
    rows = [json.loads(x) for x in (A.SAMPLES / "aime_style.jsonl").read_text().splitlines()]
    assert all("not AIME" in r["source"] for r in rows) and all(isinstance(r["answer"], int) for r in rows)
    assert problems[0].answer == "16" and problems[0].prompt.endswith("</answer>.")      # 2024 = 2^3 * 11 * 23


def test_math_reads_hf_spellings_and_counts_bad_rows(tmp_path):
    p = tmp_path / "aime.jsonl"
    p.write_text(json.dumps({"ID": "2024-I-1", "Problem": "What is 2+3?", "Answer": 5}) + "\n{oops\n"
                 + json.dumps({"problem": "no answer"}) + "\n")
    problems, bad = A.read_math(str(p))
    assert [(x.id, x.answer) for x in problems] == [("2024-I-1", "5")]
    assert bad == ["line 2: not JSON (Expecting property name enclosed in double quotes)",
                   "line 3: needs a string problem and an answer"]
    with pytest.raises(K2Error, match="no file .*problem, answer"):
        A.read_math(str(tmp_path / "missing.jsonl"))


def test_avg_at_k_is_the_mean_over_problems_of_the_right_fraction():
    problems, _ = A.read_math(limit=2)                   # answers 16 and 49
    responses = ["<answer>16</answer>", "the answer is \\boxed{16}",       # problem 1: 2 of 2
                 "<answer>48</answer>", "I do not know"]                   # problem 2: 0 of 2 (wrong, unparsable)
    score, results = A.score_math(problems, responses, samples=2)
    assert score["avg@k"] == 0.5 and score["problems"] == 2 and score["samples"] == 2
    assert [r["correct"] for r in results] == [True, True, False, False]
    assert results[2]["reason"] == "wrong" and results[3]["reason"].startswith("unparsable")
    score, results = A.score_math(problems[:1], ["<answer>16</answer>", None], samples=2)
    assert score["avg@k"] == 0.5 and results[1]["reason"].startswith("not generated")


def test_mcq_shuffles_with_a_seed_and_keeps_the_right_letter(tmp_path):
    problems, bad = A.read_mcq()
    assert len(problems) == 12 and not bad
    with open(A.SAMPLES / "gpqa_style.csv") as f:
        rows = list(csv.DictReader(f))
    letters = set()
    for p, r in zip(problems, rows):
        assert p.meta["options"]["ABCD".index(p.answer)] == r["Correct Answer"]
        assert sorted(p.meta["options"]) == sorted([r["Correct Answer"]] + [r[f"Incorrect Answer {i}"] for i in (1, 2, 3)])
        letters.add(p.answer)
    assert len(letters) > 1                                  # shuffled, not always A
    again, _ = A.read_mcq()
    other, _ = A.read_mcq(seed=1)
    assert [p.answer for p in again] == [p.answer for p in problems] != [p.answer for p in other]


def test_mcq_letters_scores_and_bad_files(tmp_path):
    assert [A.mcq_letter(t) for t in ["<answer>B</answer>", "<answer>(c)</answer>", "so the answer is (D).",
                                      "Answer: A", "<answer>maybe</answer>", "no idea", None]] == \
        ["B", "C", "D", "A", None, None, None]
    problems, _ = A.read_mcq(limit=3)
    wrong = "ABCD"[("ABCD".index(problems[1].answer) + 1) % 4]
    score, results = A.score_mcq(problems, [f"<answer>{problems[0].answer}</answer>", f"<answer>{wrong}</answer>", "hm"])
    assert score["accuracy"] == round(1 / 3, 4) and score["unparsable"] == 1
    assert [r["reason"] for r in results] == ["correct", f"wrong: chose {wrong}", "unparsable: no letter A-D"]
    p = tmp_path / "g.csv"
    p.write_text("Question,Correct Answer\nq,a\n")
    with pytest.raises(K2Error, match="no column.*Incorrect Answer 1"):
        A.read_mcq(str(p))
    p.write_text("Question,Correct Answer,Incorrect Answer 1,Incorrect Answer 2,Incorrect Answer 3\n"
                 "q,a,b,c,d\n,a,b,c,d\n")
    got, bad = A.read_mcq(str(p))
    assert len(got) == 1 and bad == ["line 3: empty Question"]
