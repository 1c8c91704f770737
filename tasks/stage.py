"""Tasks of a stage flow: plan, execute (run -> gate -> commit), publish the summary and gate."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, \
    create_table_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from k2core.config import PipelineConfig
from k2core.errors import K2Error
from k2core.pipeline import plan
from k2core.report import stage_markdown
from k2core.stage import PlannedStage, StageOutcome, execute
from k2core.store import Store


def artifact_key(stage: str, what: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return f"k2-{stage}-{what}".lower().replace("_", "-")


@task(name="plan-stage", cache_policy=NO_CACHE)
def plan_stage(cfg: PipelineConfig, store: Store, stage: str, pinned: dict[str, str]) -> PlannedStage:
    """Resolve the stage's version and whether it is already committed."""
    [planned] = plan(cfg, store, [stage], pinned=pinned)
    return planned


@task(name="execute-stage", cache_policy=NO_CACHE)
def execute_stage(planned: PlannedStage, cfg: PipelineConfig, store: Store, force: bool,
                  run_id: str | None, flow_run_id: str | None) -> StageOutcome | K2Error:
    """Reuse the committed artifact or run, gate and commit the stage (k2core.stage.execute).

    Expected failures (a failed gate, an unreadable source) come back as the K2Error value, so
    the flow reports them in one line; anything else is a bug and raises with its traceback.
    """
    logger = get_run_logger()
    progress_id = None

    def to_prefect(done: float, total: float | None, desc: str) -> None:
        nonlocal progress_id
        pct = 100.0 * done / total if total else 0.0
        if progress_id is None:
            progress_id = create_progress_artifact(pct, key=artifact_key(planned.name, "progress"),
                                                   description=f"{desc}: progress")
        else:
            update_progress_artifact(progress_id, min(pct, 100.0))

    try:
        return execute(planned, cfg, store, force=force, run_id=run_id, flow_run_id=flow_run_id,
                       hooks=(to_prefect,), log=logger.info)
    except K2Error as e:
        logger.error(str(e))
        return e


@task(name="publish-summary", retries=2, cache_policy=NO_CACHE)
def publish_summary(stage: str, version: str, status: str, manifest: dict[str, Any],
                    gate: dict[str, Any] | None, location: str, reason: str = "") -> None:
    """Markdown summary (version, inputs, metrics, gate) and the gate table in the Prefect UI."""
    create_markdown_artifact(stage_markdown(stage, version, status, manifest, gate, location, reason),
                             key=artifact_key(stage, "summary"), description=f"{stage} {status}")
    if gate and gate.get("results"):
        rows = [{k: str(v) for k, v in r.items()} for r in gate["results"]]
        create_table_artifact(rows, key=artifact_key(stage, "gate"),
                              description=f"{stage} quality gate: {'passed' if gate['success'] else 'FAILED'}")


@task(name="publish-plots", retries=2, cache_policy=NO_CACHE)
def publish_plots(stage: str, version: str, store: Store, max_bytes: int = 2 << 20) -> int:
    """The artifact's top-level PNG plots (the pre-training loss curve, …) inline in one markdown
    artifact, so the UI shows them without access to the store. Returns how many were published."""
    import base64

    art = store.artifact(stage, version)
    pngs = [f for f in art.files("") if f.endswith(".png") and "/" not in f]
    parts = []
    for rel in pngs:
        data = Path(art.path(rel)).read_bytes()
        if len(data) <= max_bytes:
            parts.append(f"### {rel}\n\n![{rel}](data:image/png;base64,{base64.b64encode(data).decode()})")
    if parts:
        create_markdown_artifact(f"# {stage} {version}: plots\n\n" + "\n\n".join(parts),
                                 key=artifact_key(stage, "plots"), description=f"{stage} plots")
    return len(parts)
