"""Judges: small objects returning a verdict with a reason.

- :class:`StateJudge` — executable domains: τ²-bench's grade (final state hash equals the gold
  replay's, the required facts reached the user, the conversation ended by a stop).
- :class:`LLMJudge` — the teacher against the task's rubric (prompt ``prompts/judge.txt``): the first
  word of its answer, yes / no, and the rest as the reason; anything else is ``unparseable``. It is
  the verdict for simulated-tool tasks; on executable tasks its agreement with the state verdict is
  measured and reported, since a judge that cannot be checked is not trusted.
- :class:`TestsJudge` — coding tasks: the unit tests in k2's sandbox.
"""
from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROMPT = Path(__file__).parent / "prompts" / "judge.txt"


@dataclass
class Verdict:
    success: bool
    reasons: list[str] = field(default_factory=list)
    reward: float = 0.0
    judge: str = ""


class StateJudge:
    name = "state"

    def __init__(self, domain, db):
        self.domain, self.db = domain, db

    def __call__(self, task: dict[str, Any], messages: list[dict[str, Any]], termination: str) -> Verdict:
        from k2core.agentic.tasks import grade

        g = grade(self.domain, self.db, task, messages, termination)
        return Verdict(g.success, g.reasons, g.reward, self.name)


def transcript(messages: list[dict[str, Any]], limit: int = 4000) -> str:
    lines = []
    for m in messages:
        if m["role"] == "system":
            continue
        text = m.get("content") or ""
        for c in m.get("tool_calls") or []:
            text += f" [call {c['function']['name']}({c['function']['arguments']})]"
        lines.append(f"{m['role']}: {text.strip()}")
    out = "\n".join(lines)
    return out if len(out) <= limit else "…" + out[-limit:]


_YES = re.compile(r"^\W*(yes|no)\b[\s,.:;-]*(.*)", re.I | re.S)


def parse_judgement(text: str) -> tuple[bool | None, str]:
    m = _YES.match(text.strip())
    if not m:
        return None, f"unparseable: {text.strip()[:120]!r}"
    return m.group(1).lower() == "yes", m.group(2).strip().splitlines()[0][:300] if m.group(2).strip() else ""


class LLMJudge:
    name = "llm"

    def __init__(self, llm, params, prompt_file: str | None = None):
        self.llm, self.params = llm, params
        self.template = string.Template(Path(prompt_file or PROMPT).read_text())

    def prompt(self, task: dict[str, Any], messages: list[dict[str, Any]]) -> str:
        rubric = task.get("k2", {}).get("rubric", {})
        return self.template.safe_substitute(task=task["description"]["purpose"],
                                             criteria=rubric.get("success_criteria", ""),
                                             checkpoints=json.dumps(rubric.get("checkpoints", [])),
                                             conversation=transcript(messages))

    def judge_batch(self, items: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> list[Verdict]:
        """One batched call; a prompt longer than the judge's context gets ``llm_unfit``."""
        prompts = [self.prompt(t, m) for t, m in items]
        fit = [self.llm.fits(p, self.params.max_tokens) for p in prompts]
        outs = iter(self.llm.generate([p for p, ok in zip(prompts, fit) if ok], self.params, progress=False)
                    if any(fit) else [])
        verdicts = []
        for ok_fit in fit:
            if not ok_fit:
                verdicts.append(Verdict(False, ["prompt_too_long: the conversation exceeds the judge's context"], 0.0,
                                        "llm_unfit"))
                continue
            ok, reason = parse_judgement(next(outs).text)
            verdicts.append(Verdict(bool(ok), [reason] if reason else [], float(bool(ok)),
                                    self.name if ok is not None else "llm_unparseable"))
        return verdicts


def agreement(pairs: list[tuple[bool, Verdict]]) -> dict[str, Any]:
    """How often the LLM judge's verdict equals the state verdict (unparseable answers count as
    disagreeing), with the confusion counts."""
    n = len(pairs)
    if not n:
        return {"judged": 0, "agreement": None}
    parsed = [(s, v) for s, v in pairs if v.judge == "llm"]
    agree = sum(s == v.success for s, v in parsed)
    return {"judged": n, "parsed": len(parsed), "agreement": round(agree / n, 4),
            "agreement_when_parsed": round(agree / len(parsed), 4) if parsed else None,
            "true_yes": sum(s and v.success for s, v in parsed), "true_no": sum(not s and not v.success for s, v in parsed),
            "false_yes": sum(not s and v.success for s, v in parsed), "false_no": sum(s and not v.success for s, v in parsed)}


class TestsJudge:
    name = "tests"

    def __call__(self, task: dict[str, Any], code: str | None) -> Verdict:
        from k2core.sandbox import Limits, run_function_tests

        if not code:
            return Verdict(False, ["no_code: the agent gave no program"], 0.0, self.name)
        tests = [(t["args"], t["expected"]) for t in task["k2"]["tests"]]
        r = run_function_tests(code, task["k2"]["function"], tests, limits=Limits(timeout_s=10))
        failed = [o.detail for o in r.tests if not o.passed]
        return Verdict(r.passed == r.total, [f"tests_failed: {r.total - r.passed}/{r.total}: {failed[0]}"] if failed else [],
                       r.passed / r.total if r.total else 0.0, self.name)
