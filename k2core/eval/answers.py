"""Final-answer suites (K2 reports AIME as avg@k and GPQA-Diamond as accuracy, K2_REFERENCE.md §6):

- **math**: AIME-style JSON Lines (``problem``, integer ``answer``; HF's spellings ``Problem`` /
  ``Answer`` / ``question`` / ``ID`` read too); k samples per problem, each answer (``<answer>`` or
  the last ``\\boxed{}``) checked with math-verify in the gym's pool (bounded in time); avg@k = the
  mean over problems of the fraction of its k samples that are right.
- **mcq**: GPQA's CSV (``Question``, ``Correct Answer``, ``Incorrect Answer 1..3``); the four
  options shuffled with a seed per question, the answer letter read from ``<answer>`` (or a final
  "answer: X"); accuracy.
"""
from __future__ import annotations

import csv
import io
import random
import re
from typing import Any

from k2core.errors import K2Error
from k2core.eval.files import SAMPLES, field, read_jsonl, read_text
from k2core.rl.gym import ANSWER_FORMAT, MathEnv, Problem, extract_answer

MATH_FORMAT = "JSON Lines of {problem, answer} (AIME-style; .gz ok)"
MCQ_FORMAT = "GPQA's CSV: Question, Correct Answer, Incorrect Answer 1, Incorrect Answer 2, Incorrect Answer 3"
LETTERS = "ABCD"


def read_math(path: str | None = None, limit: int | None = None) -> tuple[list[Problem], list[str]]:
    """Problems (answer as text), and the reasons rows were skipped."""
    rows, bad = read_jsonl(path or SAMPLES / "aime_style.jsonl", MATH_FORMAT)
    out = []
    for i, r in rows:
        q, a = field(r, "problem", "Problem", "question"), field(r, "answer", "Answer")
        if not isinstance(q, str) or a is None or isinstance(a, (dict, list)):
            bad.append(f"line {i}: needs a string problem and an answer")
            continue
        pid = str(field(r, "id", "ID") or f"math-{i}")
        out.append(Problem("math", pid, f"{q}\n{ANSWER_FORMAT}", str(a).strip()))
    return out[:limit] if limit else out, bad


def score_math(problems: list[Problem], responses: list[str | None], samples: int,
               timeout_s: float = 10.0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """`responses`: `samples` per problem in order (None: not generated, with the reason in place of
    a verdict). avg@k over problems, and each sample's verdict."""
    expanded = [p for p in problems for _ in range(samples)]
    got = [(p, r) for p, r in zip(expanded, responses) if r is not None]
    verdicts = iter(MathEnv(timeout_s).score([p for p, _ in got], [r for _, r in got]))
    results = []
    for p, r in zip(expanded, responses):
        v = next(verdicts) if r is not None else None
        results.append({"id": p.id, "answer": p.answer, "response": (r or "")[:1000], "correct": bool(v and v.reward >= 1),
                        "reason": v.reason if v else "not generated: prompt + max_tokens exceed the model's context"})
    per: dict[str, list[bool]] = {}
    for res in results:
        per.setdefault(res["id"], []).append(res["correct"])
    score: dict[str, Any] = {"suite": "math", "problems": len(per), "samples": samples,
                             "avg@k": round(sum(sum(v) / len(v) for v in per.values()) / len(per), 4) if per else None,
                             "failures": _reasons(results)}
    return score, results


def _reasons(results: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in results:
        if not r["correct"]:
            key = r["reason"].split(":")[0][:60]
            out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def read_mcq(path: str | None = None, limit: int | None = None, seed: int = 0) -> tuple[list[Problem], list[str]]:
    """Questions with the options shuffled (seeded per question); answer = the right letter."""
    path = str(path or SAMPLES / "gpqa_style.csv")
    text = read_text(path, MCQ_FORMAT)
    reader = csv.DictReader(io.StringIO(text))
    need = ["Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"]
    missing = [c for c in need if c not in (reader.fieldnames or [])]
    if missing:
        raise K2Error(f"suite file {path}: no column(s) {', '.join(missing)} (expected {MCQ_FORMAT})")
    out, bad = [], []
    for i, r in enumerate(reader, 2):                       # line 1 is the header
        vals = [(r.get(c) or "").strip() for c in need]
        if not all(vals):
            bad.append(f"line {i}: empty {', '.join(c for c, v in zip(need, vals) if not v)}")
            continue
        qid = (r.get("Record ID") or "").strip() or f"mcq-{i}"
        options = vals[1:]
        random.Random(f"{seed}/{qid}").shuffle(options)
        right = LETTERS[options.index(vals[1])]
        body = "\n".join(f"{L}) {o}" for L, o in zip(LETTERS, options))
        prompt = (f"{vals[0]}\n\n{body}\n\nAnswer with the letter of the correct option (A, B, C or D) "
                  "between <answer> and </answer>.")
        out.append(Problem("mcq", qid, prompt, right, meta={"options": options}))
    return out[:limit] if limit else out, bad


def mcq_letter(text: str | None) -> str | None:
    """The chosen letter: from ``<answer>``, else a final "answer: X" / "answer is (X)"; None if none."""
    a = extract_answer(text or "")
    if a is not None:
        m = re.match(r"^\(?([A-Da-d])\)?(?:[).:\s]|$)", a)
        return m.group(1).upper() if m else None
    found = re.findall(r"answer\s*(?:is|:)?\s*\(?([A-D])\b", text or "", flags=re.I)
    return found[-1].upper() if found else None


def score_mcq(problems: list[Problem], responses: list[str | None]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    results = []
    for p, r in zip(problems, responses):
        letter = mcq_letter(r) if r is not None else None
        reason = ("not generated: prompt + max_tokens exceed the model's context" if r is None
                  else "unparsable: no letter A-D" if letter is None
                  else "correct" if letter == p.answer else f"wrong: chose {letter}")
        results.append({"id": p.id, "answer": p.answer, "chosen": letter, "response": (r or "")[:1000],
                        "correct": letter == p.answer, "reason": reason})
    n = len(results)
    score = {"suite": "mcq", "questions": n,
             "accuracy": round(sum(r["correct"] for r in results) / n, 4) if n else None,
             "unparsable": sum(r["reason"].startswith("unparsable") for r in results), "failures": _reasons(results)}
    return score, results
