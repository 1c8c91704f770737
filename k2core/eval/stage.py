"""The `evaluate` stage: the run's models (``evaluate.models``: pretrain, sft, rl) on the benchmark
suites (``evaluate.suites``), each read in its native format and scored by its own rules — the
registry is k2core/eval/suites.py (humaneval, livecodebench, bfcl, agentic, math, mcq, gym).

Output: ``scores.parquet`` (model, version, suite, metric, value, n, ci_low, ci_high — a 95% Wilson
interval), ``results/<model>-<suite>.jsonl`` (every scored item with its reason), ``report.json``,
``evaluate.png``; metrics ``<model>_<suite>_<metric>`` for comparisons and the promotion gate.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from k2core.eval.suites import metric_key
from k2core.stage import StageContext

def _rows(model: str, version: str, suite: str, score: dict) -> list[dict[str, Any]]:
    from k2core.eval.metrics import wilson
    from k2core.eval.suites import SUITES

    rows = []
    for metric, (v, n) in SUITES[suite].values(score).items():
        if v is None:
            continue
        ci = wilson(v * n, n) or (None, None)
        rows.append({"model": model, "version": version, "suite": suite, "metric": metric, "value": float(v),
                     "n": n, "ci_low": ci[0], "ci_high": ci[1]})
    return rows


def run(ctx: StageContext) -> dict[str, Any]:
    import pandas as pd
    import torch

    from k2core.eval.suites import SUITES
    from k2core.infer.llm import NativeLLM
    from k2core.models import model_dir

    cfg = ctx.cfg
    wd = ctx.workdir
    (wd / "results").mkdir()
    t0 = time.monotonic()
    items, bad_rows = {}, {}
    for suite in cfg.suites:
        items[suite], bad = SUITES[suite].load(cfg, ctx.inputs)
        bad_rows[suite] = bad
        if bad:
            ctx.log(f"evaluate: {suite}: {len(bad)} row(s) skipped, e.g. {bad[0]}")
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
                    score, results = SUITES[suite].run(llm, cfg, items[suite])
                    score["seconds"] = round(time.monotonic() - s0, 2)
                    (wd / "results" / f"{name}-{suite}.jsonl").write_text(
                        "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in results))
                    report["models"][name]["suites"][suite] = score
                    rows += _rows(name, art.version, suite, score)
                    head = SUITES[suite].headline
                    v = SUITES[suite].values(score).get(head, (None, 0))[0]
                    ctx.log(f"evaluate: {name}/{art.version[:8]} {suite}: {head} "
                            f"{'n/a' if v is None else v} ({score['seconds']} s)")
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

    from k2core.eval.suites import SUITES

    head = df[[s in SUITES and SUITES[s].headline == m for s, m in zip(df.suite, df.metric)]]
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
    ax.set_xticks(x, [f"{s}\n{SUITES[s].headline}" for s in suites])
    ax.set(ylim=(0, 1.05), ylabel="score", title="Evaluation: the run's models (95% Wilson intervals)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def gate_frame(workdir: Path, columns: list[str]):
    import pandas as pd

    return pd.read_parquet(workdir / "scores.parquet", columns=columns)

