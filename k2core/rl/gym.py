"""The verifiable-rewards gym: environments = a seeded problem generator with difficulty levels + a
verifier, registered by name, one interface for all (K2 §3.2.2; K1.5).

    env = make("math")                         # a ConfigError names the registered ones
    problems = env.generate(seed=0, n=8, difficulty=2)
    verdicts = env.score(problems, responses)  # one Verdict(reward in [0, 1], reason) per response

Every problem is constructed with its answer computed (arithmetic, algebra, word problems),
drawn from reasoning-gym's generators, built from code-checked constraints, or tested code —
ground truth, never a model's opinion. A verifier never raises into the caller: a malformed answer,
a verifier that raises or runs over time, a sandbox timeout, each becomes reward 0 with a reason
(counted by the RL stage's telemetry).

Answers: the final answer goes in ``<answer>…</answer>`` (math also takes the last ``\\boxed{}``);
code in a ```python block.
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import operator
import random
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable, ClassVar

from k2core.errors import ConfigError


@dataclass
class Problem:
    env: str
    id: str
    prompt: str                       # the user turn
    answer: Any                       # what the verifier checks against (never shown to the policy)
    difficulty: int = 1
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Verdict:
    reward: float
    reason: str                       # "correct", "wrong", "partial", "unparsable", "verifier_error: …", …


class Environment:
    """One task family. Subclasses set ``name`` and implement ``generate`` and ``score``."""

    name: ClassVar[str] = ""
    max_tokens: ClassVar[int] = 64          # the default budget of a response (budget control)

    def generate(self, seed: int, n: int, difficulty: int = 1) -> list[Problem]:
        raise NotImplementedError

    def score(self, problems: list[Problem], responses: list[str]) -> list[Verdict]:
        raise NotImplementedError


REGISTRY: dict[str, type[Environment]] = {}


def register(cls: type[Environment]) -> type[Environment]:
    REGISTRY[cls.name] = cls
    return cls


def make(name: str, **options: Any) -> Environment:
    if name not in REGISTRY:
        raise ConfigError(f"gym: no environment {name!r}; available: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name](**options)


def extract_answer(text: str) -> str | None:
    """The last ``<answer>…</answer>`` of `text`, stripped; None when there is none."""
    found = re.findall(r"<answer>(.*?)</answer>", text or "", flags=re.S)
    return found[-1].strip() if found else None


ANSWER_FORMAT = "Put only the final answer between <answer> and </answer>."


# ---------------------------------------------------------------------------- math
def _math_verify(gold: str, pred: str) -> bool:
    """math-verify's check, in a worker process's main thread (its SIGALRM timeouts work there)."""
    from math_verify import parse, verify

    return bool(verify(parse(f"${gold}$"), parse(pred)))


_POOL: cf.ProcessPoolExecutor | None = None


def _pool() -> cf.ProcessPoolExecutor:
    global _POOL
    if _POOL is None:
        import multiprocessing as mp

        _POOL = cf.ProcessPoolExecutor(max_workers=2, mp_context=mp.get_context("spawn"))
    return _POOL


def verify_in_pool(pairs: list[tuple[str, str]], timeout_s: float = 10.0,
                   check: Callable[[str, str], bool] = _math_verify) -> list[tuple[bool | None, str]]:
    """(verdict, reason) per (gold, prediction): math-verify (or `check`, a module-level function)
    in a process pool, bounded in time — it uses SIGALRM, which fails off the main thread (Prefect
    runs tasks in threads)."""
    futures = [_pool().submit(check, g, p) for g, p in pairs]
    out: list[tuple[bool | None, str]] = []
    for f in futures:
        try:
            out.append((f.result(timeout=timeout_s), ""))
        except cf.TimeoutError:
            f.cancel()
            out.append((None, f"verifier_timeout: over {timeout_s:g} s"))
        except Exception as e:             # noqa: BLE001 — a verifier failure is a verdict, not a crash
            out.append((None, f"verifier_error: {type(e).__name__}: {e}"[:200]))
    return out


_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def _fmt(q: Fraction) -> str:
    return str(q.numerator) if q.denominator == 1 else f"\\frac{{{q.numerator}}}{{{q.denominator}}}"


@register
class MathEnv(Environment):
    """Generated arithmetic (level 1), algebra (level 2: linear equations, fractions), word problems
    (level 3); the answer computed exactly (fractions), checked with math-verify."""

    name = "math"
    max_tokens = 48
    NAMES = ["Mia", "Omar", "Lena", "Ravi", "Ada", "Kofi"]

    def __init__(self, timeout_s: float = 10.0):
        self.timeout_s = timeout_s

    def _one(self, rng: random.Random, level: int) -> tuple[str, Fraction]:
        if level <= 1:
            a, b = rng.randint(2, 99), rng.randint(2, 99)
            op = rng.choice("+-*")
            return f"What is {a} {op} {b}?", Fraction(_OPS[op](a, b))
        if level == 2:
            if rng.random() < 0.5:
                x, a, b = rng.randint(-12, 12), rng.randint(2, 9), rng.randint(-30, 30)
                return f"Solve for x: {a}x {'+' if b >= 0 else '-'} {abs(b)} = {a * x + b}.", Fraction(x)
            p, q, r, s = rng.randint(1, 9), rng.randint(2, 9), rng.randint(1, 9), rng.randint(2, 9)
            return f"Compute {p}/{q} + {r}/{s} as a fraction in lowest terms.", Fraction(p, q) + Fraction(r, s)
        who = rng.choice(self.NAMES)
        price, n = rng.randint(2, 15), rng.randint(2, 9)
        paid = (price * n // 10 + 1 + rng.randint(0, 3)) * 10
        if rng.random() < 0.5:
            return (f"{who} buys {n} notebooks at ${price} each and pays with ${paid}. How many dollars of change "
                    f"does {who} get?"), Fraction(paid - price * n)
        speed, hours = rng.randint(20, 90), rng.randint(2, 6)
        return f"A train runs at {speed} km per hour for {hours} hours. How many km does it cover?", Fraction(speed * hours)

    def generate(self, seed: int, n: int, difficulty: int = 1) -> list[Problem]:
        rng = random.Random(f"math/{seed}/{difficulty}")
        out = []
        for i in range(n):
            q, ans = self._one(rng, difficulty)
            out.append(Problem(self.name, f"math-{difficulty}-{seed}-{i}", f"{q} {ANSWER_FORMAT}", _fmt(ans), difficulty))
        return out

    def score(self, problems: list[Problem], responses: list[str]) -> list[Verdict]:
        preds: list[str | None] = []
        for r in responses:
            a = extract_answer(r)
            if a is None:
                boxed = re.findall(r"\\boxed\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}", r or "")
                a = boxed[-1] if boxed else None
            preds.append(a)
        checked = iter(verify_in_pool([(p.answer, f"${a}$") for p, a in zip(problems, preds) if a], self.timeout_s))
        out = []
        for a in preds:
            if not a:
                out.append(Verdict(0.0, "unparsable: no <answer> or \\boxed{}"))
                continue
            ok, why = next(checked)
            out.append(Verdict(float(bool(ok)), why or ("correct" if ok else "wrong")))
        return out


# ---------------------------------------------------------------------------- logic (reasoning-gym)
SHORT_ANSWER_TASKS = ["chain_sum", "basic_arithmetic", "products", "gcd", "count_bits", "base_conversion",
                      "letter_counting", "spell_backward", "number_sorting", "simple_equations", "countdown"]
# scores a constant answer as correct (POSTTRAIN_REFERENCE.md §7): a reward any policy can farm
REFUSED_TASKS = {"coin_flip": "scores the constant answer '0' as correct on small probabilities"}


@register
class LogicEnv(Environment):
    """reasoning-gym's generators and its own ``score_answer`` (partial credit where it gives it)."""

    name = "logic"
    max_tokens = 48

    def __init__(self, tasks: list[str] | None = None, options: dict[str, dict[str, Any]] | None = None):
        import reasoning_gym

        self.tasks = list(tasks or SHORT_ANSWER_TASKS)
        known = set(reasoning_gym.factory.DATASETS)
        for t in self.tasks:
            if t in REFUSED_TASKS:
                raise ConfigError(f"gym logic: task {t!r} is refused: {REFUSED_TASKS[t]}")
            if t not in known:
                raise ConfigError(f"gym logic: reasoning-gym has no task {t!r} (e.g. {', '.join(SHORT_ANSWER_TASKS)})")
        self.options = options or {}

    def generate(self, seed: int, n: int, difficulty: int = 1) -> list[Problem]:
        import reasoning_gym

        per = {t: 0 for t in self.tasks}
        for i in range(n):
            per[self.tasks[i % len(self.tasks)]] += 1
        out = []
        for t, k in per.items():
            if not k:
                continue
            ds = reasoning_gym.create_dataset(t, seed=seed * 7919 + difficulty, size=k, **self.options.get(t, {}))
            for j in range(k):
                e = ds[j]
                out.append(Problem(self.name, f"logic-{t}-{seed}-{j}", f"{e['question']}\n{ANSWER_FORMAT}", e["answer"],
                                   difficulty, {"task": t, "entry": e}))
        return out

    def score(self, problems: list[Problem], responses: list[str]) -> list[Verdict]:
        import reasoning_gym

        out = []
        for p, r in zip(problems, responses):
            a = extract_answer(r)
            if a is None:
                out.append(Verdict(0.0, "unparsable: no <answer>"))
                continue
            try:
                s = float(reasoning_gym.get_score_answer_fn(p.meta["task"])(a, p.meta["entry"]))
            except Exception as e:          # noqa: BLE001
                out.append(Verdict(0.0, f"verifier_error: {type(e).__name__}: {e}"[:200]))
                continue
            out.append(Verdict(s, "correct" if s >= 1.0 else "partial" if s > 0 else "wrong"))
        return out


