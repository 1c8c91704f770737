"""The tokenize stage: an HF-loadable BPE tokenizer with K2's special tokens, exact packing,
held-out documents, mixture epochs, and a gate that names ids outside the vocabulary."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from k2core.artifacts import load_index
from k2core.text.special_tokens import EOS, SPECIAL_TOKENS
from k2core.quality import run_gate
from k2core.config import ConfigError
from schemas.suites import tokenize_suite
from tests.conftest import write_jsonl
from tests.k2core.train.stages import corpus_rows, run


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tok")
    src = write_jsonl(tmp / "corpus.jsonl", corpus_rows())
    outs, store = run(str(tmp / "store"), ["ingest", "curate", "rephrase", "tokenize"], [f"ingest.source={src}"])
    return tmp, src, outs, store


def test_tokenizer_loads_in_transformers_with_special_tokens_whole(built):
    from transformers import PreTrainedTokenizerFast

    _, _, outs, store = built
    art = store.artifact("tokenize", outs[-1].version)
    tok = PreTrainedTokenizerFast.from_pretrained(Path(art.path("tokenizer/tokenizer.json")).parent)
    assert tok.eos_token == EOS and tok.pad_token == "<|pad|>"
    for s in SPECIAL_TOKENS:
        assert len(tok.encode(s, add_special_tokens=False)) == 1, s
    text = "The river near the mill was quiet.\n    print(name)"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    assert len(tok) == art.metrics["vocab_size"] <= 600


def test_packing_is_exact_and_validation_documents_are_held_out(built):
    from tokenizers import Tokenizer

    _, _, outs, store = built
    art = store.artifact("tokenize", outs[-1].version)
    m, idx = art.metrics, load_index(art)
    from k2core.config import PretrainConfig
    from k2core.train.pretrain import Job

    job = Job.from_tokens(art.path, PretrainConfig(), Path("."), Path("."))   # the trainer's own reader
    train, val = job.rows("train"), job.rows("val")
    assert train.shape == (m["train_rows"], 32) and val.shape == (m["val_rows"], 32)
    assert m["train_tokens"] == train.size and m["token_count_error"] == 0 and int(train.max()) == m["max_id"]
    assert m["train_documents"] + m["val_documents"] == m["documents"] and m["val_documents"] >= 1
    # the stream is each train document's ids followed by EOS, in id order, cut into rows
    tok = Tokenizer.from_file(str(art.path("tokenizer/tokenizer.json")))
    import pyarrow.parquet as pq

    cur = store.artifact("curate", outs[1].version)
    docs = sorted(pq.read_table([cur.path(f) for f in cur.files("data/")]).to_pylist(), key=lambda d: d["id"])
    eos = idx["eos_id"]
    flat = train.reshape(-1)
    n_eos = int((flat == eos).sum())
    assert n_eos in (m["train_document_epochs"], m["train_document_epochs"] - 1)   # the last may be cut
    first_doc = next(d for d in docs if tok.encode(d["text"]).ids == flat[: len(tok.encode(d["text"]).ids)].tolist())
    assert flat[len(tok.encode(first_doc["text"]).ids)] == eos


def test_mixture_epochs_repeat_and_subsample_domains(built, tmp_path):
    tmp, src, outs, store = built
    base = store.artifact("tokenize", outs[-1].version).metrics
    more, _ = run(str(tmp / "store"), ["tokenize"], [f"ingest.source={src}", "tokenize.mixture.code=3.0"])
    m = store.artifact("tokenize", more[-1].version).metrics
    assert m["train_document_epochs"] > base["train_document_epochs"]
    assert m["stream_tokens"] > base["stream_tokens"]
    less, _ = run(str(tmp / "store"), ["tokenize"], [f"ingest.source={src}", "tokenize.mixture.code=0"])
    m0 = store.artifact("tokenize", less[-1].version).metrics
    assert m0["train_document_epochs"] < base["train_document_epochs"]
    with pytest.raises(ConfigError, match="tokenize.mixture.code = -1"):
        run(str(tmp / "store"), ["tokenize"], [f"ingest.source={src}", "tokenize.mixture.code=-1"])


def test_gate_names_ids_outside_the_vocabulary():
    from k2core.config import TokenizeConfig

    frame = pd.DataFrame([{"file": "tokens/train-00000.bin", "split": "train", "rows": 3, "tokens": 96, "max_id": 700},
                          {"file": "tokens/val.bin", "split": "val", "rows": 0, "tokens": 0, "max_id": 5}])
    report = run_gate(tokenize_suite(TokenizeConfig(vocab_size=600)), frame,
                      {"id_headroom": -101, "token_count_error": 0, "train_rows": 3})
    assert not report.success
    text = json.dumps(report.to_dict())
    assert "max_id" in text and "rows" in text and "id_headroom" in text
