"""Human-readable reports: stage summaries (markdown for the Prefect UI), tables for the CLI."""
from __future__ import annotations

import json
from typing import Any


def fmt_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={fmt_value(x)}" for k, x in v.items()) or "-"
    return str(v)


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain fixed-width text table."""
    cells = [[fmt_value(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])


def _md_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        out.append("| " + " | ".join(fmt_value(r.get(c, "")).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(out)


def stage_markdown(stage: str, version: str, status: str, manifest: dict[str, Any],
                   gate: dict[str, Any] | None, location: str, reason: str = "") -> str:
    lines = [f"# {stage} — {status}", "",
             f"- **version**: `{version}`", f"- **code**: `{manifest.get('code_version', '?')}`",
             f"- **location**: `{location}`"]
    if reason:
        lines.append(f"- **why**: {reason}")
    inputs = manifest.get("inputs", {})
    if inputs:
        lines += ["", "## Inputs"]
        for name, ref in inputs.items():
            lines.append(f"- {name}: `{json.dumps(ref, sort_keys=True)}`")
    metrics = manifest.get("metrics", {})
    if metrics:
        lines += ["", "## Metrics", _md_table([{"metric": k, "value": v} for k, v in metrics.items()],
                                              ["metric", "value"])]
    if gate:
        lines += ["", f"## Quality gate: {'passed' if gate.get('success') else '**FAILED**'}",
                  _md_table(gate.get("results", []), ["check", "column", "success", "observed", "expected"])]
    return "\n".join(lines) + "\n"


HEADLINE = ("docs", "rows", "rejected", "reject_fraction", "text_bytes", "loss", "accuracy")


def key_metrics(metrics: dict[str, Any], limit: int = 4) -> str:
    """A short 'docs=2000 rejected=3 …' line for tables: headline metrics first."""
    simple = [(k, v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    simple.sort(key=lambda kv: HEADLINE.index(kv[0]) if kv[0] in HEADLINE else len(HEADLINE))
    return " ".join(f"{k}={fmt_value(v)}" for k, v in simple[:limit])


def lineage_text(node: dict[str, Any], prefix: str = "", last: bool = True, root: bool = True) -> str:
    if "source" in node:
        src = node["source"]
        label = f"source: {src.get('uri')} ({src.get('files')} files, {src.get('bytes', 0) / 1e6:.1f} MB, " \
                f"digest {src.get('digest')})"
    else:
        label = f"{node['stage']}/{node['version']}" + \
            (" (missing from store)" if node.get("missing") else
             f"  created {node.get('created_at')}, code {node.get('code_version')}")
    branch = "" if root else ("└── " if last else "├── ")
    out = [prefix + branch + label]
    kids = node.get("inputs", [])
    child_prefix = prefix + ("" if root else ("    " if last else "│   "))
    for i, kid in enumerate(kids):
        out.append(lineage_text(kid, child_prefix, i == len(kids) - 1, root=False))
    return "\n".join(out)
