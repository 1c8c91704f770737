"""The `curate` stage end to end: filters, dedup across shards, rejects with reasons, the gate."""
from __future__ import annotations

import json
import os
import random

import pyarrow.parquet as pq
import pytest

from k2core.config import load_config
from k2core.pipeline import plan
from k2core.stage import GateFailed, execute
from k2core.store import open_store
from tests.conftest import write_jsonl

NOUNS = "river mill bridge library school church museum lake forest market square council newspaper " \
        "farmer teacher doctor baker miller painter sailor station harbour garden castle tower road".split()
PLACES = "the valley|the old town|the north|the city|the hills|the coast|the village|the region".split("|")
VERBS = "built|visited|painted|repaired|described|opened|closed|watched|praised|measured".split("|")
ADJS = "old new small large quiet busy famous forgotten wooden stone bright narrow".split()
TIMES = "spring|summer|winter|autumn|morning|evening|week|year".split("|")


def sentence(rng: random.Random) -> str:
    return (f"The {rng.choice(ADJS)} {rng.choice(NOUNS)} in {rng.choice(PLACES)} {rng.choice(VERBS)} the "
            f"{rng.choice(ADJS)} {rng.choice(NOUNS)} with a {rng.choice(ADJS)} {rng.choice(NOUNS)} every "
            f"{rng.choice(TIMES)}.")


def prose(rng: random.Random) -> str:
    return " ".join(sentence(rng) for _ in range(8)) + "\n" + " ".join(sentence(rng) for _ in range(6)) + "\n"


def corpus(tmp_path, big: bool = False):
    rng = random.Random(0)
    docs = [prose(rng) for _ in range(12)]
    w = docs[0].split()
    w[5], w[40] = "harvest", "lantern"                                          # two words changed
    near = " ".join(w)
    rows = [{"text": d} for d in docs] + [
        {"text": near},                                                         # near duplicate of doc 0
        {"text": docs[1].replace(" ", "  ").replace(".", " .")},               # exact duplicate once normalised
        {"text": "Это обычный русский текст о городе, реке и мельнице. " * 12},  # not English
        {"text": "\ufffd\x01\x02" * 200 + docs[2]},                             # binary-looking
        {"text": "Too short."},
        {"text": "import os\n\n\ndef main(argv):\n    for a in argv:\n        print(os.path.basename(a))\n"
                 "    return 0\n\n\nclass Runner:\n    pass\n" * 3},              # code, judged as code
    ]
    if big:
        rows.append({"text": "word " * (10 << 20)})                              # one 50 MB document
    return write_jsonl(tmp_path / "corpus.jsonl", rows)


def run(tmp_path, src, *sets):
    cfg = load_config(overrides=[f"ingest.source={src}", "curate.dask_workers=1", *sets])   # later sets win
    store = open_store(str(tmp_path / "store"))
    outs = [execute(p, cfg, store, log=lambda m: None) for p in plan(cfg, store, ["ingest", "curate"])]
    art = store.artifact("curate", outs[-1].version)
    docs = pq.read_table([art.path(f) for f in art.files("data/")]).to_pylist()
    rej = pq.read_table([art.path(f) for f in art.files("rejects/")]).to_pylist()
    return art.metrics, docs, rej


def test_filters_dedup_and_rejects(tmp_path):
    m, docs, rej = run(tmp_path, corpus(tmp_path, big=True), "ingest.shard_docs=5")
    reasons = {r["reason"] for r in rej}
    assert {"english:non_latin_script", "binary:binary_looking", "length:too_short", "length:too_long",
            "dedup:near_duplicate", "dedup:exact_duplicate"} <= reasons
    assert m["docs_in"] == 19 and m["docs_out"] == len(docs) == 13      # 12 prose + the code file
    assert m["near_duplicates"] == 1 and m["exact_duplicates"] == 1
    assert m["dropped_by_filter"]["length"] == 2 and m["domains"] == {"code": 1, "prose": 12}
    assert len({d["id"] for d in docs}) == len(docs) and len({d["exact_key"] for d in docs}) == len(docs)
    near = next(r for r in rej if r["reason"] == "dedup:near_duplicate")
    kept = near["detail"].split("duplicates kept id ")[1]
    assert kept in {d["id"] for d in docs} and near["raw"].startswith("The ")      # the text is kept too
    assert m["drop_fraction"] == pytest.approx(6 / 19)


def test_the_dask_cluster_leaves_this_process_environment_alone(tmp_path, monkeypatch):
    """Dask's nanny sets OMP_NUM_THREADS=1 for its workers in the parent's environment; torch
    imported afterwards (pretrain, in the same run) would train on one thread."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    before = dict(os.environ)
    m, _, _ = run(tmp_path, corpus(tmp_path), "curate.dask_workers=2")
    assert m["dask"] == "LocalCluster of 2" and dict(os.environ) == before


def test_dedup_does_not_depend_on_sharding(tmp_path):
    src = corpus(tmp_path)
    _, one, _ = run(tmp_path / "a", src, "ingest.shard_docs=100")
    _, many, _ = run(tmp_path / "b", src, "ingest.shard_docs=2")
    assert sorted(d["id"] for d in one) == sorted(d["id"] for d in many)


def test_one_shard_is_cut_into_parts_for_several_workers_with_the_same_decisions(tmp_path):
    """One ingest shard, two workers: row ranges of similar size on a LocalCluster; the kept
    documents and every reject reason equal the single-worker run in this process."""
    src = corpus(tmp_path)
    m1, one, rej1 = run(tmp_path / "a", src, "ingest.shard_docs=100")
    m2, two, rej2 = run(tmp_path / "b", src, "ingest.shard_docs=100", "curate.dask_workers=2")
    assert (m1["shards"], m1["parts"], m1["dask"]) == (1, 1, "in process")
    assert m2["shards"] == 1 and m2["parts"] >= 4 and m2["dask"] == "LocalCluster of 2"
    assert sorted(d["id"] for d in one) == sorted(d["id"] for d in two)
    assert sorted((r["reason"], r["detail"]) for r in rej1) == sorted((r["reason"], r["detail"]) for r in rej2)
    assert m1["dropped_by_reason"] == m2["dropped_by_reason"] and m1["domains"] == m2["domains"]


def test_everything_filtered_is_a_gate_failure_not_a_crash(tmp_path):
    src = write_jsonl(tmp_path / "c.jsonl", [{"text": f"tiny {i}"} for i in range(5)])
    with pytest.raises(GateFailed) as e:
        run(tmp_path, src)
    msg = str(e.value)
    assert "curate" in msg and ("row count" in msg.lower() or "docs_out" in msg or "drop_fraction" in msg)
