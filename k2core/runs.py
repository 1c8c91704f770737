"""Run records (one per pipeline run, in the store) and the catalog: show, lineage, ID lookup."""
from __future__ import annotations

import secrets
import time
from datetime import datetime, timezone
from typing import Any, Protocol

from k2core.errors import K2Error
from k2core.store import Store, StoreError, check_key
from schemas.records import RunRecord, StageRun


# What a run record needs of a planned stage and of a stage's outcome (k2core.stage's PlannedStage
# and StageOutcome): the stage contract builds on run records, not the other way round.
class Planned(Protocol):
    name: str
    version: str
    inputs: dict[str, str]
    reason: str


class Outcome(Protocol):
    stage: str
    status: str
    reason: str
    seconds: float
    location: str
    metrics: dict[str, Any]


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)


def _key(run_id: str) -> str:
    return check_key(f"runs/{run_id}.json")


class RunRecorder:
    """Creates and updates one run record; every update rewrites the record atomically."""

    def __init__(self, store: Store, record: RunRecord):
        self.store, self.record = store, record

    @classmethod
    def start(cls, store: Store, run_id: str, config: dict[str, Any], planned: list[Planned],
              orchestrator: str, rerun_of: str | None = None,
              flow_run_id: str | None = None) -> "RunRecorder":
        record = RunRecord(run_id=run_id, created_at=now_iso(), orchestrator=orchestrator, config=config,
                           rerun_of=rerun_of, flow_run_id=flow_run_id,
                           stages=[StageRun(stage=p.name, version=p.version, inputs=p.inputs,
                                            reason=p.reason) for p in planned])
        rec = cls(store, record)
        rec.save()
        return rec

    @classmethod
    def load(cls, store: Store, run_id: str) -> "RunRecorder":
        return cls(store, load_run(store, run_id))

    def save(self) -> None:
        self.store.put_json(_key(self.record.run_id), self.record.model_dump(mode="json"))

    def stage_started(self, name: str, flow_run_id: str | None = None) -> None:
        s = self.record.stage(name)
        s.status, s.started_at, s.flow_run_id = "running", now_iso(), flow_run_id or s.flow_run_id
        self.save()

    def stage_done(self, outcome: Outcome, flow_run_id: str | None = None) -> None:
        s = self.record.stage(outcome.stage)
        s.status, s.seconds, s.location = outcome.status, round(outcome.seconds, 3), outcome.location
        s.reason = (outcome.reason or s.reason) if outcome.status == "computed" else "cached"
        s.metrics = outcome.metrics
        s.flow_run_id = flow_run_id or s.flow_run_id
        s.started_at = s.started_at or now_iso()
        self.save()

    def stage_failed(self, name: str, error: Exception, gate_failed: bool) -> None:
        s = self.record.stage(name)
        s.status, s.reason = ("gate_failed" if gate_failed else "failed"), str(error)
        s.location = getattr(error, "location", None)
        for other in self.record.stages:
            if other.status == "pending":
                other.status, other.reason = "skipped", f"upstream stage {name} failed"
        self.finish(error=str(error))

    def finish(self, error: str | None = None, flow_run_id: str | None = None) -> None:
        self.record.status = "failed" if error else "completed"
        self.record.error = error
        self.record.flow_run_id = flow_run_id or self.record.flow_run_id
        self.save()


def load_run(store: Store, run_id: str) -> RunRecord:
    try:
        return RunRecord.model_validate(store.get_json(_key(run_id)))
    except StoreError:
        raise K2Error(f"no run {run_id!r} in {store.uri} (see `k2 runs`)") from None


def list_runs(store: Store) -> list[RunRecord]:
    out = []
    for key in store.list("runs/"):
        if key.endswith(".json"):
            out.append(RunRecord.model_validate(store.get_json(key)))
    return sorted(out, key=lambda r: r.created_at, reverse=True)


def resolve(store: Store, ident: str) -> tuple[str, Any]:
    """Find what `ident` names: ("run", RunRecord) or ("artifact", Artifact).

    Accepted: a run id; `stage/version`; a version or unique version prefix (>= 6 chars);
    a stage name (its newest artifact).
    """
    if "/" not in ident:
        try:
            check_key(f"runs/{ident}.json")
            if store.exists(f"runs/{ident}.json"):
                return "run", load_run(store, ident)
        except StoreError:
            raise K2Error(f"{ident!r} is not a valid run id, artifact version or stage name") from None
    arts = store.artifacts()
    if "/" in ident:
        stage, _, version = ident.partition("/")
        matches = [(s, v) for s, v in arts if s == stage and v.startswith(version)]
    else:
        newest = store.newest(ident) if any(s == ident for s, _ in arts) else None
        if newest is not None:  # a stage name: its newest artifact
            return "artifact", newest
        matches = [(s, v) for s, v in arts if len(ident) >= 6 and v.startswith(ident)]
    if not matches:
        raise K2Error(f"nothing named {ident!r} in {store.uri} (a run id, stage/version, version or stage)")
    if len(matches) > 1:
        raise K2Error(f"{ident!r} is ambiguous: " + ", ".join(f"{s}/{v}" for s, v in matches[:5]))
    return "artifact", store.artifact(*matches[0])


def lineage(store: Store, stage: str, version: str) -> dict[str, Any]:
    """The artifact's inputs, recursively, down to the raw sources."""
    art = store.artifact(stage, version)
    node: dict[str, Any] = {"stage": stage, "version": version,
                            "created_at": art.manifest.get("created_at"),
                            "code_version": art.manifest.get("code_version"), "inputs": []}
    for name, ref in art.manifest.get("inputs", {}).items():
        if name == "source":
            node["inputs"].append({"source": ref})
        else:
            try:
                node["inputs"].append(lineage(store, ref["stage"], ref["version"]))
            except StoreError:
                node["inputs"].append({"stage": ref["stage"], "version": ref["version"], "missing": True})
    return node