# ---------------------------------------------------------------------------- instruction following
_TOPICS = ["the sea", "a city at night", "autumn", "a library", "trains", "coffee", "mountains", "a market"]
_KEYWORDS = ["river", "lamp", "quiet", "stone", "green", "window", "bread", "wind", "clock", "bridge"]


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z0-9']+", text)


def _sentences(text: str) -> int:
    return len([s for s in re.split(r"[.!?]+", text) if s.strip()])


CONSTRAINTS: dict[str, tuple[Callable[[random.Random], dict], Callable[[dict], str], Callable[[str, dict], bool]]] = {
    "max_words": (lambda r: {"n": r.choice([5, 8, 12])}, lambda a: f"use at most {a['n']} words",
                  lambda t, a: 0 < len(_words(t)) <= a["n"]),
    "min_words": (lambda r: {"n": r.choice([3, 5, 8])}, lambda a: f"use at least {a['n']} words",
                  lambda t, a: len(_words(t)) >= a["n"]),
    "keyword": (lambda r: {"w": r.choice(_KEYWORDS)}, lambda a: f"include the word \"{a['w']}\"",
                lambda t, a: a["w"] in (w.lower() for w in _words(t))),
    "forbidden": (lambda r: {"w": r.choice(["the", "and", "is"])}, lambda a: f"do not use the word \"{a['w']}\"",
                  lambda t, a: bool(_words(t)) and a["w"] not in (w.lower() for w in _words(t))),
    "lowercase": (lambda r: {}, lambda a: "write only lowercase letters",
                  lambda t, a: bool(t.strip()) and t == t.lower()),
    "uppercase": (lambda r: {}, lambda a: "write only capital letters",
                  lambda t, a: bool(re.search("[A-Za-z]", t)) and t == t.upper()),
    "sentences": (lambda r: {"n": r.choice([1, 2, 3])}, lambda a: f"write exactly {a['n']} sentence(s)",
                  lambda t, a: _sentences(t) == a["n"]),
    "json": (lambda r: {"key": r.choice(["title", "text", "answer"])},
             lambda a: f"answer with a JSON object whose key \"{a['key']}\" holds a string",
             lambda t, a: _json_key(t, a["key"])),
    "bullets": (lambda r: {"n": r.choice([2, 3])}, lambda a: f"answer as a list of exactly {a['n']} lines starting with \"- \"",
                lambda t, a: len([ln for ln in t.strip().splitlines() if ln.startswith("- ")]) == a["n"]
                and all(ln.startswith("- ") for ln in t.strip().splitlines())),
}
_CLASH = [{"lowercase", "uppercase"}, {"json", "bullets"}, {"max_words", "min_words"}]


