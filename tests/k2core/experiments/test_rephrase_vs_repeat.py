"""`k2 experiment rephrase-vs-repeat`: probe questions come from the documents, the three arms get
the same token budget from the same initialisation, the teacher's rewrites are what the arms train on."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from k2core.config import RephraseRepeatExperimentConfig
from k2core.experiments import ExperimentError
from k2core.experiments.rephrase_vs_repeat import arm_streams, build_probe, run

FACTS = [
    "The river Avon flows through the town of Bath. In 1742 the Corn Exchange opened beside the quay, "
    "and merchants from Bristol came every Tuesday. The mayor, Thomas Kingsley, kept 14 barges on the water.",
    "Mount Ardell rises 2318 metres above the valley of Senn. The first recorded ascent was made by Clara "
    "Holm in 1861. Her guide, Piet Voss, carried 3 ropes and a lantern from Gremont.",
    "The library of Castel Mora holds 48000 volumes. It was founded by Bishop Anselm in 1203 and rebuilt "
    "after the fire of 1577. Scholars from Padua and Leiden still visit its reading room.",
    "The ferry from Harwick to Oslen sails twice a day. Its captain, Ines Barro, has crossed 9000 times. "
    "In stormy weather the crossing moves to the harbour at Lindqvist, 12 kilometres north.",
]


def _docs():
    return [{"id": f"d{i}", "text": t, "domain": "prose"} for i, t in enumerate(FACTS)]


def test_probe_questions_are_cut_from_the_documents():
    docs = _docs()
    items = build_probe(docs, n_items=50, choices=4, seed=0)
    by_id = {d["id"]: d["text"] for d in docs}
    assert len(items) >= 8
    for it in items:
        assert it["prefix"] + it["answer"] in by_id[it["doc"]]
        assert len(it["prefix"]) >= 20 and it["answer"] in it["options"]
        assert len(it["options"]) == 4 == len(set(it["options"]))
        assert it["kind"] == ("number" if it["answer"][0].isdigit() else "name")
    assert {"1742", "Bristol"} & {it["answer"] for it in items}
    assert build_probe(docs, 50, 4, 0) == items                  # deterministic under the seed


def small_config(tmp_path) -> RephraseRepeatExperimentConfig:
    """A JSONL source of FACTS and a real (randomly initialised) tiny teacher checkpoint."""
    from k2core.data.tokenize import save_tokenizer, train_tokenizer
    from k2core.model import K2ForCausalLM, ModelConfig
    from k2core.model.checkpoint import save_checkpoint

    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(FACTS)))
    ckpt = tmp_path / "teacher" / "model"
    tok = train_tokenizer(FACTS * 5, vocab_size=300, min_frequency=1)
    torch.manual_seed(0)
    save_checkpoint(K2ForCausalLM(ModelConfig.preset("tiny", vocab_size=tok.get_vocab_size())).init_weights(0), ckpt)
    save_tokenizer(tok, ckpt, seq_len=128)
    return RephraseRepeatExperimentConfig.model_validate({
        "source": str(src), "store": {"uri": str(tmp_path / "store")}, "docs": 4, "min_chars": 100, "epochs": 2,
        "rephrasings": 2, "probe_items": 12, "batch": 2, "seq": 64,
        "rephrase": {"teacher": {"checkpoint": str(ckpt)}, "max_tokens": 24, "chunk_chars": 200}})


def test_equal_budget_streams_and_a_full_run_from_the_cli_with_a_real_teacher(tmp_path, capsys):
    from flows.cli import main

    assert main(["experiment", "rephrase-vs-repeat", "--no-flow", "--set", "choices=1"]) == 2
    assert "choices = 1" in capsys.readouterr().err
    cfg = small_config(tmp_path)
    ckpt = cfg.rephrase.teacher.checkpoint
    args = ["experiment", "rephrase-vs-repeat", "--no-flow", "--json", "--out", str(tmp_path / "out")]
    for key, value in [("source", cfg.source), ("store.uri", cfg.store.uri), ("docs", 4), ("min_chars", 100), ("epochs", 2),
                       ("rephrasings", 2), ("probe_items", 12), ("batch", 2), ("seq", 64),
                       ("rephrase.max_tokens", 24), ("rephrase.chunk_chars", 200), ("rephrase.teacher.checkpoint", ckpt)]:
        args += ["--set", f"{key}={value}"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "raw × 2 epochs" in out and "2 rephrasings × 1 epoch" in out and "report:" in out
    s = json.loads(out.strip().splitlines()[-1])

    assert s["teacher"] == f"native:{ckpt}" and s["documents"] == 4
    reph = [json.loads(x) for x in (tmp_path / "out" / "rephrasings.jsonl").read_text().splitlines()]
    assert len(reph) == 8 and {r["k"] for r in reph} == {0, 1} and all(r["text"] for r in reph)
    assert s["fidelity"]["rephrasings"] == 8 and 0 <= s["fidelity"]["passing_fidelity"] <= 8
    # every arm: the same steps on its own stream, which holds exactly what it should
    raw_bytes = sum(len(t.encode()) + 2 for t in FACTS)
    assert s["arms"]["raw"]["stream_tokens"] == 2 * raw_bytes
    texts = {(r["source_id"], r["k"]): r["text"] for r in reph}
    one = sum(len(texts[(f"d{i}", 0)].encode()) + 2 for i in range(4))
    many = sum(len(t.encode()) + 2 for t in texts.values())
    assert s["arms"]["one_rephrasing"]["stream_tokens"] == 2 * one
    assert s["arms"]["many_rephrasings"]["stream_tokens"] == many
    assert s["steps"] == 2 * raw_bytes // (2 * 64) and s["budget_tokens"] == s["steps"] * 2 * 64
    m = pd.read_parquet(tmp_path / "out" / "metrics.parquet")
    assert m.groupby("arm").step.count().to_dict() == {a: s["steps"] for a in s["arms"]}
    assert m.loss.iloc[0] == pytest.approx(m[m.arm == "one_rephrasing"].loss.iloc[0], rel=0.2)  # same init
    for a in s["arms"].values():
        assert a["accuracy"] == a["correct"] / s["probe_items"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert f"native:{ckpt}" in report and f"{s['arms']['raw']['accuracy']:.3f}" in report
    assert (tmp_path / "out" / "accuracy.png").stat().st_size > 10_000
    assert main([*args, "--set", "rephrase.teacher.checkpoint=" + str(tmp_path / "nowhere")]) != 0
    assert "no config.json" in capsys.readouterr().err


def test_streams_follow_the_arm_definitions():
    docs = _docs()
    reph = {d["id"]: [f"A{d['id']}", f"B{d['id']}", f"C{d['id']}"] for d in docs}
    cfg = RephraseRepeatExperimentConfig(epochs=3, rephrasings=3)
    st = {k: bytes(v.tolist()).decode() for k, v in arm_streams(docs, reph, cfg).items()}
    assert st["one_rephrasing"].count("Ad0") == 3 and "Bd0" not in st["one_rephrasing"]
    assert all(st["many_rephrasings"].count(f"{x}d1") == 1 for x in "ABC")
    assert st["raw"].count("Mount Ardell") == 3


def test_no_teacher_and_bad_sources_are_named(tmp_path):
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in FACTS))
    cfg = RephraseRepeatExperimentConfig(source=str(src), store={"uri": str(tmp_path / "empty-store")}, min_chars=100)
    with pytest.raises(ExperimentError, match="no teacher"):
        run(cfg, tmp_path / "out", log=lambda m: None)
    with pytest.raises(ExperimentError, match="no curate artifact"):
        run(RephraseRepeatExperimentConfig(store={"uri": str(tmp_path / "empty-store")}), tmp_path / "o2", log=lambda m: None)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x"}\nnot json\n')
    with pytest.raises(ExperimentError, match="bad.jsonl:2: not JSON"):
        run(RephraseRepeatExperimentConfig(source=str(bad)), tmp_path / "o3", log=lambda m: None)

