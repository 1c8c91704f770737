"""Comparisons across model versions: each model's scores as its newest evaluation measured them
(scores.parquet of the evaluate artifact that scored it), side by side with the difference and
whether the 95% intervals overlap."""
from __future__ import annotations

from typing import Any

from k2core.errors import K2Error

MODEL_STAGES = ("pretrain", "sft", "rl")


def evaluation_of(store, stage: str, version: str):
    """The newest evaluate artifact that scored model `stage/version`, and the model's name in it."""
    best = None
    for _, v in store.artifacts("evaluate"):
        art = store.artifact("evaluate", v)
        m = art.manifest.get("metrics", {})
        for name in MODEL_STAGES:
            if name == stage and m.get(f"{name}_version") == version:
                if best is None or art.manifest.get("created_at", "") > best[0].manifest.get("created_at", ""):
                    best = (art, name)
    if best is None:
        raise K2Error(f"{stage}/{version} was never evaluated in this store (run the evaluate stage: "
                      "k2 run --stages evaluate)")
    return best


def scores(store, stage: str, version: str) -> tuple[Any, list[dict[str, Any]]]:
    import pandas as pd

    art, name = evaluation_of(store, stage, version)
    df = pd.read_parquet(art.path("scores.parquet"))
    return art, df[df.model == name].to_dict("records")


def compare(store, a: tuple[str, str], b: tuple[str, str]) -> dict[str, Any]:
    """Rows (suite, metric, a, b, delta, each interval, overlap) for the metrics both have."""
    from k2core.promote import settings_hash

    art_a, ra = scores(store, *a)
    art_b, rb = scores(store, *b)
    ib = {(r["suite"], r["metric"]): r for r in rb}
    rows = []
    for r in ra:
        o = ib.get((r["suite"], r["metric"]))
        if o is None:
            continue
        overlap = None
        if r["ci_low"] is not None and o["ci_low"] is not None:
            overlap = not (r["ci_high"] < o["ci_low"] or o["ci_high"] < r["ci_low"])
        rows.append({"suite": r["suite"], "metric": r["metric"], "a": r["value"], "b": o["value"],
                     "delta": round(o["value"] - r["value"], 6), "a_ci": [r["ci_low"], r["ci_high"]],
                     "b_ci": [o["ci_low"], o["ci_high"]], "n": [r["n"], o["n"]],
                     "intervals_overlap": overlap})
    same = settings_hash(art_a.manifest.get("config", {})) == settings_hash(art_b.manifest.get("config", {}))
    return {"a": f"{a[0]}/{a[1]}", "b": f"{b[0]}/{b[1]}", "evaluate_a": art_a.version, "evaluate_b": art_b.version,
            "same_settings": same, "rows": rows}


def plot(result: dict[str, Any], out) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(rows) + 2), 4), dpi=110)
    x = np.arange(len(rows))
    for off, side in ((-0.2, "a"), (0.2, "b")):
        ys = [r[side] for r in rows]
        err = [[y - (r[f"{side}_ci"][0] if r[f"{side}_ci"][0] is not None else y) for y, r in zip(ys, rows)],
               [(r[f"{side}_ci"][1] if r[f"{side}_ci"][1] is not None else y) - y for y, r in zip(ys, rows)]]
        ax.bar(x + off, ys, 0.4, yerr=err, capsize=2, label=result[side])
    ax.set_xticks(x, [f"{r['suite']}\n{r['metric']}" for r in rows], fontsize=7, rotation=30, ha="right")
    ax.set(ylim=(0, 1.05), ylabel="score", title="k2 compare (95% Wilson intervals)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