def _json_key(text: str, key: str) -> bool:
    try:
        obj = json.loads(text.strip())
    except ValueError:
        return False
    return isinstance(obj, dict) and isinstance(obj.get(key), str)


@register
class InstructionEnv(Environment):
    """A writing request with several code-checked constraints; reward = the fraction satisfied."""

    name = "instructions"
    max_tokens = 64

    def generate(self, seed: int, n: int, difficulty: int = 1) -> list[Problem]:
        rng = random.Random(f"instructions/{seed}/{difficulty}")
        out = []
        for i in range(n):
            chosen: list[str] = []
            while len(chosen) < min(difficulty + 1, 4):
                c = rng.choice(sorted(CONSTRAINTS))
                if c not in chosen and not any({c, o} <= clash for o in chosen for clash in _CLASH):
                    chosen.append(c)
            checks = [{"kind": c, "args": CONSTRAINTS[c][0](rng)} for c in chosen]
            rules = "; ".join(CONSTRAINTS[c["kind"]][1](c["args"]) for c in checks)
            out.append(Problem(self.name, f"instructions-{difficulty}-{seed}-{i}",
                               f"Write about {rng.choice(_TOPICS)}. Rules: {rules}.", checks, difficulty))
        return out

    def score(self, problems: list[Problem], responses: list[str]) -> list[Verdict]:
        out = []
        for p, r in zip(problems, responses):
            text = (r or "").strip()
            if not text:
                out.append(Verdict(0.0, "unparsable: empty response"))
                continue
            failed = [c["kind"] for c in p.answer if not CONSTRAINTS[c["kind"]][2](text, c["args"])]
            s = 1 - len(failed) / len(p.answer)
            out.append(Verdict(s, "correct" if not failed else f"failed: {', '.join(failed)}"))
        return out


