"""`k2_pipeline`: the stages in order, each as its own (nested) flow run."""
from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.runtime import flow_run
from prefect.states import Failed, State

from flows.stage import open_config_store, stage_flow
from k2core.config import PipelineConfig
from k2core.runs import RunRecorder, new_run_id
from k2core.stage import K2Error, plan, select_stages


@flow(name="k2-pipeline", validate_parameters=True)
def k2_pipeline(config: PipelineConfig = PipelineConfig(), stages: str | None = None, force: bool = False,
                run_id: str | None = None, pinned: dict[str, str] | None = None,
                rerun_of: str | None = None, orchestrator: str = "prefect") -> dict[str, Any] | State:
    """Run `stages` (all, `a,b` or `a..b`); committed versions are reused as cache hits."""
    store = open_config_store(config)
    try:
        planned = plan(config, store, select_stages(stages), pinned=pinned)
    except K2Error as e:  # e.g. a missing source: fail before any stage runs
        return Failed(message=str(e))
    run_id = run_id or new_run_id()
    fr_id = str(flow_run.id) if flow_run.id else None
    RunRecorder.start(store, run_id, config.model_dump(mode="json"), planned, orchestrator,
                      rerun_of=rerun_of, flow_run_id=fr_id)
    versions = dict(pinned or {})
    for p in planned:
        state = stage_flow(p.name)(config=config, force=force, run_id=run_id, return_state=True,
                                   inputs={d: versions.get(d, v) for d, v in p.inputs.items()})
        if not state.is_completed():  # the stage recorded why; downstream stages are skipped
            return Failed(message=state.message or f"stage {p.name} failed")
        versions[p.name] = p.version
    RunRecorder.load(store, run_id).finish(flow_run_id=fr_id)
    return {"run_id": run_id, "stages": [p.name for p in planned]}
