"""Self-critique rubric reward (K2 §3.2.2, "RL beyond verifiers"): the policy judges pairs of its
own responses against rubrics, and the judge is kept honest on prompts that have a verifier.

    rubrics = load_rubrics()                           # core + prescriptive + per-task files
    res = pairwise_rewards(prompt, responses, judge, rubrics.text("advice"))
    res.win_rates                                      # the reward of each response (None: never judged)

- **Rubrics** are files (``k2core/rl/rubrics``: ``core.md``, ``prescriptive.md``,
  ``tasks/<task type>.md``), editable like the rephrase prompts; their content hash is
  `Rubrics.version`, part of a stage's version. A missing or empty core / prescriptive file is a
  `RubricError` naming it.
- **Pairwise judging**: every pair of distinct responses is judged in both orders (A/B then B/A) in
  one batched call of `judge` (a list of user turns -> a list of answers), so a judge that favours a
  position cancels out; that bias is measured (`position_bias`: the share of pairs whose verdict
  followed the position instead of the response). A response's reward is its win rate over the
  verdicts it took part in. An answer without exactly one ``Preferred: A|B`` verdict is counted
  with its reason and is nobody's win; identical responses are not judged (counted).
- **Agreement with a verifier** (closed-loop refinement): on pairs of responses to verifiable
  prompts whose verifier rewards differ, the share where the judge (both orders agreeing) prefers
  the one the verifier does. `open_reward_gate` switches the open-prompt reward off below a floor.
- `CritiqueEnv`: the gym environment whose prompts are such pairs and whose reward is agreement
  with the verifier, so the same RL steps train the critic skill.
"""
from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from k2core.errors import K2Error
from k2core.rl.gym import Environment, Problem, Verdict

RUBRIC_DIR = Path(__file__).parent / "rubrics"
REQUIRED = ("core", "prescriptive")


class RubricError(K2Error):
    """A rubric file is missing or empty."""


@dataclass(frozen=True)
class Rubrics:
    core: str
    prescriptive: str
    tasks: dict[str, str]
    version: str                      # sha256 of every file's name and content, 16 hex digits

    def text(self, task: str | None = None) -> str:
        """The rubrics a judgement of `task`'s responses uses: core, prescriptive, then the task's
        own (none for a task type without a file)."""
        parts = [self.core, self.prescriptive]
        if task is not None and task in self.tasks:
            parts.append(self.tasks[task])
        return "\n\n".join(parts)


def load_rubrics(directory: str | Path | None = None) -> Rubrics:
    root = Path(directory) if directory is not None else RUBRIC_DIR
    h = hashlib.sha256()
    texts: dict[str, str] = {}
    for name in REQUIRED:
        p = root / f"{name}.md"
        if not p.is_file():
            raise RubricError(f"rubric file {p} is missing (the {name} rubric: markdown text)")
        texts[name] = p.read_text(encoding="utf-8").strip()
        if not texts[name]:
            raise RubricError(f"rubric file {p} is empty (the {name} rubric: markdown text)")
        h.update(f"{name}\0{texts[name]}\0".encode())
    tasks = {}
    for p in sorted((root / "tasks").glob("*.md")) if (root / "tasks").is_dir() else []:
        text = p.read_text(encoding="utf-8").strip()
        if not text:
            raise RubricError(f"rubric file {p} is empty (a task rubric: markdown text, or remove the file)")
        tasks[p.stem] = text
        h.update(f"tasks/{p.stem}\0{text}\0".encode())
    return Rubrics(texts["core"], texts["prescriptive"], tasks, h.hexdigest()[:16])


# ---------------------------------------------------------------------------- judging
def judge_prompt(prompt: str, first: str, second: str, rubric: str) -> str:
    """The judge's user turn: the rubrics, the request and two responses, one verdict line asked."""
    return (f"Judge two responses to the same request against these rubrics.\n\n{rubric}\n\n"
            f"## Request\n{prompt}\n\n## Response A\n{first}\n\n## Response B\n{second}\n\n"
            "Which response is better by the rubrics? Give one or two sentences of reasons, then a last "
            "line that is exactly `Preferred: A` or `Preferred: B`.")


_VERDICT = re.compile(r"^\W*preferred\W*:\W*(?:response\s+)?([AB])\b", re.IGNORECASE | re.MULTILINE)


def parse_verdict(text: str) -> tuple[str | None, str]:
    """("A" | "B" | None, reason)."""
    found = {m.upper() for m in _VERDICT.findall(text or "")}
    if not found:
        return None, "unparsable: no 'Preferred: A|B' line"
    if len(found) > 1:
        return None, "unparsable: both A and B preferred"
    return found.pop(), "ok"


def preference(ab: str | None, ba: str | None) -> int | None:
    """The judge's preference between x and y from its verdicts on (A=x, B=y) and (A=y, B=x):
    +1 for x, -1 for y, None when the two orders disagree or one is unparsable."""
    if ab == "A" and ba == "B":
        return 1
    if ab == "B" and ba == "A":
        return -1
    return None


@dataclass
class PairwiseResult:
    win_rates: list[float | None]     # per response; None: it took part in no parsed verdict
    judged: int = 0                   # judge answers asked for (2 per pair of distinct responses)
    parsed: int = 0
    identical_pairs: int = 0
    position_biased: int = 0          # pairs whose two verdicts named the same position
    both_parsed: int = 0              # pairs with both verdicts parsed
    reasons: Counter = field(default_factory=Counter)

    @property
    def position_bias(self) -> float | None:
        return self.position_biased / self.both_parsed if self.both_parsed else None


