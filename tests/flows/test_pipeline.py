"""The Prefect spine, in process under prefect_test_harness."""
import pytest

from k2core.config import load_config
from k2core.runs import load_run
from k2core.store import open_store
from tests.conftest import write_jsonl

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _artifacts(key):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))


def _flow_run(fr_id):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(fr_id)


@pytest.fixture
def setup(tmp_path, toy_stages):
    src = write_jsonl(tmp_path / "c.jsonl", [{"text": f"doc {i}"} for i in range(12)])
    cfg = load_config(overrides=[f"ingest.source={src}", f"store.uri={tmp_path / 'store'}"])
    return cfg, open_store(cfg.store.uri)


def test_pipeline_runs_stages_as_nested_flows_then_hits_cache(setup):
    from flows.pipeline import k2_pipeline

    cfg, store = setup
    state = k2_pipeline(config=cfg, stages="ingest,toy_wc", run_id="r1", return_state=True)
    assert state.is_completed(), state.message
    rec = load_run(store, "r1")
    assert rec.status == "completed" and [s.status for s in rec.stages] == ["computed", "computed"]
    assert rec.stages[0].reason == "first run of this stage in the store"
    assert rec.stages[1].metrics["rows"] == 12 and rec.flow_run_id
    for s in rec.stages:  # each stage ran as its own flow run, nested under the pipeline run
        fr = _flow_run(s.flow_run_id)
        assert fr.state.is_completed() and fr.parent_task_run_id is not None
        assert fr.name == f"{s.stage}@{s.version[:8]}"          # found in the UI by stage and version
    md = _artifacts("k2-ingest-summary")
    assert md and f"`{rec.stages[0].version}`" in md[0].data and "## Quality gate: passed" in md[0].data
    assert _artifacts("k2-toy-wc-gate")
    plots = _artifacts("k2-toy-wc-plots")       # the stage's PNGs, inline
    assert plots and "![counts.png](data:image/png;base64,iVBORw0KGgo" in plots[0].data
    progress = _artifacts("k2-ingest-progress")  # the live progress artifact, closed at 100%
    assert progress and progress[0].type == "progress" and float(progress[0].data) == 100.0
    state = k2_pipeline(config=cfg, stages="ingest,toy_wc", run_id="r2", return_state=True)
    assert [s.status for s in load_run(store, "r2").stages] == ["cache_hit", "cache_hit"]


def test_failed_gate_stops_the_run_and_skips_downstream(setup):
    from flows.pipeline import k2_pipeline

    cfg, store = setup
    state = k2_pipeline(config=cfg, stages="ingest,toy_wc,toy_strict,toy_after", run_id="r3", return_state=True)
    assert state.is_failed() and "gate 'toy' failed: metric:rows: observed 12" in state.message
    rec = load_run(store, "r3")
    assert [s.status for s in rec.stages] == ["computed", "computed", "gate_failed", "skipped"]
    assert rec.status == "failed" and "upstream stage toy_strict failed" in rec.stages[3].reason
    assert "rejected/toy_strict/" in rec.stages[2].location
    assert not store.artifacts("toy_strict") and not store.artifacts("toy_after")
    table = _artifacts("k2-toy-strict-gate")
    assert table and "metric:rows" in str(table[0].data)


def test_rerun_pins_upstream_versions(setup):
    from flows.pipeline import k2_pipeline

    cfg, store = setup
    k2_pipeline(config=cfg, stages="ingest,toy_wc", run_id="r4")
    ingest_v = load_run(store, "r4").stage("ingest").version
    changed = cfg.model_copy(update={"ingest": cfg.ingest.model_copy(update={"max_docs": 3})})
    state = k2_pipeline(config=changed, stages="toy_wc", run_id="r5", pinned={"ingest": ingest_v},
                        rerun_of="r4", return_state=True)
    assert state.is_completed()
    rec = load_run(store, "r5")
    assert rec.rerun_of == "r4" and rec.stages[0].inputs == {"ingest": ingest_v}
    # config changed (max_docs is in the section toy_wc hashes), upstream stayed pinned: 12 rows
    assert rec.stages[0].status == "computed" and rec.stages[0].metrics["rows"] == 12


def test_lone_stage_flow_is_named_by_stage_and_version_once_planned(setup):
    from flows.stage import stage_flow

    cfg, store = setup
    state = stage_flow("ingest")(config=cfg, return_state=True)
    assert state.is_completed(), state.message
    [(_, version)] = store.artifacts("ingest")
    assert _flow_run(state.state_details.flow_run_id).name == f"ingest@{version[:8]}"
