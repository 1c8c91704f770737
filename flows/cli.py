"""The `k2` command line. Heavy imports (prefect, pyarrow, great_expectations) happen lazily,
inside the commands that need them, so `k2 --help` starts fast. Helpers shared with the other CLI
modules (cli_model, cli_experiment, cli_server) are in flows/common.py."""
from __future__ import annotations

import argparse
from typing import Any
import json
import os
import sys
import time
from pathlib import Path

from flows.common import (EXIT_FAILED, EXIT_USAGE, config_from_args, configured_api, prefect_env, print_run,
                          promotion_after, store_from_args, wait_for)

_STARTED = time.perf_counter()      # reset by main(); phases of a run are timed from here

def _run_pipeline(args, cfg, store, *, stages: str | None, pinned: dict[str, str] | None,
                  rerun_of: str | None) -> int:
    """Plan once (bad sources fail here, before any work), then run the plan: through Prefect, or —
    when every stage is a cache hit and no server would show the run — without starting it."""
    from k2core.pipeline import plan, select_stages
    from k2core.runs import RunRecorder, load_run, new_run_id

    planned = plan(cfg, store, select_stages(stages), pinned=pinned)
    run_id = new_run_id()
    phases = {"plan_s": time.perf_counter() - _STARTED}        # where a run's fixed cost goes (run record)
    if getattr(args, "no_prefect", False):
        return _run_in_process(args, cfg, store, planned, run_id, rerun_of, phases,
                               "none (--no-prefect: stages run in this process)")
    if all(p.cached for p in planned) and not args.force and not configured_api():
        # Nothing to compute and no server of the user's to show it on: starting Prefect would cost
        # more than recording the cache hits. The run record says so.
        return _run_in_process(args, cfg, store, planned, run_id, rerun_of, phases,
                               "none (all stages cached; Prefect not started)")
    orchestrator, local = prefect_env()     # a local server's start overlaps the imports below
    t = time.perf_counter()
    from flows.pipeline import k2_pipeline

    phases["prefect_import_s"] = time.perf_counter() - t
    t = time.perf_counter()
    wait_for(local, lambda m: print(m, file=sys.stderr, flush=True))
    phases["api_wait_s"] = time.perf_counter() - t
    t = time.perf_counter()
    # On k2's local server no flow heartbeats: Prefect uses them only in automations that mark
    # silent runs crashed, which that server has none of, and joining the heartbeat thread costs
    # up to 1 s at the flow's end. A server you configure keeps Prefect's default.
    from contextlib import nullcontext

    from prefect.settings import temporary_settings

    with temporary_settings(updates={"flows.heartbeat_frequency": None}) if local is not None else nullcontext():
        state = k2_pipeline(config=cfg, force=args.force, run_id=run_id, rerun_of=rerun_of,
                            orchestrator=orchestrator, planned=[p.to_record() for p in planned], return_state=True)
    phases["pipeline_s"] = time.perf_counter() - t
    record = load_run(store, run_id) if store.exists(f"runs/{run_id}.json") else None
    if record is not None:
        rec = RunRecorder(store, record)
        rec.record.timings = {k: round(v, 3) for k, v in phases.items()}
        rec.save()
        print_run(record, args.json)
    if not state.is_completed():
        print(f"k2: error: {(record.error if record else None) or state.message}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _run_in_process(args, cfg, store, planned, run_id: str, rerun_of: str | None, phases: dict[str, float],
                    orchestrator: str) -> int:
    """Run the plan here, stage after stage, with the same run record, gates and promotion as the
    Prefect flow — for a bare GPU box or a batch job with no Prefect installed (`--no-prefect`), and
    for a run whose stages are all cache hits. Progress goes to the terminal."""
    from k2core.errors import K2Error
    from k2core.pipeline import prepare
    from k2core.runs import RunRecorder
    from k2core.stage import GateFailed, execute

    rec = RunRecorder.start(store, run_id, cfg.model_dump(mode="json"), planned, orchestrator, rerun_of=rerun_of)
    t = time.perf_counter()
    prepare(cfg, planned, args.force)
    for p in planned:
        if not p.cached or args.force:
            print(f"k2: {p.name}@{p.version[:8]}: {p.reason if not args.force else 'forced (--force)'}",
                  file=sys.stderr, flush=True)
        rec.stage_started(p.name)
        try:
            outcome = execute(p, cfg, store, force=args.force, run_id=run_id,
                              log=lambda m, _n=p.name: print(f"[{_n}] {m}", file=sys.stderr, flush=True))
        except K2Error as e:          # a failed gate or an expected failure: recorded, later stages skipped
            rec.stage_failed(p.name, e, gate_failed=isinstance(e, GateFailed))
            print_run(rec.record, args.json)
            print(f"k2: error: {e}", file=sys.stderr)
            return EXIT_FAILED
        except BaseException as e:    # a bug or ^C: the record says the run failed, the traceback shows why
            rec.stage_failed(p.name, e, gate_failed=False)
            raise
        rec.stage_done(outcome)
    phases["stages_s"] = time.perf_counter() - t
    rec.record.promotion = promotion_after(cfg, store, planned, run_id)
    rec.record.timings = {k: round(v, 3) for k, v in phases.items()}
    rec.finish()
    print_run(rec.record, args.json)
    return 0


# ---------------------------------------------------------------------------- commands
def cmd_run(args) -> int:
    from k2core.quality import prewarm

    prewarm()            # Great Expectations loads in a child, on another core, while this one plans
    cfg = config_from_args(args)
    return _run_pipeline(args, cfg, store_from_args(args, cfg), stages=args.stages, pinned=None, rerun_of=None)