def pairwise_rewards(prompt: str, responses: Sequence[str], judge: Callable[[list[str]], list[str]],
                     rubric: str) -> PairwiseResult:
    """Each response's win rate over both-order pairwise judgements of all its distinct pairs."""
    k = len(responses)
    pairs, prompts = [], []
    res = PairwiseResult([None] * k)
    for i in range(k):
        for j in range(i + 1, k):
            if responses[i].strip() == responses[j].strip():
                res.identical_pairs += 1
                res.reasons["identical responses: not judged"] += 1
                continue
            pairs.append((i, j))
            prompts += [judge_prompt(prompt, responses[i], responses[j], rubric),
                        judge_prompt(prompt, responses[j], responses[i], rubric)]
    answers = judge(prompts) if prompts else []
    if len(answers) != len(prompts):
        raise ValueError(f"judge returned {len(answers)} answers for {len(prompts)} prompts")
    wins, seen = [0] * k, [0] * k
    res.judged = len(prompts)
    for n, (i, j) in enumerate(pairs):
        ab, why_ab = parse_verdict(answers[2 * n])
        ba, why_ba = parse_verdict(answers[2 * n + 1])
        for v, why, first, second in ((ab, why_ab, i, j), (ba, why_ba, j, i)):
            res.reasons[why] += 1
            if v is None:
                continue
            res.parsed += 1
            seen[first] += 1
            seen[second] += 1
            wins[first if v == "A" else second] += 1
        if ab is not None and ba is not None:
            res.both_parsed += 1
            res.position_biased += ab == ba
    res.win_rates = [wins[i] / seen[i] if seen[i] else None for i in range(k)]
    return res


def agreement(pairs: Sequence[tuple[float, float, str | None, str | None]]) -> dict:
    """Judge vs verifier on pairs (reward of x, reward of y, verdict on (x, y), verdict on (y, x)):
    ties of the verifier are skipped; a pair the judge leaves undecided (orders disagree, or
    unparsable) counts as a disagreement."""
    agree = undecided = ties = 0
    for rx, ry, ab, ba in pairs:
        if rx == ry:
            ties += 1
            continue
        p = preference(ab, ba)
        if p is None:
            undecided += 1
        elif (p > 0) == (rx > ry):
            agree += 1
    n = len(pairs) - ties
    return {"pairs": n, "agree": agree, "undecided": undecided, "ties_skipped": ties,
            "agreement": agree / n if n else None}


def open_reward_gate(agreement_rate: float | None, floor: float = 0.6) -> tuple[bool, str]:
    """Whether the critic's open-prompt reward may be used (its held-out agreement reaches `floor`)."""
    if agreement_rate is None:
        return False, "no held-out verifiable pair to measure the critic's agreement on"
    if agreement_rate < floor:
        return False, f"critic agreement {agreement_rate:.2f} on held-out verifiable pairs is below the floor {floor:.2f}"
    return True, f"critic agreement {agreement_rate:.2f} ≥ floor {floor:.2f}"


# ---------------------------------------------------------------------------- the critique environment
class CritiqueEnv(Environment):
    """Prompts: a pair of the policy's own responses to a verifiable prompt whose verifier rewards
    differ, in a seeded order; reward 1 when the verdict names the one the verifier prefers. Fed by
    the RL loop (`add`) with each iteration's scored rollouts; pairs of held-out prompts go to
    `heldout`. (Not in the gym's registry until the rl stage feeds it.)"""

    name = "critique"
    max_tokens = 96

    def __init__(self, rubric: str | None = None, max_pool: int = 4096):
        self.rubric = rubric if rubric is not None else load_rubrics().text()
        self.max_pool = max_pool
        self.pool: list[tuple[str, str, str, float, float]] = []
        self.held: list[tuple[str, str, str, float, float]] = []
        self.skipped: Counter = Counter()

    def add(self, prompt: str, responses: Sequence[str], rewards: Sequence[float], heldout: bool = False) -> int:
        """Every pair of `responses` (scored `rewards` by a verifier) that a judge can be graded on;
        returns how many were added."""
        dest, added = (self.held if heldout else self.pool), 0
        for i in range(len(responses)):
            for j in range(i + 1, len(responses)):
                if rewards[i] == rewards[j]:
                    self.skipped["verifier tie"] += 1
                elif responses[i].strip() == responses[j].strip():
                    self.skipped["identical responses"] += 1
                else:
                    dest.append((prompt, responses[i], responses[j], float(rewards[i]), float(rewards[j])))
                    added += 1
        del dest[:-self.max_pool]
        return added

    def _problems(self, pool, seed: int, n: int, tag: str) -> list[Problem]:
        rng = random.Random(f"critique/{tag}/{seed}")
        out = []
        for idx in rng.sample(range(len(pool)), min(n, len(pool))):
            prompt, x, y, rx, ry = pool[idx]
            swap = rng.random() < 0.5
            a, b, ra, rb = (y, x, ry, rx) if swap else (x, y, rx, ry)
            out.append(Problem(self.name, f"critique-{tag}-{seed}-{idx}", judge_prompt(prompt, a, b, self.rubric),
                               "A" if ra > rb else "B", meta={"rewards": (ra, rb)}))
        return out

    def generate(self, seed: int, n: int, difficulty: int = 1) -> list[Problem]:
        return self._problems(self.pool, seed, n, "train")

    def heldout(self, seed: int, n: int, difficulty: int = 1) -> list[Problem]:
        return self._problems(self.held, seed, n, "heldout")

    def score(self, problems: list[Problem], responses: list[str]) -> list[Verdict]:
        out = []
        for p, r in zip(problems, responses):
            v, why = parse_verdict(r)
            if v is None:
                out.append(Verdict(0.0, why))
            else:
                out.append(Verdict(float(v == p.answer), "agrees with the verifier" if v == p.answer
                                   else "disagrees with the verifier"))
        return out
