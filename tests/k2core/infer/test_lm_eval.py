"""lm-evaluation-harness through `k2 serve`: `/v1/completions` with token-id prompts, `echo` and
`logprobs`, vLLM's tokenizer endpoints; lm-eval's `local-completions` runs a log-likelihood task and
a generation task read offline from local JSON Lines, and its numbers equal k2's own log-probs."""
from __future__ import annotations

import json
import math

import httpx
import pytest

from k2core.infer.llm import TextParams
from tests.k2core.infer.test_llm import checkpoint, k2_server, native  # noqa: F401 — fixtures

DOCS = [{"context": "The miller crossed the", "continuation": " bridge to the market."},
        {"context": "In winter the lake", "continuation": " froze"},
        {"context": "The baker sold", "continuation": " bread near the church."}]


def _post(url, path, body):
    r = httpx.post(url.removesuffix("/v1") + path, json=body, timeout=60)
    return r.status_code, r.json()


def test_echo_and_logprobs_equal_the_models_own(native, k2_server):  # noqa: F811
    import torch

    from k2core.infer import SamplingParams

    ids = native.tokenizer.encode("The miller crossed the bridge").ids
    code, out = _post(k2_server, "/v1/completions", {"prompt": ids, "max_tokens": 3, "temperature": 0, "echo": True,
                                                     "logprobs": 2})
    assert code == 200
    [ch] = out["choices"]
    lp = ch["logprobs"]
    gen = native.engine.generate([ids], SamplingParams(max_tokens=3, temperature=0, logprobs=True), progress=False)[0]
    assert len(lp["tokens"]) == len(ids) + 3 and lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["tokens"] == [native.tokenizer.id_to_token(t) for t in ids + gen.token_ids]
    # the prompt's log-probs from one forward pass of the model, computed here independently
    with torch.no_grad():
        ref = torch.log_softmax(native.engine.model(torch.tensor([ids + gen.token_ids])).logits[0].float(), -1)
    want = [ref[i - 1, t].item() for i, t in enumerate(ids + gen.token_ids) if i]
    assert lp["token_logprobs"][1:] == pytest.approx(want, abs=1e-5)
    # the generated tokens' log-probs equal the engine's own (its cached decoding path), and are greedy
    assert lp["token_logprobs"][len(ids):] == pytest.approx(gen.logprobs, abs=1e-4)
    for own, top in zip(lp["token_logprobs"][len(ids):], lp["top_logprobs"][len(ids):]):
        assert own == max(top.values()) and len(top) <= 3
    assert ch["text"] == native.tokenizer.decode(ids, skip_special_tokens=False) + \
        native.generate_ids([ids], TextParams(max_tokens=3))[0].text
    # without echo: only the completion; max_tokens 0 scores the prompt alone
    code, out = _post(k2_server, "/v1/completions", {"prompt": "The miller", "max_tokens": 2, "temperature": 0,
                                                     "logprobs": 0})
    assert code == 200 and len(out["choices"][0]["logprobs"]["tokens"]) == 2
    code, out = _post(k2_server, "/v1/completions", {"prompt": [ids, ids[:3]], "max_tokens": 0, "echo": True,
                                                     "logprobs": 1})
    assert code == 200 and [len(c["logprobs"]["tokens"]) for c in out["choices"]] == [len(ids), 3]
    assert out["choices"][0]["logprobs"]["token_logprobs"][1:] == pytest.approx(want[:len(ids) - 1], abs=1e-5)


def test_bad_token_prompts_and_tokenizer_endpoints(native, k2_server):  # noqa: F811
    v = native.tokenizer.get_vocab_size()
    code, out = _post(k2_server, "/v1/completions", {"prompt": [1, v + 5], "max_tokens": 1})
    assert code == 400 and f"token id {v + 5} is outside the vocabulary" in out["error"]["message"]
    code, out = _post(k2_server, "/v1/completions", {"prompt": "x", "max_tokens": 0})
    assert code == 400 and "needs echo" in out["error"]["message"]
    code, out = _post(k2_server, "/v1/completions", {"prompt": [1] * native.context_length, "max_tokens": 1})
    assert code == 400 and "exceed the model's context" in out["error"]["message"]
    code, tok = _post(k2_server, "/tokenize", {"prompt": "The baker sold bread", "add_special_tokens": False})
    assert code == 200 and tok["tokens"] == native.tokenizer.encode("The baker sold bread").ids
    code, back = _post(k2_server, "/detokenize", {"tokens": tok["tokens"]})
    assert back["prompt"] == "The baker sold bread"
    info = httpx.get(k2_server.removesuffix("/v1") + "/tokenizer_info").json()
    assert info["eos_token"] == "<|endoftext|>" and info["model_max_length"] == native.context_length


@pytest.mark.slow
def test_lm_eval_local_completions_against_k2_serve(native, k2_server, tmp_path, monkeypatch):  # noqa: F811
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    common = (f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
              "doc_to_text: \"{{context}}\"\ndoc_to_target: \"{{continuation}}\"\n")
    (tmp_path / "k2_ll.yaml").write_text("task: k2_ll\noutput_type: loglikelihood\n" + common +
                                         "metric_list:\n  - metric: perplexity\n  - metric: acc\n")
    (tmp_path / "k2_gen.yaml").write_text("task: k2_gen\noutput_type: generate_until\n" + common +
                                          "generation_kwargs:\n  until: [\".\"]\n  max_gen_toks: 6\n"
                                          "metric_list:\n  - metric: exact_match\n")
    res = simple_evaluate(model="local-completions",
                          model_args={"base_url": f"{k2_server}/completions", "model": "k2-test",
                                      "tokenizer_backend": "remote", "tokenized_requests": True,
                                      "max_length": native.context_length, "num_concurrent": 1},
                          tasks=["k2_ll", "k2_gen"], task_manager=TaskManager(include_path=str(tmp_path)),
                          log_samples=True)
    tok = native.tokenizer
    lls = []
    for s in sorted(res["samples"]["k2_ll"], key=lambda s: s["doc_id"]):
        d = DOCS[s["doc_id"]]
        whole = tok.encode(d["context"] + d["continuation"]).ids     # lm-eval's pair encoding: whole, then context
        n_ctx = len(tok.encode(d["context"]).ids)
        lps, tops = native.token_logprobs([whole], top=1)[0]
        ll = sum(lps[n_ctx:])
        greedy = all(lps[i] == tops[i][0][1] for i in range(n_ctx, len(whole)))
        got_ll, got_greedy = s["resps"][0][0]
        assert got_ll == pytest.approx(ll, abs=1e-5) and bool(got_greedy) == greedy
        lls.append(ll)
    assert res["results"]["k2_ll"]["perplexity,none"] == pytest.approx(math.exp(-sum(lls) / len(lls)), rel=1e-5)
    # generation: lm-eval's text is k2's own greedy completion of the same ids, cut at the stop string
    for s in res["samples"]["k2_gen"]:
        ids = tok.encode(DOCS[s["doc_id"]]["context"]).ids
        want = native.generate_ids([ids], TextParams(max_tokens=6, temperature=0, stop=["."]))[0].text
        assert s["resps"][0][0] == want
    assert 0.0 <= res["results"]["k2_gen"]["exact_match,none"] <= 1.0
