"""`k2 server`, `k2 deploy`, `k2 worker`: run k2 from the Prefect UI.

    k2 server                       # Prefect server + UI (SQLite under the k2 home), prints the URL
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    k2 deploy                       # nightly pipeline + one deployment per stage, process work pool
    k2 worker                       # runs what the UI / the schedule triggers
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from k2core.errors import K2Error


def k2_home() -> Path:
    return Path(os.environ.get("K2_HOME", "~/.k2")).expanduser()


def prefect_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("prefect")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("prefect")
    if found is None:
        raise K2Error("the `prefect` command is not installed in this environment (pip install prefect)")
    return [found]


def server_env(host: str, port: int, database_url: str | None) -> dict[str, str]:
    home = k2_home() / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    # the UI asks the API at this URL (Prefect's default is port 4200); on all interfaces, same origin
    ui_api = "/api" if host in ("0.0.0.0", "::") else f"http://{host}:{port}/api"
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_API_HOST=host, PREFECT_SERVER_API_PORT=str(port),
               PREFECT_UI_API_URL=env.get("K2_UI_API_URL", ui_api),
               PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT="false",
               PREFECT_API_DATABASE_CONNECTION_URL=database_url or f"sqlite+aiosqlite:///{home / 'prefect.db'}")
    env.pop("PREFECT_API_URL", None)   # the server is the API; a client setting must not point it elsewhere
    return env


def cmd_server(args) -> int:
    from flows import local_api

    if args.stop:
        api = local_api.stop()
        print(f"k2: stopped the Prefect server at {api.ui} (pid {api.pid})" if api else
              "k2: no local Prefect server is running")
        return 0
    running = local_api.find()
    if running is not None and not args.database_url and running.url.endswith(f":{args.port}/api"):
        print(f"k2: a Prefect server with its UI is already running at {running.ui} (pid {running.pid}"
              f"{f'; log {running.log}' if running.log else ''}); `k2 server --stop` stops it", flush=True)
        return 0
    url = f"http://{args.host}:{args.port}"
    env = server_env(args.host, args.port, args.database_url)
    db = "PostgreSQL" if args.database_url and args.database_url.startswith("postgres") else \
        ("the given database" if args.database_url else env["PREFECT_API_DATABASE_CONNECTION_URL"].split(":///")[-1])
    print(f"k2: Prefect server with its UI at {url}  (database: {db})\n"
          f"    in another shell:  export PREFECT_API_URL={url}/api;  k2 deploy;  k2 worker", flush=True)
    cmd = [*prefect_cmd(), "server", "start", "--host", args.host, "--port", str(args.port)]
    if not args.database_url:     # k2 run records its runs here while this server is up
        local_api.write_state(f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}/api",
                              os.getpid(), None)
    os.execvpe(cmd[0], cmd, env)
    return 0  # not reached


def _api(args) -> str:
    if args.api_url:
        os.environ["PREFECT_API_URL"] = args.api_url
    api = os.environ.get("PREFECT_API_URL")
    if not api:
        from flows import local_api

        running = local_api.find()       # the local server k2 run keeps, or a foreground `k2 server`
        if running is None:
            raise K2Error("no Prefect server: start one with `k2 server` (or any `k2 run` starts the local "
                          "one), or export PREFECT_API_URL / pass --api-url")
        api = os.environ["PREFECT_API_URL"] = running.url
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    import httpx

    try:
        ok = httpx.get(f"{api.rstrip('/')}/health", timeout=10).status_code == 200
        err = None if ok else "no healthy answer"
    except httpx.HTTPError as e:
        err = str(e) or type(e).__name__
    if err is not None:
        raise K2Error(f"the Prefect server at {api} does not answer ({err}); is `k2 server` running?")
    return api


def check_schedule(cron: str, timezone: str) -> None:
    """A bad cron string or time zone is a usage error, named, before the server is contacted."""
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    from k2core.config import ConfigError

    try:
        CronSchedule(cron=cron, timezone=timezone)
    except ValidationError as e:
        raise ConfigError("k2 deploy: " + "; ".join(err["msg"].removeprefix("Value error, ")
                                                   for err in e.errors())) from None


def cmd_deploy(args) -> int:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.common import config_from_args
    from flows.deploy import deploy
    from k2core.report import table

    check_schedule(args.cron, args.timezone)
    api = _api(args)
    cfg = config_from_args(args)
    with temporary_settings({PREFECT_API_URL: api}):     # this server, whatever Prefect loaded before
        done = deploy(cfg, pool=args.pool, gpu_pool=args.gpu_pool, cron=args.cron, timezone=args.timezone,
                      paused=args.paused)
    print(table([{"deployment": d.name, "work pool": d.pool, "schedule": d.schedule or "-", "id": d.id}
                 for d in done], ["deployment", "work pool", "schedule", "id"]))
    ui = api.rstrip("/").removesuffix("/api")
    pools = sorted({d.pool for d in done})
    print(f"\n{len(done)} deployments at {ui}/deployments\n"
          f"start a worker:  {'  and  '.join(f'k2 worker --pool {p}' for p in pools)}\n"
          f"trigger now:     prefect deployment run 'k2-pipeline/nightly'   (or Run in the UI)")
    return 0


def cmd_worker(args) -> int:
    _api(args)
    env = dict(os.environ, GX_ANALYTICS_ENABLED="False", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    cmd = [*prefect_cmd(), "worker", "start", "--pool", args.pool, "--type", "process"]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    print(f"k2: worker for pool {args.pool!r} → {os.environ['PREFECT_API_URL']}", flush=True)
    os.execvpe(cmd[0], cmd, env)
    return 0  # not reached


def register(sub) -> None:
    from flows.deploy import POOL

    sp = sub.add_parser("server", help="start the Prefect server and its UI (SQLite under the k2 home)")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=4200)
    sp.add_argument("--database-url", help="e.g. postgresql+asyncpg://user:pass@host/prefect "
                                           "(default: SQLite under $K2_HOME, ~/.k2)")
    sp.add_argument("--stop", action="store_true", help="stop the local server (the one `k2 run` starts "
                                                        "and reuses when no PREFECT_API_URL is set)")
    sp.set_defaults(func=cmd_server)

    sp = sub.add_parser("deploy", help="register the nightly pipeline and per-stage deployments on a server")
    sp.add_argument("--api-url", help="Prefect API URL (default: $PREFECT_API_URL)")
    sp.add_argument("--pool", default=POOL, help=f"process work pool (created if missing; default {POOL})")
    sp.add_argument("--gpu-pool", help="a second process pool for GPU stages (pretrain) and the nightly "
                                       "pipeline; run `k2 worker --pool NAME` on a GPU machine")
    sp.add_argument("--cron", default="0 2 * * *", help="nightly schedule (default 0 2 * * *)")
    sp.add_argument("--timezone", default="UTC", help="the schedule's time zone (default UTC)")
    sp.add_argument("--paused", action="store_true", help="register the schedule paused")
    sp.add_argument("--store", help="artifact store the deployments use (default: $K2_STORE or ./k2-store, "
                                    "made absolute)")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                    help="config defaults of the deployments' parameter form (repeatable)")
    sp.add_argument("--profile", help="tiny (default), h200 or cluster")
    sp.add_argument("--config", metavar="FILE", help="YAML config file")
    sp.set_defaults(func=cmd_deploy)

    sp = sub.add_parser("worker", help="run a Prefect process worker for k2's deployments")
    sp.add_argument("--api-url", help="Prefect API URL (default: $PREFECT_API_URL)")
    sp.add_argument("--pool", default=POOL)
    sp.add_argument("--limit", type=int, help="most flow runs at once")
    sp.set_defaults(func=cmd_worker)
