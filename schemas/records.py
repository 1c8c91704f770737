"""Pydantic records of the stage contract: stage runs and pipeline run records."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

StageStatus = Literal["pending", "running", "cache_hit", "computed", "gate_failed", "failed", "skipped"]


class StageRun(BaseModel):
    stage: str
    version: str
    status: StageStatus = "pending"
    reason: str = ""                       # why it recomputed, failed or was skipped
    inputs: dict[str, str] = Field(default_factory=dict)   # input stage -> version
    started_at: str | None = None
    seconds: float | None = None
    flow_run_id: str | None = None
    location: str | None = None            # where the committed (or rejected) output lives
    metrics: dict[str, Any] = Field(default_factory=dict)


class RunRecord(BaseModel):
    run_id: str
    created_at: str
    status: Literal["running", "completed", "failed"] = "running"
    orchestrator: str = ""                 # prefect (ephemeral|server), or none when nothing ran
    flow_run_id: str | None = None         # the k2-pipeline flow run
    rerun_of: str | None = None
    error: str | None = None
    config: dict[str, Any]
    stages: list[StageRun]
    # where the command's own time went, seconds: plan_s (config + plan, from the command's start),
    # prefect_import_s, api_wait_s (the local Prefect server's start; ~0 when reused), pipeline_s
    timings: dict[str, float] = Field(default_factory=dict)
    promotion: dict[str, Any] | None = None  # the promotion gate's decision, when the run evaluated

    def stage(self, name: str) -> StageRun:
        for s in self.stages:
            if s.stage == name:
                return s
        raise KeyError(name)