# ---------------------------------------------------------------------------- coding
@register
class CodingEnv(Environment):
    """A function to write (k2's coding problems: a reference implementation computes the tests'
    answers); the response's last ```python block runs against the tests in k2's sandbox; reward =
    the fraction of tests passed."""

    name = "coding"
    max_tokens = 160

    def __init__(self, tests: int = 5, timeout_s: float = 5.0, workers: int = 2):
        self.tests, self.timeout_s, self.workers = tests, timeout_s, workers

    def generate(self, seed: int, n: int, difficulty: int = 1) -> list[Problem]:
        from k2core.agentic import coding

        rng = random.Random(f"coding/{seed}/{difficulty}")
        out = []
        for i in range(n):
            name, signature, statement, _ = coding.PROBLEMS[rng.randrange(len(coding.PROBLEMS))]
            tests = coding.computed_tests(name, rng, self.tests)
            out.append(Problem(self.name, f"coding-{seed}-{i}", f"Write a Python function `{signature}` that {statement}. "
                               "Answer with the function in a ```python code block.", tests, difficulty,
                               {"function": name}))
        return out

    def score(self, problems: list[Problem], responses: list[str]) -> list[Verdict]:
        from k2core.sandbox import Limits, run_function_tests

        def one(p: Problem, r: str) -> Verdict:
            blocks = re.findall(r"```(?:python|py)?\n(.*?)```", r or "", flags=re.S)
            if not blocks:
                return Verdict(0.0, "unparsable: no ```python block")
            try:
                res = run_function_tests(blocks[-1], p.meta["function"], p.answer, Limits(timeout_s=self.timeout_s))
            except Exception as e:          # noqa: BLE001
                return Verdict(0.0, f"verifier_error: {type(e).__name__}: {e}"[:200])
            if res.run is not None and res.run.stopped_by:
                return Verdict(res.passed / res.total, f"sandbox_{res.run.stopped_by}")
            s = res.passed / res.total
            return Verdict(s, "correct" if s == 1 else "partial" if s > 0 else "wrong")

        with cf.ThreadPoolExecutor(self.workers) as ex:       # each run is its own sandboxed process
            return list(ex.map(one, problems, responses))


