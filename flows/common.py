"""Helpers shared by the CLI modules (flows/cli*.py): the config and store a command's flags name,
Prefect's environment, printing a run."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

EXIT_FAILED, EXIT_USAGE = 1, 2


def configured_api() -> str | None:
    """The Prefect API the user configured: ``PREFECT_API_URL`` in the environment or in the active
    Prefect profile (read without importing Prefect, which takes a second)."""
    api = os.environ.get("PREFECT_API_URL")
    if api:
        return api
    if "prefect" in sys.modules:        # in process (a test harness, say): Prefect's own settings know
        from prefect.settings import PREFECT_API_URL

        return PREFECT_API_URL.value()
    import tomllib

    path = Path(os.environ.get("PREFECT_PROFILES_PATH") or
                Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser() / "profiles.toml")
    try:
        profiles = tomllib.loads(path.read_text())
    except (OSError, ValueError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active") or "ephemeral"
    return (profiles.get("profiles", {}).get(active) or {}).get("PREFECT_API_URL") or None


def prefect_env():
    """Where this command's flow runs are recorded, decided before Prefect is imported: a configured
    server (`configured_api`); Prefect's per-command ephemeral API when ``K2_LOCAL_API=ephemeral``;
    else the local server k2 keeps (flows/local_api.py: found, or started now — `.wait()` on it
    before the first flow). Returns (orchestrator label, the local server or None)."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    api = configured_api()
    if api:
        return f"prefect (server {api})", None
    if os.environ.get("K2_LOCAL_API", "").strip().lower() == "ephemeral":
        return "prefect (ephemeral API)", None
    from flows import local_api

    local = local_api.begin()
    os.environ["PREFECT_API_URL"] = local.url     # before Prefect reads its settings
    return f"prefect (local server {local.ui})", local


def wait_for(local, log=print) -> None:
    """Block until the local server `prefect_env` picked answers (saying so when this command started it)."""
    if local is None:
        return
    if local.started:
        log(f"k2: starting the local Prefect server with its UI at {local.ui} — it stays up for later runs "
            "(`k2 server --stop` stops it; K2_LOCAL_API=ephemeral runs without it)")
    local.wait()


def config_from_args(args: argparse.Namespace, base: dict[str, Any] | None = None):
    from k2core.config import load_config

    values: dict[str, Any] = {}
    if getattr(args, "source", None):
        values.setdefault("ingest", {})["source"] = args.source
    if args.store:
        values.setdefault("store", {})["uri"] = args.store
    return load_config(getattr(args, "profile", None), getattr(args, "config", None), args.set or [],
                       values=values, base=base)


def store_from_args(args: argparse.Namespace, cfg=None):
    return (cfg if cfg is not None else config_from_args(args)).store.open()


def short(text: str, n: int = 90) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def print_run(record, as_json: bool) -> None:
    from k2core.report import key_metrics, table

    if as_json:
        print(json.dumps(record.model_dump(mode="json"), indent=2))
        return
    rows = [{"stage": s.stage, "version": s.version, "status": s.status,
             "seconds": f"{s.seconds:.1f}" if s.seconds is not None else "-",
             "detail": key_metrics(s.metrics) if s.status in ("computed", "cache_hit") else short(s.reason)}
            for s in record.stages]
    print(table(rows, ["stage", "version", "status", "seconds", "detail"]))
    print(f"\nrun {record.run_id}: {record.status} ({record.orchestrator})")
    for s in record.stages:
        if s.location:
            print(f"  {s.stage}: {s.location}")
    if record.promotion:
        p = record.promotion
        print(f"promotion: {'PROMOTED' if p.get('promoted') else 'BLOCKED'} "
              f"{p.get('candidate', '')} — {p.get('reason', '')}   (k2 show promoted)")
    print(f"details: k2 show {record.run_id}   lineage: k2 lineage {record.stages[-1].stage}")


def promotion_after(config, store, steps, run_id: str, publish=None) -> dict[str, Any] | None:
    """The promotion gate on this run's evaluate artifact (k2core/promote.py): the decision is kept in
    the store (and handed to `publish(markdown, description)` — the Prefect UI's artifact — when
    given); a blocked promotion does not fail the run (its stages are fine)."""
    ev = next((p for p in steps if p.name == "evaluate"), None)
    if ev is None or not config.promote.enabled:
        return None
    from k2core import promote
    from k2core.errors import K2Error

    try:
        decision = promote.decide(store, store.artifact("evaluate", ev.version), config.promote, run_id)
    except K2Error as e:
        if publish:
            publish(f"# Promotion: not decided\n\n{e}\n", "promotion: not decided")
        return {"promoted": False, "reason": str(e)}
    promote.record(store, decision)
    if publish:
        publish(decision.markdown(), f"promotion: {'promoted' if decision.promoted else 'blocked'}")
    print(f"k2: promotion {'PROMOTED' if decision.promoted else 'BLOCKED'} "
          f"{decision.candidate['stage']}/{decision.candidate['version']}: {decision.reason}", file=sys.stderr, flush=True)
    return {"promoted": decision.promoted, "candidate": f"{decision.candidate['stage']}/{decision.candidate['version']}",
            "reason": decision.reason}
