"""`k2_pipeline`: the stages in order, each as its own (nested) flow run."""
from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.runtime import flow_run
from prefect.settings import temporary_settings
from prefect.states import Failed, State

from flows.common import promotion_after
from flows.stage import stage_flow
from k2core.config import PipelineConfig
from k2core.errors import K2Error
from k2core.pipeline import get_stage, plan, prepare, select_stages
from k2core.runs import RunRecorder, new_run_id
from k2core.stage import PlannedStage


@flow(name="k2-pipeline", validate_parameters=True)
def k2_pipeline(config: PipelineConfig = PipelineConfig(), stages: str | None = None, force: bool = False,
                run_id: str | None = None, pinned: dict[str, str] | None = None,
                rerun_of: str | None = None, orchestrator: str = "prefect",
                planned: list[dict[str, Any]] | None = None) -> dict[str, Any] | State:
    """Run `stages` (all, `a,b` or `a..b`); committed versions are reused as cache hits.

    `planned`: the run's plan, made once by the caller (`k2 run`); a scheduled run plans here."""
    store = config.store.open()
    try:
        steps = [PlannedStage.from_record(get_stage(d["stage"]), d) for d in planned] if planned is not None \
            else plan(config, store, select_stages(stages), pinned=pinned)
    except K2Error as e:  # e.g. a missing source: fail before any stage runs
        return Failed(message=str(e))
    run_id = run_id or new_run_id()
    fr_id = str(flow_run.id) if flow_run.id else None
    RunRecorder.start(store, run_id, config.model_dump(mode="json"), steps, orchestrator,
                      rerun_of=rerun_of, flow_run_id=fr_id)
    prepare(config, steps, force)
    for p in steps:
        # A stage flow runs in this flow's process, whose liveness this flow's heartbeat already
        # reports; its own heartbeat thread would only cost its join (up to 1 s) at every stage's end.
        with temporary_settings(updates={"flows.heartbeat_frequency": None}):
            state = stage_flow(p.name)(config=config, force=force, run_id=run_id, planned=p.to_record(),
                                       return_state=True)
        if not state.is_completed():  # the stage recorded why; downstream stages are skipped
            return Failed(message=state.message or f"stage {p.name} failed")
    promotion = promote_after(config, store, steps, run_id)
    rec = RunRecorder.load(store, run_id)
    rec.record.promotion = promotion
    rec.finish(flow_run_id=fr_id)
    return {"run_id": run_id, "stages": [p.name for p in steps], "promotion": promotion}


def promote_after(config: PipelineConfig, store, steps: list[PlannedStage], run_id: str) -> dict[str, Any] | None:
    """The promotion gate (flows.common.promotion_after), its decision shown in the Prefect UI."""
    from prefect.artifacts import create_markdown_artifact

    return promotion_after(config, store, steps, run_id, publish=lambda md, desc: create_markdown_artifact(
        md, key="k2-promotion", description=desc))
