"""The `k2` command line. Heavy imports (prefect, pyarrow, great_expectations) happen lazily,
inside the commands that need them, so `k2 --help` starts fast."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

EXIT_FAILED, EXIT_USAGE = 1, 2


def _prefect_env() -> str:
    """Defaults that make Prefect behave on a small offline machine; returns the orchestrator label."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    api = os.environ.get("PREFECT_API_URL")
    if not api:
        from prefect.settings import PREFECT_API_URL

        api = PREFECT_API_URL.value()
    return f"prefect (server {api})" if api else "prefect (ephemeral API)"


def _config(args: argparse.Namespace, base: dict[str, Any] | None = None):
    from k2core.config import load_config

    values: dict[str, Any] = {}
    if getattr(args, "source", None):
        values.setdefault("ingest", {})["source"] = args.source
    if args.store:
        values.setdefault("store", {})["uri"] = args.store
    return load_config(getattr(args, "profile", None), getattr(args, "config", None), args.set or [],
                       values=values, base=base)


def _store(args: argparse.Namespace, cfg=None):
    from k2core.store import open_store

    if cfg is None:
        cfg = _config(args)
    return open_store(cfg.store.uri, cfg.store.s3_endpoint_url, cfg.store.s3_region)


def _short(text: str, n: int = 90) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _print_run(record, as_json: bool) -> None:
    from k2core.report import key_metrics, table

    if as_json:
        print(json.dumps(record.model_dump(mode="json"), indent=2))
        return
    rows = [{"stage": s.stage, "version": s.version, "status": s.status,
             "seconds": f"{s.seconds:.1f}" if s.seconds is not None else "-",
             "detail": key_metrics(s.metrics) if s.status in ("computed", "cache_hit") else _short(s.reason)}
            for s in record.stages]
    print(table(rows, ["stage", "version", "status", "seconds", "detail"]))
    print(f"\nrun {record.run_id}: {record.status} ({record.orchestrator})")
    for s in record.stages:
        if s.location:
            print(f"  {s.stage}: {s.location}")
    print(f"details: k2 show {record.run_id}   lineage: k2 lineage {record.stages[-1].stage}")


def _run_pipeline(args, cfg, store, *, stages: str | None, pinned: dict[str, str] | None,
                  rerun_of: str | None) -> int:
    from k2core.runs import RunRecorder, load_run, new_run_id
    from k2core.stage import plan, select_stages

    planned = plan(cfg, store, select_stages(stages), pinned=pinned)  # bad sources fail here, before work
    run_id = new_run_id()
    if all(p.cached for p in planned) and not args.force and not os.environ.get("PREFECT_API_URL"):
        # Nothing to compute and no server to show it on: starting Prefect's ephemeral API would
        # cost ~10 s to record cache hits. The run record says so.
        rec = RunRecorder.start(store, run_id, cfg.model_dump(mode="json"), planned,
                                "none (all stages cached; Prefect not started)", rerun_of=rerun_of)
        for p in planned:
            t_stage = time.monotonic()
            s = rec.record.stage(p.name)
            art = store.artifact(p.name, p.version)
            s.status, s.reason, s.location, s.metrics = "cache_hit", "cached", art.location, art.metrics
            s.seconds = round(time.monotonic() - t_stage, 3)
        rec.finish()
        _print_run(rec.record, args.json)
        return 0
    orchestrator = _prefect_env()
    from flows.pipeline import k2_pipeline

    state = k2_pipeline(config=cfg, stages=",".join(p.name for p in planned), force=args.force,
                        run_id=run_id, pinned=pinned, rerun_of=rerun_of, orchestrator=orchestrator,
                        return_state=True)
    record = load_run(store, run_id) if store.exists(f"runs/{run_id}.json") else None
    if record is not None:
        _print_run(record, args.json)
    if not state.is_completed():
        print(f"k2: error: {(record.error if record else None) or state.message}", file=sys.stderr)
        return EXIT_FAILED
    return 0


# ---------------------------------------------------------------------------- commands
def cmd_run(args) -> int:
    cfg = _config(args)
    return _run_pipeline(args, cfg, _store(args, cfg), stages=args.stages, pinned=None, rerun_of=None)