# ---------------------------------------------------------------------------- tool use (multi-turn)
@register
class ToolUseEnv(Environment):
    """Multi-turn tasks of synthesize's executable domains (τ²-shaped): the policy is the agent in
    the one rollout loop (k2core/agentic/rollout.py), the user is the blueprint renderer, and the
    reward is τ²'s verdict on the episode (the database state hash after the agent's calls, and
    what it had to say) — 1 or 0. Training prompts come from the train split, held-out ones from
    the held-out split. ``episodic``: the rl stage rolls these out as conversations and trains on
    every assistant-written token of them (:meth:`rollout`)."""

    name = "tools"
    max_tokens = 96                     # per agent turn
    episodic = True

    def __init__(self, synthesize=None, max_turns: int = 4):
        if synthesize is None:
            raise ConfigError("gym tools: needs the run's synthesize artifact (the rl stage passes it)")
        from k2core.eval.agentic import heldout_tasks

        split = json.loads(open(synthesize.path("tasks/split_tasks.json")).read())
        self.max_turns = max_turns
        self.train, self.worlds = heldout_tasks(synthesize, set(split.get("train", [])))
        self.held, _ = heldout_tasks(synthesize, set(split.get("test", [])))
        if not self.train:
            raise ConfigError("gym tools: the synthesize artifact has no train-split task of an executable domain")

    def _pick(self, pool: list, seed: int, n: int, difficulty: int) -> list[Problem]:
        rng = random.Random(f"tools/{seed}/{difficulty}")
        picks = [pool[rng.randrange(len(pool))] for _ in range(n)] if pool else []
        return [Problem(self.name, f"tools-{seed}-{i}", f"{d}:{t['id']}", t, difficulty, {"domain": d})
                for i, (d, t) in enumerate(picks)]

    def generate(self, seed: int, n: int, difficulty: int = 1) -> list[Problem]:
        return self._pick(self.train, seed, n, difficulty)

    def heldout(self, seed: int, n: int, difficulty: int = 1) -> list[Problem]:
        return self._pick(self.held, seed, n, difficulty)

    def score(self, problems: list[Problem], responses: list[str]) -> list[Verdict]:
        raise ConfigError("gym tools: episodes are scored as they end (rollout), not from one response")

    def rollout(self, llm, problems: list[Problem], k: int, params) -> list[dict[str, Any]]:
        """`k` episodes per problem, advanced together; each: messages, tools, the verdict, whether
        it was cut (the turn limit, the context), and the agent's turns."""
        from k2core.agentic import blueprint as B
        from k2core.agentic.domains import DOMAINS
        from k2core.agentic.rollout import DomainEnv, Episode, run_episodes
        from k2core.agentic.tasks import grade

        jobs = [p for p in problems for _ in range(k)]
        eps = [Episode(p.answer, DomainEnv(DOMAINS[p.meta["domain"]], self.worlds[p.meta["domain"]]),
                       DOMAINS[p.meta["domain"]].toolkit.openai_tools(),
                       [{"role": "system", "content": B.agent_system_prompt(DOMAINS[p.meta["domain"]])}],
                       seed=(params.seed or 0) + i) for i, p in enumerate(jobs)]
        if eps:
            run_episodes(eps, llm, params, max_turns=self.max_turns)
        out = []
        for p, e in zip(jobs, eps):
            d = p.meta["domain"]
            try:
                g = grade(DOMAINS[d], self.worlds[d], p.answer, e.messages, e.termination)
                v = Verdict(float(g.success), "correct" if g.success else
                            f"wrong: {'; '.join(g.reasons)[:160] or e.termination}")
            except Exception as err:        # noqa: BLE001 — a grading failure is a verdict, not a crash
                v = Verdict(0.0, f"verifier_error: {type(err).__name__}: {err}"[:200])
            out.append({"messages": e.messages, "tools": e.tools, "verdict": v, "turns": e.turns,
                        "cut": e.termination in ("max_turns", "context_exceeded")})
        return out


# ---------------------------------------------------------------------------- prompt selection
def difficulty_filter(rewards: list[list[float]], solved: float = 1.0) -> list[bool]:
    """Keep a prompt when the policy solves it sometimes: its pass rate over the K responses (a
    response passes with reward ≥ `solved`) strictly between 0 and 1 (K1.5 / K2)."""
    keep = []
    for rs in rewards:
        rate = sum(r >= solved for r in rs) / len(rs) if rs else 0.0
        keep.append(0.0 < rate < 1.0)
    return keep