def cmd_rerun(args) -> int:
    from k2core.pipeline import upstream_of
    from k2core.runs import load_run

    from k2core.quality import prewarm

    prewarm()            # as in `k2 run`: Great Expectations loads in a child while this one plans
    store = store_from_args(args)
    record = load_run(store, args.run)
    base = dict(record.config)
    base.pop("store", None)  # the store is where we read the run from, not where it once ran
    cfg = config_from_args(args, base=base)
    pinned = upstream_of(store, args.stage, args.run, cfg)
    return _run_pipeline(args, cfg, store, stages=args.stage, pinned=pinned, rerun_of=args.run)


def cmd_runs(args) -> int:
    from k2core.report import table
    from k2core.runs import list_runs

    runs = list_runs(store_from_args(args))[: args.limit]
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

    if args.id == "promoted":
        from flows.cli_promote import show_promoted

        return show_promoted(store_from_args(args), args.json)
    kind, obj = resolve(store_from_args(args), args.id)
    if kind == "run":
        print_run(obj, args.json)
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
    metrics = m.get("metrics", {})
    pairs = [k[len("before_"):] for k in metrics if k.startswith("before_") and f"after_{k[7:]}" in metrics]
    # evaluate: <model>_<suite>_<metric> for each evaluated model -> one column per model
    models = [x for x in ("pretrain", "sft", "rl") if f"{x}_version" in metrics]
    scores: dict[str, dict[str, Any]] = {}
    for k, v in metrics.items():
        mdl = next((x for x in models if k.startswith(f"{x}_") and k != f"{x}_version"), None)
        if mdl:
            scores.setdefault(k[len(mdl) + 1:], {})[mdl] = v
    print(table([{"metric": k, "value": v} for k, v in metrics.items()
                 if not (k.startswith(("before_", "after_")) and k.split("_", 1)[1] in pairs)
                 and not any(k.startswith(f"{x}_") and k != f"{x}_version" for x in models)], ["metric", "value"]))
    if scores:
        print("\nscores (model columns):")
        print(table([{"suite_metric": k, **{x: row.get(x, "") for x in models}} for k, row in scores.items()],
                    ["suite_metric", *models]))
    if pairs:                                            # e.g. rl's held-out reward per task, input model vs after
        print("\nbefore / after:")
        print(table([{"metric": p, "before": metrics[f"before_{p}"], "after": metrics[f"after_{p}"],
                      "change": metrics[f"after_{p}"] - metrics[f"before_{p}"]
                      if all(isinstance(metrics[f"{w}_{p}"], (int, float)) for w in ("before", "after")) else ""}
                     for p in pairs],
                    ["metric", "before", "after", "change"]))
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

    store = store_from_args(args)
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
    from k2core.pipeline import stages

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

    cfg = config_from_args(args)
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
    sp.add_argument("--no-prefect", action="store_true",
                    help="run the stages in this process without Prefect (no UI; same run record, gates and "
                         "promotion) — for a machine that has no Prefect installed")
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("rerun", help="rerun one stage against an earlier run's upstream artifacts")
    sp.add_argument("stage")
    sp.add_argument("--run", required=True, metavar="RUN_ID")
    sp.add_argument("--force", action="store_true")
    sp.add_argument("--no-prefect", action="store_true", help="run the stage in this process, without Prefect")
    common(sp)
    sp.set_defaults(func=cmd_rerun)

    sp = sub.add_parser("runs", help="list runs, newest first")
    sp.add_argument("--limit", type=int, default=20)
    common(sp)
    sp.set_defaults(func=cmd_runs)

    sp = sub.add_parser("show", help="show a run or an artifact (run id, stage/version, version, stage), "
                                     "or `promoted`: the promoted model and the last promotion decision")
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

    from flows.cli_mcp import register as register_mcp

    register_mcp(sub)

    from flows.cli_eval import register as register_eval

    register_eval(sub, common)

    from flows.cli_promote import register as register_promote

    register_promote(sub, common)

    sp = sub.add_parser("config", help="print the resolved config")
    common(sp, cfg_opts=True)
    sp.add_argument("--source", help=argparse.SUPPRESS)
    sp.set_defaults(func=cmd_config)
    return p


def main(argv: list[str] | None = None) -> int:
    global _STARTED
    _STARTED = time.perf_counter()
    args = build_parser().parse_args(argv)
    from k2core.errors import ConfigError, K2Error

    try:
        return args.func(args)
    except ConfigError as e:
        print(f"k2: {e}", file=sys.stderr)
        return EXIT_USAGE
    except K2Error as e:
        print(f"k2: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("k2: interrupted", file=sys.stderr)
        return 130


def console() -> None:
    """The `k2` console script: `main`, then out without the interpreter's finalization — ~0.6 s
    on 2 cores spent freeing Prefect's, pydantic's and pandas' modules at every command's end —
    once every other exit handler (Prefect's log and event flush, the gate process's close) ran."""
    import atexit

    status = {"code": 1}           # an exception that escapes main: the interpreter's traceback, then 1

    def leave() -> None:
        import logging
        import weakref

        logging.shutdown()
        getattr(weakref.finalize, "_exitfunc", lambda: None)()    # temporary directories & co.
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):       # a closed pipe (`k2 runs | head`)
                pass
        os._exit(status["code"])

    atexit.register(leave)         # registered first, so it runs last
    try:
        status["code"] = int(main() or 0)
    except SystemExit as e:        # argparse: --help (0), a usage error (2)
        status["code"] = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        raise
    sys.exit(status["code"])


if __name__ == "__main__":
    console()
