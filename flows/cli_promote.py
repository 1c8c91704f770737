"""`k2 models`, `k2 promote VERSION`, `k2 show promoted`: the model artifacts and the promoted one."""
from __future__ import annotations

import json


def cmd_models(args) -> int:
    from flows.common import store_from_args
    from k2core import promote
    from k2core.report import table

    store = store_from_args(args)
    cur = promote.current(store) or {}
    rows = []
    for stage in ("pretrain", "sft", "rl"):
        for _, version in store.artifacts(stage):
            m = store.artifact(stage, version).manifest
            rows.append({"model": f"{stage}/{version}", "created": m.get("created_at", ""), "run": m.get("run_id", ""),
                         "promoted": "<- promoted" if cur.get("version") == version else ""})
    rows.sort(key=lambda r: r["created"], reverse=True)
    if args.json:
        print(json.dumps({"models": rows, "promoted": cur or None}, indent=2))
        return 0
    print(table(rows, ["model", "created", "run", "promoted"]) if rows else "no model artifacts in the store")
    return 0


def show_promoted(store, as_json: bool) -> int:
    from k2core import promote
    from k2core.report import table

    cur = promote.current(store)
    keys = sorted(store.list(promote.DECISIONS + "/"))
    last = store.get_json(keys[-1]) if keys else None
    if as_json:
        print(json.dumps({"promoted": cur, "last_decision": last}, indent=2))
        return 0
    if cur is None:
        print("no model promoted yet (a run that evaluates decides; or k2 promote VERSION)")
    else:
        how = "by hand" if cur.get("manual") else f"by the gate, run {cur.get('run_id')}"
        print(f"promoted: {cur['stage']}/{cur['version']}  ({how}, {cur.get('promoted_at')}; "
              f"scored by evaluate/{cur.get('evaluate')})")
        if cur.get("scores"):
            print(table([{"metric": k, "score": v} for k, v in cur["scores"].items()], ["metric", "score"]))
    if last is not None:
        print(f"\nlast decision: {'promoted' if last.get('promoted') else 'BLOCKED'} "
              f"{last['candidate']['stage']}/{last['candidate']['version']}: {last.get('reason', '')}")
        if last.get("checks"):
            print(table([{k: ("" if v is None else v) for k, v in c.items()} for c in last["checks"]],
                        ["metric", "candidate", "incumbent", "delta", "rule", "ok"]))
    return 0


def cmd_promote(args) -> int:
    from flows.common import store_from_args
    from k2core import promote
    from k2core.errors import K2Error
    from k2core.eval.compare import evaluation_of
    from k2core.runs import resolve

    store = store_from_args(args)
    kind, art = resolve(store, args.version)
    if kind == "run" or art.stage not in ("pretrain", "sft", "rl"):
        raise K2Error(f"{args.version}: not a model artifact (pretrain, sft or rl); see k2 models")
    try:
        ev = evaluation_of(store, art.stage, art.version)[0]
    except K2Error:   # never evaluated: promoted without scores
        ev = None
    ptr = promote.promote_by_hand(store, art.stage, art.version, ev)
    print(f"promoted {ptr['stage']}/{ptr['version']} by hand"
          + (f" (scores from evaluate/{ptr['evaluate']})" if ptr["evaluate"] else " (no evaluation of it in the store)"))
    return 0


def register(sub, common) -> None:
    """`common` adds --store / --json (flows.cli's helper)."""
    sp = sub.add_parser("models", help="the model artifacts (pretrain, sft, rl), newest first, and the promoted one")
    common(sp)
    sp.set_defaults(func=cmd_models)
    sp = sub.add_parser("promote", help="promote a model artifact by hand (the nightly run's gate does it itself)")
    sp.add_argument("version", help="stage/version, a version or a unique prefix")
    common(sp)
    sp.set_defaults(func=cmd_promote)
