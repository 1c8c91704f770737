"""The pipeline: stage selection, versions known before anything runs, why a stage recomputes, the
registry."""
import dataclasses

import pytest

from k2core import pipeline as pl
from k2core.errors import K2Error
from k2core.pipeline import plan, select_stages
from k2core.stage import StageSpec
from tests.conftest import write_jsonl
from tests.k2core.test_stage import cfg_for, run_all


@pytest.fixture
def corpus(tmp_path):
    return write_jsonl(tmp_path / "c.jsonl", [{"text": f"doc {i} text"} for i in range(20)])


def test_select_stages(toy_stages):
    built_in = ["ingest", "curate", "rephrase", "tokenize", "pretrain", "tools", "synthesize", "sft", "rl", "evaluate"]
    assert select_stages(None)[:11] == [*built_in, "toy_wc"]
    assert select_stages("ingest..toy_strict") == [*built_in, "toy_wc", "toy_strict"]
    assert select_stages("pretrain..synthesize") == ["pretrain", "tools", "synthesize"]
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
    spec = pl.get_stage("toy_wc")
    monkeypatch.setitem(pl._REGISTRY, "toy_wc", dataclasses.replace(spec, code_version="2"))
    assert plan(cfg_for(corpus), store, ["toy_wc"])[0].code.startswith("2+")


def test_recompute_reason_names_what_changed(store, corpus):
    run_all(cfg_for(corpus, "ingest.max_docs=5"), store, ["ingest"])
    [p] = plan(cfg_for(corpus, "ingest.max_docs=6"), store, ["ingest"])
    assert not p.cached and p.reason == "config changed: ingest.max_docs"
    write_jsonl(corpus, [{"text": "other"}])
    [p] = plan(cfg_for(corpus, "ingest.max_docs=5"), store, ["ingest"])
    assert p.reason == "source data changed"


def test_registering_a_name_twice_raises(toy_stages):
    spec = pl.get_stage("toy_wc")
    with pytest.raises(K2Error, match="stage toy_wc is registered already"):
        pl.register(dataclasses.replace(spec))
    with pytest.raises(K2Error, match="input stage nowhere must be registered first"):
        pl.register(StageSpec("toy_orphan", "ingest", ("nowhere",), spec.run, spec.suite, "1"))
    assert [s.name for s in pl.stages()].count("toy_wc") == 1 and "toy_orphan" not in pl._REGISTRY


def test_evaluate_reads_only_the_models_it_scores(tmp_path):
    """evaluate's inputs follow its config: the models it scores, synthesize only for agentic."""
    from k2core.config import load_config
    from k2core.pipeline import get_stage, plan
    from k2core.store import open_store

    spec = get_stage("evaluate")
    cfg = load_config(overrides=[f"store.uri={tmp_path}"])
    assert spec.inputs_for(cfg) == ("pretrain", "sft", "rl", "synthesize") == spec.inputs_for(None)
    cfg = load_config(overrides=[f"store.uri={tmp_path}", "evaluate.models=[sft]", "evaluate.suites=[humaneval,mcq]"])
    assert spec.inputs_for(cfg) == ("sft",)
    [p] = plan(cfg, open_store(str(tmp_path)), ["evaluate"])
    assert set(p.inputs) == {"sft"}
    needed = {q.name for q in plan(cfg, open_store(str(tmp_path)), ["evaluate", "sft"])}
    assert needed == {"evaluate", "sft"}
