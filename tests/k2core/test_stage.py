"""The stage contract: a failing gate blocks the commit, a crash leaves nothing visible, --force
recomputes; lineage and lookup of what was committed."""
import multiprocessing
import os

import pytest

from k2core.config import load_config
from k2core.errors import K2Error
from k2core.pipeline import plan
from k2core.runs import lineage, resolve
from k2core.stage import GateFailed, StageFailed, execute
from tests.conftest import write_jsonl


@pytest.fixture
def corpus(tmp_path):
    return write_jsonl(tmp_path / "c.jsonl", [{"text": f"doc {i} text"} for i in range(20)])


def cfg_for(src, *sets):
    return load_config(overrides=[f"ingest.source={src}", *sets])


def run_all(cfg, store, names, **kw):
    return [execute(p, cfg, store, log=lambda m: None, **kw) for p in plan(cfg, store, names)]


def test_failing_gate_blocks_commit(store, corpus, toy_stages):
    cfg = cfg_for(corpus)
    run_all(cfg, store, ["ingest", "toy_wc"])
    [p] = plan(cfg, store, ["toy_strict"])
    with pytest.raises(GateFailed) as e:
        execute(p, cfg, store)
    assert "metric:rows: observed 20, expected min 1000000000" in str(e.value)
    assert not store.has_artifact("toy_strict", p.version)
    assert "rejected/toy_strict/" in e.value.location and store.list("rejected/toy_strict/")
    [after] = plan(cfg, store, ["toy_after"])  # downstream cannot run on an uncommitted input
    with pytest.raises(StageFailed, match="needs toy_strict/.* which is not committed"):
        execute(after, cfg, store)


def _crash_child(cfg, store_uri, name):
    from k2core.store import open_store

    os.environ["K2_TEST_CRASH"] = name
    [p] = plan(cfg, open_store(store_uri), [name])
    execute(p, cfg, open_store(store_uri))


def test_crash_mid_stage_leaves_nothing_and_rerun_completes(tmp_path, corpus, toy_stages):
    from k2core.store import open_store

    store = open_store(str(tmp_path / "store"))
    cfg = cfg_for(corpus)
    run_all(cfg, store, ["ingest"])
    proc = multiprocessing.get_context("fork").Process(target=_crash_child, args=(cfg, store.uri, "toy_wc"))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 9
    [p] = plan(cfg, store, ["toy_wc"])
    assert not p.cached and not store.has_artifact("toy_wc", p.version)
    assert (store.scratch_root() / "toy_wc" / p.version / "data" / "half.parquet").exists()  # invisible leftover
    assert [o.status for o in run_all(cfg, store, ["toy_wc"])] == ["computed"]
    art = store.artifact("toy_wc", p.version)
    assert art.metrics["rows"] == 20 and art.files() == ["counts.png", "data/counts.parquet"]


def test_force_recomputes(store, corpus):
    cfg = cfg_for(corpus)
    run_all(cfg, store, ["ingest"])
    [o] = run_all(cfg, store, ["ingest"], force=True)
    assert o.status == "computed" and o.reason == "forced (--force)" and o.manifest["forced"] is True


def test_lineage_and_resolve(store, corpus, toy_stages):
    cfg = cfg_for(corpus)
    ing, wc = run_all(cfg, store, ["ingest", "toy_wc"])
    tree = lineage(store, "toy_wc", wc.version)
    assert tree["inputs"][0]["stage"] == "ingest" and tree["inputs"][0]["version"] == ing.version
    assert tree["inputs"][0]["inputs"][0]["source"]["uri"] == str(corpus.resolve())
    assert resolve(store, "toy_wc")[1].version == wc.version
    assert resolve(store, f"ingest/{ing.version[:8]}")[1].version == ing.version
    assert resolve(store, wc.version[:10])[1].stage == "toy_wc"
    with pytest.raises(K2Error, match="nothing named"):
        resolve(store, "zzzzzzzz")
