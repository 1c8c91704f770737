"""The body shared by every stage flow, and the factory that makes one flow per stage."""
from __future__ import annotations

import functools
import sys
from typing import Any

from prefect import flow
from prefect.runtime import flow_run
from prefect.states import Failed, State

from k2core.config import PipelineConfig
from k2core.errors import K2Error
from k2core.pipeline import get_stage, upstream_of
from k2core.runs import RunRecorder, new_run_id
from k2core.stage import GateFailed, PlannedStage
from tasks.stage import execute_stage, plan_stage, publish_plots, publish_summary


def run_stage(name: str, config: PipelineConfig, force: bool = False, run_id: str | None = None,
              inputs: dict[str, str] | None = None, rerun_of: str | None = None,
              planned: dict[str, Any] | None = None) -> dict[str, Any] | State:
    """Plan (unless the pipeline handed its plan down) -> execute -> publish one stage, recording it
    in the run record."""
    store = config.store.open()
    fr_id = str(flow_run.id) if flow_run.id else None
    recorder = RunRecorder.load(store, run_id) if run_id else None
    plan_: PlannedStage | None = None
    try:
        if planned is not None:
            plan_ = PlannedStage.from_record(get_stage(name), planned)
        else:
            if rerun_of and not inputs:
                inputs = upstream_of(store, name, rerun_of, config)
            plan_ = plan_stage(config, store, name, inputs or {})
            _rename(fr_id, run_name(name, plan_.version))
        if recorder is None:  # the stage flow triggered on its own (a per-stage deployment)
            recorder = RunRecorder.start(store, new_run_id(), config.model_dump(mode="json"), [plan_],
                                         "prefect", flow_run_id=fr_id)
        recorder.stage_started(name, fr_id)
        outcome = execute_stage(plan_, config, store, force, recorder.record.run_id, fr_id)
    except K2Error as e:  # planning failed (e.g. a missing source)
        outcome = e
    except Exception as e:
        if recorder is not None:
            recorder.stage_failed(name, e, gate_failed=False)
        raise
    if isinstance(outcome, K2Error):
        if isinstance(outcome, GateFailed) and plan_ is not None:
            publish_summary(name, plan_.version, "gate failed", {"code_version": plan_.code,
                            "inputs": plan_.inputs}, outcome.report.to_dict(), outcome.location, plan_.reason)
        if recorder is not None:
            recorder.stage_failed(name, outcome, gate_failed=isinstance(outcome, GateFailed))
        return Failed(message=str(outcome))
    publish_summary(name, outcome.version, outcome.status.replace("_", " "), outcome.manifest,
                    outcome.gate, outcome.location, outcome.reason)
    publish_plots(name, outcome.version, store)
    recorder.stage_done(outcome, fr_id)
    return {"stage": name, "version": outcome.version, "status": outcome.status}


def _rename(fr_id: str | None, name: str) -> None:
    """Give a running flow run its stage@version name (a lone stage run learns its version only
    once it has planned). Naming is cosmetic: a failure to rename never fails the stage."""
    if not fr_id:
        return
    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            client.update_flow_run(fr_id, name=name)
    except Exception as e:  # noqa: BLE001
        print(f"k2: could not name flow run {fr_id} {name!r}: {type(e).__name__}: {e}", file=sys.stderr)


def run_name(stage: str, version: str) -> str:
    """A stage's flow-run name in the Prefect UI: `sft@8f727db1`."""
    return f"{stage}@{version[:8]}"


def _planned_name() -> str:
    """flow_run_name of a stage flow: stage@version when the pipeline handed its plan down, else
    the stage's name until it has planned (then renamed)."""
    params = flow_run.parameters or {}
    planned = params.get("planned") or {}
    stage = flow_run.flow_name or planned.get("stage", "stage")
    return run_name(stage, planned["version"]) if planned.get("version") else stage


@functools.cache
def stage_flow(name: str):
    """The Prefect flow of one registered stage (created once per stage)."""
    spec = get_stage(name)

    @flow(name=name, description=spec.description, validate_parameters=True, flow_run_name=_planned_name)
    def _flow(config: PipelineConfig = PipelineConfig(), force: bool = False, run_id: str | None = None,
              inputs: dict[str, str] | None = None, rerun_of: str | None = None,
              planned: dict[str, Any] | None = None) -> dict[str, Any] | State:
        """`rerun_of`: a k2 run id whose upstream artifacts this stage takes as inputs. `planned`:
        this stage's entry of the pipeline's plan (set by k2-pipeline; a lone run plans itself)."""
        return run_stage(name, config, force, run_id, inputs, rerun_of, planned)

    return _flow