def cmd_rerun(args) -> int:
    from k2core.runs import load_run, upstream_of

    store = _store(args)
    record = load_run(store, args.run)
    base = dict(record.config)
    base.pop("store", None)  # the store is where we read the run from, not where it once ran
    cfg = _config(args, base=base)
    pinned = upstream_of(store, args.stage, args.run)
    return _run_pipeline(args, cfg, store, stages=args.stage, pinned=pinned, rerun_of=args.run)


def cmd_runs(args) -> int:
    from k2core.report import table
    from k2core.runs import list_runs

    runs = list_runs(_store(args))[: args.limit]
    if args.json:
        print(json.dumps([r.model_dump(mode="json") for r in runs], indent=2))
        return 0
    if not runs:
        print("no runs yet (k2 run starts one)")
        return 0
    rows = [{"run": r.run_id, "created": r.created_at, "status": r.status,
             "stages": " ".join(f"{s.stage}:{s.status}" for s in r.stages), "orchestrator": r.orchestrator}
            for r in runs]
    print(table(rows, ["run", "created", "status", "stages", "orchestrator"]))
    return 0


def cmd_show(args) -> int:
    from k2core.report import fmt_value, table
    from k2core.runs import resolve

    kind, obj = resolve(_store(args), args.id)
    if kind == "run":
        _print_run(obj, args.json)
        return 0
    m = obj.manifest
    if args.json:
        print(json.dumps(dict(m, location=obj.location), indent=2, sort_keys=True))
        return 0
    print(f"{obj.ref}\n  location: {obj.location}\n  created:  {m.get('created_at')}  "
          f"(code {m.get('code_version')}, run {m.get('run_id')})")
    for name, ref in m.get("inputs", {}).items():
        print(f"  input {name}: {fmt_value(ref)}")
    print("\nmetrics:")
    print(table([{"metric": k, "value": v} for k, v in m.get("metrics", {}).items()], ["metric", "value"]))
    q = m.get("quality") or {}
    print(f"\nquality gate: {'passed' if q.get('success') else 'FAILED'}")
    if q.get("results"):
        print(table(q["results"], ["check", "column", "success", "observed"]))
    files = m.get("files", [])
    print(f"\nfiles: {len(files)}, {sum(f['size'] for f in files) / 1e6:.2f} MB (sha256 in manifest)")
    return 0


def cmd_lineage(args) -> int:
    from k2core.report import lineage_text
    from k2core.runs import lineage, resolve

    store = _store(args)
    kind, obj = resolve(store, args.id)
    if kind == "run":  # a run's lineage is that of its last stage
        last = obj.stages[-1]
        tree = lineage(store, last.stage, last.version)
    else:
        tree = lineage(store, obj.stage, obj.version)
    print(json.dumps(tree, indent=2) if args.json else lineage_text(tree))
    return 0


def cmd_stages(args) -> int:
    from k2core.config import PipelineConfig
    from k2core.report import table
    from k2core.stage import stages

    rows = []
    for s in stages():
        fields = PipelineConfig.model_fields[s.section].annotation.model_fields
        rows.append({"stage": s.name, "inputs": ",".join(s.inputs) or "-", "config": s.section,
                     "code": s.code_version, "description": s.description, "fields": list(fields)})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(table(rows, ["stage", "inputs", "config", "description"]))
    return 0


def cmd_config(args) -> int:
    from k2core.config import to_yaml

    cfg = _config(args)
    print(json.dumps(cfg.model_dump(mode="json"), indent=2) if args.json else to_yaml(cfg), end="")
    return 0


def cmd_sandbox_run(args) -> int:
    from k2core.sandbox import Limits, run

    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise SystemExit("k2 sandbox run: give the command after --, e.g. k2 sandbox run -- python prog.py")
    stdin = Path(args.stdin).read_bytes() if args.stdin else b""
    limits = Limits(timeout_s=args.timeout, memory_mb=args.memory)
    result = run(argv, stdin=stdin, files_dir=args.files, limits=limits, layer=args.isolation)
    print(result.to_json())
    return 0


