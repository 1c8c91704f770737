"""Helpers shared by the CLI modules (flows/cli*.py): the config and store a command's flags name,
Prefect's environment, printing a run."""
from __future__ import annotations

import argparse
import json
import os
from typing import Any

EXIT_FAILED, EXIT_USAGE = 1, 2


def prefect_env() -> str:
    """Defaults that make Prefect behave on a small offline machine; returns the orchestrator label."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    api = os.environ.get("PREFECT_API_URL")
    if not api:
        from prefect.settings import PREFECT_API_URL

        api = PREFECT_API_URL.value()
    return f"prefect (server {api})" if api else "prefect (ephemeral API)"


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
    print(f"details: k2 show {record.run_id}   lineage: k2 lineage {record.stages[-1].stage}")
