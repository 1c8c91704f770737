"""The engine interface: the native backend on a k2 checkpoint, `k2 serve` (an OpenAI-compatible
server over it) on loopback, and the openai backend against it — same greedy text; retries with
backoff on 503, refusal on 4xx, timeouts, all named in the error."""
from __future__ import annotations

import http.server
import threading
import time

import pytest
import torch

from k2core.infer.llm import LLMError, NativeLLM, OpenAILLM, TextParams, cut_at_stop, open_llm
from tests.conftest import JSONHandler, free_port

TEXT = ("The miller crossed the bridge to the market. The baker sold bread near the church. "
        "In winter the lake froze and the children skated past the old tower. ") * 20
PROMPTS = ["The miller crossed", "In winter the lake", "The baker sold bread near"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from k2core.data.tokenize import save_tokenizer, train_tokenizer
    from k2core.model import K2ForCausalLM, ModelConfig
    from k2core.model.checkpoint import save_checkpoint

    out = tmp_path_factory.mktemp("llm") / "model"
    tok = train_tokenizer([TEXT], vocab_size=300, min_frequency=1)
    cfg = ModelConfig.preset("tiny", vocab_size=tok.get_vocab_size())
    torch.manual_seed(0)
    save_checkpoint(K2ForCausalLM(cfg).init_weights(0), out)
    save_tokenizer(tok, out, seq_len=128)
    return out


@pytest.fixture(scope="module")
def native(checkpoint):
    return NativeLLM(checkpoint, device="cpu")


@pytest.fixture(scope="module")
def k2_server(native):
    """`k2 serve`'s app (uvicorn, real HTTP on loopback) over the native backend."""
    from k2core.infer.server import serve_in_thread

    server, url = serve_in_thread(native, "k2-test")
    yield url
    server.should_exit = True


def test_native_greedy_is_deterministic_and_honours_stops(native):
    p = TextParams(max_tokens=12, temperature=0)
    a = native.generate(PROMPTS, p, progress=False)
    b = native.generate(PROMPTS, p, progress=False)
    assert [x.text for x in a] == [x.text for x in b]
    assert all(x.prompt_tokens and x.completion_tokens == 12 and x.finish_reason == "length" for x in a)
    # a stop string cuts the text before it
    stop = a[0].text[3:6]
    if stop.strip():
        [c] = native.generate(PROMPTS[:1], TextParams(max_tokens=12, temperature=0, stop=[stop]), progress=False)
        assert c.text == a[0].text[:a[0].text.find(stop)] and c.finish_reason == "stop"


def test_openai_backend_against_k2_serve_equals_native(native, k2_server):
    import httpx

    assert httpx.get(k2_server + "/models").json()["data"][0]["id"] == "k2-test"
    remote = OpenAILLM(k2_server, "k2-test", api_key_env=None, concurrency=3)
    greedy = TextParams(max_tokens=10, temperature=0)
    assert [c.text for c in remote.generate(PROMPTS, greedy, progress=False)] == \
        [c.text for c in native.generate(PROMPTS, greedy, progress=False)]
    sampled = TextParams(max_tokens=10, temperature=0.9, top_p=0.95, seed=11)
    one = [c.text for c in remote.generate(PROMPTS, sampled, progress=False)]
    assert one == [c.text for c in remote.generate(PROMPTS, sampled, progress=False)]   # seeded per prompt
    with pytest.raises(LLMError, match="refused the request .*HTTP 404.*not served here"):
        OpenAILLM(k2_server, "other-model", api_key_env=None).generate(["x"], progress=False)


class _Scripted(JSONHandler, http.server.BaseHTTPRequestHandler):
    """Answers /v1/completions from a script: a list of (status, delay_s) per request."""

    script: list[tuple[int, float]] = []
    seen: list[dict] = []

    def do_POST(self):  # noqa: N802
        body = self.read_json()
        type(self).seen.append(body)
        status, delay = type(self).script.pop(0) if type(self).script else (200, 0.0)
        time.sleep(delay)
        self.answer(status, {"choices": [{"text": f"echo:{body['prompt']}", "finish_reason": "length"}],
                             "usage": {"prompt_tokens": 1, "completion_tokens": 2}} if status == 200
                    else {"error": {"message": f"scripted {status}"}})


@pytest.fixture
def scripted():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Scripted)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    _Scripted.script, _Scripted.seen = [], []
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()


def test_retries_with_backoff_then_succeeds(scripted, monkeypatch):
    monkeypatch.setenv("K2_TEST_KEY", "sk-test")
    _Scripted.script = [(503, 0.0), (429, 0.0)]
    llm = OpenAILLM(scripted, "m", api_key_env="K2_TEST_KEY", retries=3, backoff=0.01, concurrency=1)
    t0 = time.monotonic()
    [c] = llm.generate(["hello"], TextParams(max_tokens=5, seed=3), progress=False)
    assert c.text == "echo:hello" and c.completion_tokens == 2
    assert llm.attempts == 3 and time.monotonic() - t0 >= 0.01
    assert [b["seed"] for b in _Scripted.seen] == [3, 3, 3] and _Scripted.seen[0]["max_tokens"] == 5


def test_gives_up_naming_the_url_and_the_last_error(scripted):
    _Scripted.script = [(500, 0.0)] * 3
    with pytest.raises(LLMError, match=r"/v1/completions failed after 3 attempts \(last: HTTP 500: .*scripted 500"):
        OpenAILLM(scripted, "m", api_key_env=None, retries=2, backoff=0.01).generate(["x"], progress=False)
    _Scripted.script = [(400, 0.0)]
    with pytest.raises(LLMError, match="refused the request \\(HTTP 400"):
        OpenAILLM(scripted, "m", api_key_env=None, retries=5, backoff=0.01).generate(["x"], progress=False)
    assert len(_Scripted.seen) == 4                                   # a 400 is not retried
    _Scripted.script = [(200, 1.0)]
    with pytest.raises(LLMError, match="timed out after 0.2 s"):
        OpenAILLM(scripted, "m", api_key_env=None, timeout=0.2, retries=0).generate(["x"], progress=False)


def test_results_keep_prompt_order_under_concurrency(scripted):
    _Scripted.script = [(200, 0.3), (200, 0.0), (200, 0.1)]
    outs = OpenAILLM(scripted, "m", api_key_env=None, concurrency=3).generate(["a", "b", "c"], progress=False)
    assert [o.text for o in outs] == ["echo:a", "echo:b", "echo:c"]


def test_bad_configuration_is_named(tmp_path):
    with pytest.raises(LLMError, match="has no tokenizer.json"):
        NativeLLM(tmp_path)
    with pytest.raises(LLMError, match="must start with http"):
        OpenAILLM("localhost:8000/v1", "m")
    with pytest.raises(LLMError, match="engine 'vllm2': expected native, vllm or openai"):
        open_llm("vllm2")
    with pytest.raises(LLMError, match="engine vllm needs a checkpoint"):
        open_llm("vllm")
    assert cut_at_stop("abc\n\nrest", ["\n\n", "zz"]) == ("abc", True)
