"""The rephrase stage: the skipped path without a teacher, a real native teacher (a
random k2 checkpoint: its rewrites fail fidelity, counted by reason), and the accepted path into
tokenize through the openai engine against a loopback test server that returns each passage."""
from __future__ import annotations

import http.server
import json
import re
import threading

import pandas as pd
import pytest

from k2core.stage import GateFailed
from tests.conftest import JSONHandler, free_port, write_jsonl
from tests.k2core.train.stages import corpus_rows, run

ON = ["rephrase.enabled=true", "rephrase.max_tokens=24", "rephrase.chunk_chars=300", "rephrase.max_docs=6",
      "rephrase.min_accept_rate=0"]


@pytest.fixture
def corpus(tmp_path):
    return tmp_path, write_jsonl(tmp_path / "c.jsonl", corpus_rows(n_prose=30, n_code=4))


def _frame(store, outcome, sub="data", stage="rephrase"):
    art = store.artifact(stage, outcome.version)
    return pd.concat([pd.read_parquet(art.path(f)) for f in art.files(f"{sub}/")])


ALL = ["ingest", "curate", "rephrase", "tokenize", "pretrain"]


@pytest.mark.slow
def test_the_pipeline_teaches_itself_once_then_settles(corpus):
    """Run 1: no teacher, skipped, raw text. Run 2: the run-1 model (trained on raw text) rephrases;
    tokenize and pretrain recompute. Run 3: all cache hits — the run-2 model is no teacher."""
    tmp, src = corpus
    sets = [f"ingest.source={src}", *ON]
    first, store = run(str(tmp / "store"), ALL, sets)
    reph = store.artifact("rephrase", first[2].version)
    assert reph.metrics["status"].startswith("skipped: no teacher model") and reph.metrics["rephrasings"] == 0
    assert reph.manifest["inputs"]["source"] == {"teacher": None}
    assert store.artifact("tokenize", first[3].version).metrics["rephrasings_used"] == 0
    second, _ = run(str(tmp / "store"), ALL, sets)
    assert [o.status for o in second] == ["cache_hit", "cache_hit", "computed", "computed", "computed"]
    m = store.artifact("rephrase", second[2].version).metrics
    assert m["teacher"] == f"native:pretrain/{first[4].version}" and m["rephrasings"] > 0
    assert m["accepted"] + len(_frame(store, second[2], "rejects")) == m["rephrasings"]
    third, _ = run(str(tmp / "store"), ALL, sets)
    assert [o.status for o in third] == ["cache_hit"] * 5


def test_a_native_teacher_rewrites_and_fidelity_rejects_with_reasons(corpus, tmp_path_factory):
    """A randomly initialised checkpoint as the teacher: real generation, honest rejections."""
    from tests.k2core.infer.test_llm import TEXT

    from k2core.data.tokenize import save_tokenizer, train_tokenizer
    from k2core.model import K2ForCausalLM, ModelConfig
    from k2core.model.checkpoint import save_checkpoint

    tmp, src = corpus
    ckpt = tmp_path_factory.mktemp("teacher") / "model"
    tok = train_tokenizer([TEXT], vocab_size=300, min_frequency=1)
    save_checkpoint(K2ForCausalLM(ModelConfig.preset("tiny", vocab_size=tok.get_vocab_size())).init_weights(0), ckpt)
    save_tokenizer(tok, ckpt, 128)
    sets = [f"ingest.source={src}", *ON, f"rephrase.teacher.checkpoint={ckpt}"]
    outs, store = run(str(tmp / "store"), ["ingest", "curate", "rephrase"], sets)
    art = store.artifact("rephrase", outs[-1].version)
    m = art.metrics
    assert m["teacher"] == f"native:{ckpt}" and m["rephrasings"] == min(6, m["eligible_documents"])
    rejected = _frame(store, outs[-1], "rejects")
    assert m["accepted"] + len(rejected) == m["rephrasings"] and m["chunks"] >= m["rephrasings"]
    assert sum(v for k, v in m.items() if k.startswith("rejected_chunks_")) >= len(rejected)
    assert set(rejected.source_id) <= set(_frame(store, outs[1], stage="curate").id)
    assert all(r for r in rejected.reasons)                                 # every reject says why
    assert art.path("rephrase.png").exists() and "similarity_quantiles" in json.loads(
        art.path("report.json").read_text())
    # a random teacher cannot meet an acceptance floor: the gate says so
    with pytest.raises(GateFailed, match="accept_rate_shortfall"):
        run(str(tmp / "store"), ["ingest", "curate", "rephrase"], [*sets, "rephrase.min_accept_rate=0.9"])


