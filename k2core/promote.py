"""Promotion: which model the nightly run serves, decided by a gate on the `evaluate` scores.

The promoted model is a pointer in the store (``promoted/current.json``: the model's stage and
version, the evaluate artifact that scored it, its headline scores and the evaluate settings they
were measured under); every decision, promoted or blocked, is kept (``promoted/decisions/``).

The gate, for the candidate (``promote.model`` of the run's evaluate, by default ``rl``):
- minimum absolute scores (``promote.min_scores``, keyed ``<suite>_<metric>`` as in
  ``k2 show evaluate``: e.g. ``humaneval_pass_at_1: 0.1``);
- no regression against the promoted model on each suite's headline metric beyond
  ``promote.max_regression`` (per suite; ``promote.default_max_regression`` otherwise). Scores
  measured under other evaluate settings (other suites, limits, sampling) are not comparable: the
  gate then blocks and says so (promote by hand with ``k2 promote VERSION``).
A first promotion (no model promoted yet) needs only the minimum scores.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from k2core.errors import K2Error
from k2core.eval.suites import headline_keys

POINTER = "promoted/current.json"
DECISIONS = "promoted/decisions"
@dataclass
class Check:
    metric: str
    candidate: float | None
    incumbent: float | None = None
    delta: float | None = None
    rule: str = ""
    ok: bool = True


@dataclass
class Decision:
    promoted: bool
    candidate: dict[str, Any]
    incumbent: dict[str, Any] | None
    checks: list[Check] = field(default_factory=list)
    reason: str = ""
    decided_at: str = ""
    run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        head = "**promoted**" if self.promoted else "**blocked**"
        inc = f"`{self.incumbent['stage']}/{self.incumbent['version']}`" if self.incumbent else "none"
        lines = [f"# Promotion: {head}", "", f"candidate `{self.candidate['stage']}/{self.candidate['version']}`, "
                 f"promoted until now {inc}", "", self.reason, "",
                 "| metric | candidate | promoted | delta | rule | ok |", "|---|---|---|---|---|---|"]
        for c in self.checks:
            lines.append(f"| {c.metric} | {_f(c.candidate)} | {_f(c.incumbent)} | {_f(c.delta, True)} | {c.rule} | "
                         f"{'yes' if c.ok else '**no**'} |")
        return "\n".join(lines) + "\n"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _stamp(iso: str) -> str:
    """A decision file's name part: the ISO time without separators (sorts by time)."""
    return iso.replace(":", "").replace("-", "")


def _f(v, signed=False) -> str:
    return "" if v is None else (f"{v:+.4f}" if signed else f"{v:.4f}")


def settings_hash(evaluate_cfg: dict[str, Any]) -> str:
    """What makes two evaluations comparable: the suites and their settings (not which models)."""
    d = {k: v for k, v in evaluate_cfg.items() if k not in ("models", "device")}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def current(store) -> dict[str, Any] | None:
    return store.get_json(POINTER) if store.exists(POINTER) else None


def scores_of(metrics: dict[str, Any], model: str) -> dict[str, float]:
    """A model's `<suite>_<metric>` scores from an evaluate artifact's metrics."""
    out = {}
    for k, v in metrics.items():
        if k.startswith(f"{model}_") and k != f"{model}_version" and isinstance(v, (int, float)):
            out[k[len(model) + 1:]] = float(v)
    return out


