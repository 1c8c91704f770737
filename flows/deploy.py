"""Deployments on a Prefect server: the pipeline on a nightly schedule and one deployment per stage,
all on a process work pool (the Python equivalent of a prefect.yaml; `k2 deploy` calls it).

- `k2-pipeline/nightly`: every stage, cron schedule (time zone configurable, pausable); unchanged
  stages are cache hits, and the run record says why the others recomputed.
- `<stage>/on-demand` for every registered stage: rerun one stage from the UI; its `rerun_of`
  parameter takes a k2 run id whose upstream artifacts it uses.

Parameters are the typed `PipelineConfig` (the UI renders a validated form with the defaults
given at deploy time; the server refuses invalid values before anything runs).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from k2core.config import PipelineConfig
from k2core.pipeline import stages

ROOT = Path(__file__).resolve().parents[1]
POOL = "k2-process"
GPU_STAGES = ("pretrain",)    # with a GPU pool, these (and the pipeline, which contains them) run there
PIPELINE_DEPLOYMENT = "k2-pipeline/nightly"


@dataclass
class Deployed:
    name: str           # flow/deployment
    id: str
    schedule: str | None
    pool: str


def deployment_config(cfg: PipelineConfig) -> dict[str, Any]:
    """The config a deployment starts from, with a local store made absolute: a worker runs flows
    in its own working directory."""
    data = cfg.model_dump(mode="json")
    uri = data["store"]["uri"]
    if "://" not in uri:
        data["store"]["uri"] = str(Path(uri).expanduser().resolve())
    return data


def ensure_pool(name: str) -> bool:
    """Create the process work pool if the server lacks it; True when created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))
            return True


def deploy(cfg: PipelineConfig, *, pool: str = POOL, gpu_pool: str | None = None, cron: str = "0 2 * * *",
           timezone: str = "UTC", paused: bool = False) -> list[Deployed]:
    import contextlib
    import io

    from prefect import flow
    from prefect.schedules import Cron

    ensure_pool(pool)
    if gpu_pool:
        ensure_pool(gpu_pool)
    params = {"config": deployment_config(cfg)}
    common = dict(build=False, push=False, print_next_steps=False, tags=["k2"],
                  enforce_parameter_schema=True)
    out = []
    quiet = contextlib.redirect_stdout(io.StringIO())      # Prefect prints a table per deployment
    with quiet:
        pipeline = flow.from_source(source=str(ROOT), entrypoint="flows/pipeline.py:k2_pipeline")
        dep_id = pipeline.deploy(name="nightly", work_pool_name=gpu_pool or pool, parameters=params,
                                 schedules=[Cron(cron, timezone=timezone)], paused=paused, description="The whole k2 pipeline on a schedule: unchanged "
                                 "stages are cache hits; the run record says why the others recomputed.", **common)
    out.append(Deployed(PIPELINE_DEPLOYMENT, str(dep_id), f"{cron} ({timezone}){' paused' if paused else ''}",
                        gpu_pool or pool))
    for spec in stages():
        with contextlib.redirect_stdout(io.StringIO()):
            f = flow.from_source(source=str(ROOT), entrypoint=f"flows/stages.py:{spec.name}")
            on = gpu_pool if gpu_pool and spec.name in GPU_STAGES else pool
            dep_id = f.deploy(name="on-demand", work_pool_name=on, parameters=params,
                              description=f"Run or rerun the {spec.name} stage alone ({spec.description}). Set "
                                          "rerun_of to a k2 run id to use that run's upstream artifacts.", **common)
        out.append(Deployed(f"{spec.name}/on-demand", str(dep_id), None, on))
    return out
