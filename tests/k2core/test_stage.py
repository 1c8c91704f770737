import dataclasses
import multiprocessing
import os

import pytest

from k2core import stage as st
from k2core.config import load_config
from k2core.runs import lineage, resolve
from k2core.stage import GateFailed, K2Error, StageFailed, execute, plan, select_stages
from tests.conftest import write_jsonl


@pytest.fixture
def corpus(tmp_path):
    return write_jsonl(tmp_path / "c.jsonl", [{"text": f"doc {i} text"} for i in range(20)])


def cfg_for(src, *sets):
    return load_config(overrides=[f"ingest.source={src}", *sets])


def run_all(cfg, store, names, **kw):
    return [execute(p, cfg, store, log=lambda m: None, **kw) for p in plan(cfg, store, names)]


def test_select_stages(toy_stages):
    assert select_stages(None)[:6] == ["ingest", "curate", "rephrase", "tokenize", "pretrain", "toy_wc"]
    assert select_stages("ingest..toy_strict") == ["ingest", "curate", "rephrase", "tokenize", "pretrain", "toy_wc",
                                                   "toy_strict"]
    assert select_stages("toy_strict,ingest") == ["ingest", "toy_strict"]
    assert select_stages("toy_wc..") == ["toy_wc", "toy_strict", "toy_after"]
    with pytest.raises(K2Error, match="unknown stage 'nope'"):
        select_stages("ingest,nope")
    with pytest.raises(K2Error, match="comes after"):
        select_stages("toy_strict..ingest")


def test_same_inputs_same_version_then_cache_hit(store, corpus, toy_stages):
    cfg = cfg_for(corpus)
    first = run_all(cfg, store, ["ingest", "toy_wc"])
    assert [o.status for o in first] == ["computed", "computed"]
    assert first[1].metrics["rows"] == 20
    again = plan(cfg, store, ["ingest", "toy_wc"])
    assert [p.version for p in again] == [o.version for o in first] and all(p.cached for p in again)
    assert [o.status for o in run_all(cfg, store, ["ingest", "toy_wc"])] == ["cache_hit", "cache_hit"]


def test_config_source_and_code_changes_make_new_versions(store, corpus, toy_stages, monkeypatch):
    base = {p.name: p.version for p in plan(cfg_for(corpus), store, ["ingest", "toy_wc"])}
    changed = {p.name: p.version for p in plan(cfg_for(corpus, "ingest.max_docs=5"), store, ["ingest", "toy_wc"])}
    assert changed["ingest"] != base["ingest"] and changed["toy_wc"] != base["toy_wc"]  # propagates
    # settings outside the stage's own section do not change its version
    assert plan(cfg_for(corpus, "store.uri=/elsewhere", "seed=7"), store, ["ingest"])[0].version == base["ingest"]
    write_jsonl(corpus, [{"text": "new data"}])  # new source content
    assert plan(cfg_for(corpus), store, ["ingest"])[0].version != base["ingest"]
    spec = st.get_stage("toy_wc")
    monkeypatch.setitem(st._REGISTRY, "toy_wc", dataclasses.replace(spec, code_version="2"))
    assert plan(cfg_for(corpus), store, ["toy_wc"])[0].code.startswith("2+")


def test_recompute_reason_names_what_changed(store, corpus):
    run_all(cfg_for(corpus, "ingest.max_docs=5"), store, ["ingest"])
    [p] = plan(cfg_for(corpus, "ingest.max_docs=6"), store, ["ingest"])
    assert not p.cached and p.reason == "config changed: ingest.max_docs"
    write_jsonl(corpus, [{"text": "other"}])
    [p] = plan(cfg_for(corpus, "ingest.max_docs=5"), store, ["ingest"])
    assert p.reason == "source data changed"


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