def decide(store, evaluate_art, cfg, run_id: str | None = None) -> Decision:
    """The gate's decision for the candidate in `evaluate_art` against the promoted model."""
    m = evaluate_art.manifest.get("metrics", {})
    model = cfg.model
    if f"{model}_version" not in m:
        raise K2Error(f"promote.model = {model!r}: the evaluate artifact {evaluate_art.version} did not "
                      f"evaluate it (evaluate.models); evaluated: "
                      f"{sorted(k[:-8] for k in m if k.endswith('_version'))}")
    ev_cfg = evaluate_art.manifest.get("config", {})
    cand_scores = scores_of(m, model)
    candidate = {"stage": model, "version": m[f"{model}_version"], "evaluate": evaluate_art.version,
                 "scores": cand_scores, "settings": settings_hash(ev_cfg)}
    inc = current(store)
    if inc is not None and inc.get("version") == candidate["version"]:
        return Decision(True, candidate, {k: inc.get(k) for k in ("stage", "version", "evaluate", "scores")}, [],
                        "already the promoted model: nothing to change",
                        _now(), run_id)
    checks: list[Check] = []
    for key, low in sorted(cfg.min_scores.items()):
        got = cand_scores.get(key)
        checks.append(Check(key, got, rule=f">= {low}", ok=got is not None and got >= low))
    reasons = []
    if inc is not None and inc.get("settings") != candidate["settings"]:
        reasons.append(f"the promoted model {inc['stage']}/{inc['version']} was scored under other evaluate "
                       "settings: not comparable (promote by hand: k2 promote VERSION)")
    elif inc is not None:
        for suite, key in headline_keys().items():
            if key not in cand_scores or key not in inc["scores"]:
                continue
            tol = cfg.max_regression.get(suite, cfg.default_max_regression)
            delta = cand_scores[key] - inc["scores"][key]
            checks.append(Check(key, cand_scores[key], inc["scores"][key], round(delta, 6),
                                f"delta >= -{tol}", delta >= -tol - 1e-12))
    failed = [c for c in checks if not c.ok]
    for c in failed:
        if c.incumbent is not None:
            reasons.append(f"{c.metric.split('_')[0]} regressed: {c.metric} {c.candidate:.4f} vs {c.incumbent:.4f} "
                           f"promoted ({c.delta:+.4f}, allowed -{cfg.max_regression.get(c.metric.split('_')[0], cfg.default_max_regression)})")
        else:
            reasons.append(f"{c.metric} = {_f(c.candidate) or 'missing'} is below the minimum ({c.rule})")
    promoted = not reasons
    if promoted:
        mins = f"{len(cfg.min_scores)} minimum score(s) held" if cfg.min_scores else "no minimum scores set"
        reason = f"first promotion ({mins})" if inc is None else \
            f"no suite regressed ({len(checks)} checks passed)"
    else:
        reason = "blocked: " + "; ".join(reasons)
    return Decision(promoted, candidate, inc and {k: inc[k] for k in ("stage", "version", "evaluate", "scores")},
                    checks, reason, _now(), run_id)


def record(store, decision: Decision) -> None:
    """Keep the decision; move the pointer when it promotes."""
    stamp = _stamp(decision.decided_at)
    store.put_json(f"{DECISIONS}/{stamp}-{decision.candidate['version']}.json", decision.to_dict())
    if decision.promoted and (decision.incumbent or {}).get("version") != decision.candidate["version"]:
        store.put_json(POINTER, {**decision.candidate, "promoted_at": decision.decided_at, "run_id": decision.run_id,
                                 "manual": False})


def promote_by_hand(store, stage: str, version: str, evaluate_art=None) -> dict[str, Any]:
    """`k2 promote VERSION`: point at a model artifact without the gate (recorded as manual)."""
    if not store.has_artifact(stage, version):
        raise K2Error(f"no {stage} artifact {version} in {store.uri}")
    scores, settings, ev = {}, None, None
    if evaluate_art is not None:
        m = evaluate_art.manifest.get("metrics", {})
        model = next((x for x in ("rl", "sft", "pretrain") if m.get(f"{x}_version") == version), None)
        if model:
            scores, settings, ev = scores_of(m, model), settings_hash(evaluate_art.manifest.get("config", {})), \
                evaluate_art.version
    now = _now()
    ptr = {"stage": stage, "version": version, "evaluate": ev, "scores": scores, "settings": settings,
           "promoted_at": now, "run_id": None, "manual": True}
    store.put_json(POINTER, ptr)
    store.put_json(f"{DECISIONS}/{_stamp(now)}-{version}.json",
                   {"promoted": True, "manual": True, "candidate": ptr, "reason": "promoted by hand"})
    return ptr