# ---------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="k2", description="k2: train a Kimi-K2-architecture model end to end "
                                "as versioned, quality-gated Prefect stages.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp, cfg_opts: bool = False, json_opt: bool = True):
        sp.add_argument("--store", help="artifact store: a directory or s3://bucket/prefix "
                                        "(default: $K2_STORE or ./k2-store)")
        sp.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                        help="override a config value, e.g. --set ingest.max_docs=100 (repeatable)")
        if cfg_opts:
            sp.add_argument("--profile", help="tiny (default), h200 or cluster")
            sp.add_argument("--config", metavar="FILE", help="YAML config file")
        if json_opt:
            sp.add_argument("--json", action="store_true", help="machine-readable output")

    sp = sub.add_parser("run", help="run the pipeline (or some stages of it)")
    common(sp, cfg_opts=True)
    sp.add_argument("--stages", help="a,b or a..b (default: all)")
    sp.add_argument("--source", help="ingest source: stdlib, a JSONL/Parquet file, directory, glob or s3://")
    sp.add_argument("--force", action="store_true", help="recompute even when a committed version exists")
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("rerun", help="rerun one stage against an earlier run's upstream artifacts")
    sp.add_argument("stage")
    sp.add_argument("--run", required=True, metavar="RUN_ID")
    sp.add_argument("--force", action="store_true")
    common(sp)
    sp.set_defaults(func=cmd_rerun)

    sp = sub.add_parser("runs", help="list runs, newest first")
    sp.add_argument("--limit", type=int, default=20)
    common(sp)
    sp.set_defaults(func=cmd_runs)

    sp = sub.add_parser("show", help="show a run or an artifact (run id, stage/version, version, stage)")
    sp.add_argument("id")
    common(sp)
    sp.set_defaults(func=cmd_show)

    sp = sub.add_parser("lineage", help="an artifact's inputs, back to the raw sources")
    sp.add_argument("id")
    common(sp)
    sp.set_defaults(func=cmd_lineage)

    sp = sub.add_parser("stages", help="list the pipeline's stages")
    common(sp)
    sp.set_defaults(func=cmd_stages)

    sb = sub.add_parser("sandbox", help="run untrusted code in the execution sandbox")
    sbsub = sb.add_subparsers(dest="sandbox_command", required=True, metavar="SUBCOMMAND")
    sp = sbsub.add_parser("run", help="run a command in the sandbox and print a JSON result",
                          usage="k2 sandbox run [--timeout S] [--memory MB] [--files DIR] [--stdin FILE] "
                                "-- python prog.py")
    sp.add_argument("--timeout", type=float, default=10.0, help="wall-clock seconds (default 10)")
    sp.add_argument("--memory", type=int, default=512, help="address-space limit in MB (default 512)")
    sp.add_argument("--files", metavar="DIR", help="copied into the private work dir first")
    sp.add_argument("--stdin", metavar="FILE", help="fed to the program's standard input")
    sp.add_argument("--isolation", choices=["bubblewrap", "unshare", "rlimits"],
                    help="force a layer (default: the strongest that works here)")
    sp.add_argument("argv", nargs=argparse.REMAINDER)
    sp.set_defaults(func=cmd_sandbox_run)

    from flows.cli_model import register as register_model

    register_model(sub)

    from flows.cli_experiment import register as register_experiment

    register_experiment(sub)

    from flows.cli_server import register as register_server

    register_server(sub)

    sp = sub.add_parser("config", help="print the resolved config")
    common(sp, cfg_opts=True)
    sp.add_argument("--source", help=argparse.SUPPRESS)
    sp.set_defaults(func=cmd_config)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from k2core.config import ConfigError
    from k2core.stage import K2Error
    from k2core.sandbox import SandboxError
    from k2core.store import StoreError
    from k2core.model.checkpoint import CheckpointError
    from k2core.experiments import ExperimentError

    try:
        return args.func(args)
    except ConfigError as e:
        print(f"k2: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (K2Error, StoreError, SandboxError, CheckpointError, ExperimentError) as e:
        print(f"k2: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("k2: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