class _Faithful(JSONHandler, http.server.BaseHTTPRequestHandler):
    """A loopback teacher for the plumbing test: returns the passage of each prompt unchanged."""

    def do_POST(self):  # noqa: N802
        prompt = self.read_json()["prompt"]
        passage = re.search(r"Passage:\n(.*?)\n\n[A-Z][^\n]*\(continuing", prompt, re.S).group(1)
        self.answer(200, {"choices": [{"text": " " + passage, "finish_reason": "stop"}]})


MATH = [
    "Theorem 1. Let p be a polynomial with p(x) = x^2 + 3x + 2. The derivative is p'(x) = 2x + 3, so the "
    "equation p'(x) = 0 has the root x = -3/2. Proof: the polynomial factors as (x + 1)(x + 2).",
    "Lemma 4. For every integer n >= 1 the sum 1 + 2 + ... + n equals n(n + 1)/2. Proof by induction: for "
    "n = 1 both sides are 1; adding n + 1 to n(n + 1)/2 gives (n + 1)(n + 2)/2.",
    "The integral of f(t) = 6t^2 from 0 to 2 equals 2t^3 evaluated at 2, that is 16. By the fundamental "
    "theorem, the derivative of F(x) = 2x^3 is 6x^2 = f(x), which proves the equation.",
    "Exercise 7. Solve the equation 5y - 4 = 21. Adding 4 gives 5y = 25, and dividing by 5 gives y = 5. "
    "Check: 5 * 5 - 4 = 21, so the solution of the linear equation is y = 5.",
    "Definition. A sequence a_n converges to L if for every e > 0 there is N with |a_n - L| < e for n > N. "
    "Example: a_n = 1/n converges to 0 because 1/n < e whenever n > 1/e; the lemma follows.",
]


def test_accepted_rephrasings_of_training_documents_feed_tokenize(tmp_path):
    rows = corpus_rows(n_prose=30, n_code=4) + [{"text": t} for t in MATH]
    tmp, src = tmp_path, write_jsonl(tmp_path / "c.jsonl", rows)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Faithful)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
        outs, store = run(str(tmp / "store"), ["ingest", "curate", "rephrase", "tokenize"], [
            f"ingest.source={src}", *ON, "rephrase.teacher.engine=openai", f"rephrase.teacher.base_url={url}",
            "rephrase.teacher.model=echo", "rephrase.max_docs=60", "tokenize.rephrase_epochs=2"])
    finally:
        srv.shutdown()
    reph = next(o for o in outs if o.stage == "rephrase")
    m = store.artifact("rephrase", reph.version).metrics
    n = m["eligible_documents"]                      # the prose documents curate kept
    assert n >= 5 and m["accepted"] == m["rephrasings"] == n and m["accept_rate"] == 1.0 and m["similarity_p10"] > 0.99
    data = _frame(store, reph)
    prose, math = data[data.domain == "prose"], data[data.domain == "math"]
    assert set(prose["style"]) <= {"encyclopedia", "qa", "explainer"} and len(set(prose["style"])) > 1
    assert len(math) >= 3 and set(math["style"]) == {"learning_note"}          # math: learning notes
    tok = store.artifact("tokenize", outs[-1].version)
    val = tok.metrics["val_documents"]
    held_out = sum(1 for s in data.source_id if s in _val_ids(store, outs))
    assert tok.metrics["rephrasings_used"] == n - held_out      # rephrasings of held-out documents stay out
    assert val >= 1 and tok.metrics["train_document_epochs"] >= tok.metrics["train_documents"] + 2 * (n - held_out)


def _val_ids(store, outs) -> set[str]:
    from k2core.data.tokenize import _unit

    ids = _frame(store, next(o for o in outs if o.stage == "curate"), stage="curate").id
    frac = store.artifact("tokenize", outs[-1].version).manifest["config"]["val_fraction"]
    held = {i for i in ids if _unit(i, "val") < frac}
    return held or {min(ids, key=lambda i: _unit(i, "val"))}
