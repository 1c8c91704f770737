"""`k2 serve`'s /v1/chat/completions driven by the `openai` Python client on loopback: messages
rendered in K2's chat format, OpenAI tool_calls parsed from K2 tokens, tool_choice forcing, n,
usage, streaming deltas, errors. Backends: a scripted LLM (a test double that answers fixed
K2-format text: a random model writes no tool call) and the native engine on a real checkpoint."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from k2core.infer.llm import LLM, Completion, NativeLLM
from k2core.text import chat
from tests.k2core.infer.test_llm import checkpoint  # noqa: F401 — a tiny checkpoint with a tokenizer (fixture)

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
CALL = ('Let me check.<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0'
        '<|tool_call_argument_begin|>{"city": "Zürich"}<|tool_call_end|><|tool_calls_section_end|>')


class Scripted(LLM):
    backend, model = "scripted", "s"

    def __init__(self):
        self.prompts, self.params = [], []

    def generate(self, prompts, params=None, progress=True):
        self.prompts += prompts
        self.params.append(params)
        outs = []
        for p in prompts:
            if p.endswith("<|tool_call_argument_begin|>"):          # a forced call: the arguments follow
                outs.append('{"city": "Oslo"}<|tool_call_end|><|tool_calls_section_end|>')
            elif p.endswith("<|tool_calls_section_begin|>"):
                outs.append('<|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{"city": "Rome"}'
                            '<|tool_call_end|><|tool_calls_section_end|>')
            else:
                outs.append(CALL if "get_weather" in p else "Hello there.")
        return [Completion(t, "stop", 10, 5) for t in outs]


def serve(llm):
    from k2core.infer.server import serve_in_thread

    return serve_in_thread(llm, "k2-test")


@pytest.fixture(scope="module")
def scripted():
    llm = Scripted()
    server, url = serve(llm)
    from openai import OpenAI

    yield llm, OpenAI(base_url=url, api_key="none")
    server.should_exit = True


def test_tool_calls_parsed_from_k2_tokens(scripted):
    llm, client = scripted
    msgs = [{"role": "user", "content": "Weather in Zürich?"}]
    r = client.chat.completions.create(model="k2-test", messages=msgs, tools=[WEATHER], n=2, temperature=0.5, seed=3)
    assert llm.prompts[-1] == chat.render(msgs, [WEATHER], add_generation_prompt=True)
    assert llm.params[-1].keep_special and "<|im_end|>" in llm.params[-1].stop and llm.params[-1].seed == 3
    assert len(r.choices) == 2 and r.choices[0].finish_reason == "tool_calls"
    m = r.choices[0].message
    assert m.content == "Let me check." and m.tool_calls[0].function.name == "get_weather"
    assert json.loads(m.tool_calls[0].function.arguments) == {"city": "Zürich"}
    assert m.tool_calls[0].id == "functions.get_weather:0"
    assert r.usage.prompt_tokens == 10 and r.usage.completion_tokens == 10
    # the answer goes back into the conversation as it is: the tool result, then the next turn
    follow = msgs + [m.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": m.tool_calls[0].id, "content": '{"temp": 3}'}]
    client.chat.completions.create(model="k2-test", messages=follow, tools=[WEATHER])
    assert llm.prompts[-1] == chat.render(follow, [WEATHER], add_generation_prompt=True)
    # no tools: plain text, special tokens not requested
    r = client.chat.completions.create(model="k2-test", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == "Hello there." and not r.choices[0].message.tool_calls
    assert not llm.params[-1].keep_special


def test_tool_choice_forces_the_call(scripted):
    llm, client = scripted
    msgs = [{"role": "user", "content": "Anything"}]
    named = {"type": "function", "function": {"name": "get_weather"}}
    r = client.chat.completions.create(model="k2-test", messages=msgs, tools=[WEATHER], tool_choice=named)
    assert llm.prompts[-1].endswith("<|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>")
    assert json.loads(r.choices[0].message.tool_calls[0].function.arguments) == {"city": "Oslo"}
    r = client.chat.completions.create(model="k2-test", messages=msgs, tools=[WEATHER], tool_choice="required")
    assert r.choices[0].message.tool_calls[0].function.arguments == '{"city": "Rome"}'
    r = client.chat.completions.create(model="k2-test", messages=[{"role": "user", "content": "get_weather"}],
                                       tools=[WEATHER], tool_choice="none")
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content == "Let me check."


def test_streaming_and_errors(scripted):
    _, client = scripted
    import openai

    chunks = list(client.chat.completions.create(model="k2-test", messages=[{"role": "user", "content": "zz"}],
                                                 stream=True, stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    text = "".join(d.content or "" for d in deltas)
    assert text == "Hello there." and chunks[-1].usage.completion_tokens == 5
    calls = list(client.chat.completions.create(model="k2-test", messages=[{"role": "user", "content": "get_weather"}],
                                                tools=[WEATHER], stream=True))
    tc = [d for c in calls for d in (c.choices[0].delta.tool_calls or [])]
    assert tc[0].function.name == "get_weather" and calls[-1].choices[0].finish_reason == "tool_calls"
    assert "".join(c.choices[0].delta.content or "" for c in calls) == "Let me check."
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.chat.completions.create(model="other", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="not among the request's tools"):
        client.chat.completions.create(model="k2-test", messages=[{"role": "user", "content": "x"}], tools=[WEATHER],
                                       tool_choice={"type": "function", "function": {"name": "nope"}})
    with pytest.raises(openai.BadRequestError, match="role 'robot'"):
        client.chat.completions.create(model="k2-test", messages=[{"role": "robot", "content": "x"}])


def test_native_engine_streams_what_it_answers(checkpoint):  # noqa: F811
    from openai import OpenAI

    llm = NativeLLM(checkpoint, device="cpu")
    server, url = serve(llm)
    try:
        client = OpenAI(base_url=url, api_key="none")
        msgs = [{"role": "user", "content": "The miller crossed"}]
        whole = client.chat.completions.create(model="k2-test", messages=msgs, max_tokens=24, temperature=0)
        parts = list(client.chat.completions.create(model="k2-test", messages=msgs, max_tokens=24, temperature=0,
                                                    stream=True))
        streamed = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
        assert streamed == whole.choices[0].message.content and len([c for c in parts if c.choices]) > 3
        assert whole.usage.completion_tokens >= 1
    finally:
        server.should_exit = True


ASK = [{"role": "user", "content": "What is the weather in Zürich?"}]
ANSWER = {"role": "assistant", "content": None, "tool_calls": [{"id": "functions.get_weather:0", "type": "function",
          "function": {"name": "get_weather", "arguments": json.dumps({"city": "Zürich", "unit": {"temp": "°C"}},
                                                                      ensure_ascii=False)}}]}


@pytest.fixture(scope="module")
def caller(tmp_path_factory):
    """A tiny-vllm checkpoint trained (assistant-only loss on K2's chat format) until its greedy
    answer to ASK is ANSWER's tool call: a model that really calls a tool, for serving tests."""
    import torch

    from k2core.data.tokenize import save_tokenizer, train_tokenizer
    from k2core.model import K2ForCausalLM, ModelConfig
    from k2core.model.checkpoint import save_checkpoint

    out = tmp_path_factory.mktemp("caller") / "model"
    conv = [*ASK, ANSWER]
    tok = train_tokenizer([chat.render(conv, [WEATHER])] * 4, vocab_size=400, min_frequency=1)
    ids, mask = chat.encode(tok, conv, [WEATHER])
    torch.manual_seed(0)
    model = K2ForCausalLM(ModelConfig.preset("tiny-vllm", vocab_size=tok.get_vocab_size())).init_weights(0)
    x = torch.tensor([ids])
    target = torch.where(torch.tensor(mask[1:], dtype=torch.bool), x[0, 1:], -100)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)     # lr 3e-3 unclipped diverged on 1 thread
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(model(x).logits[0, :-1], target, ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if loss.item() < 3e-3:            # greedy decoding then reproduces the call (asserted below)
            break
    assert loss.item() < 0.01, loss.item()
    save_checkpoint(model.eval(), out)
    save_tokenizer(tok, out, seq_len=512)
    return out


def _vllm_server(py: str, model: Path, port: int, tmp: Path):
    import subprocess

    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
           "DO_NOT_TRACK": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    log = open(tmp / "vllm.log", "w")
    # the rotary op off and the reference MLA backend: the CPU settings of k2core/infer/vllm_worker.py
    cmd = [py, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--served-model-name", "k2-test",
           "--dtype", "float32", "--enforce-eager", "--compilation-config", '{"custom_ops": ["-rotary_embedding"]}',
           "--attention-backend", "CPU_MLA", "--max-model-len", "512", "--tool-call-parser", "kimi_k2",
           "--enable-auto-tool-choice", "--host", "127.0.0.1", "--port", str(port)]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp), tmp / "vllm.log"


def _wait_healthy(proc, url: str, log: Path, timeout: float = 600) -> None:
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"vLLM's server exited ({proc.returncode}):\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return
        except OSError:
            time.sleep(2)
    pytest.fail(f"vLLM's server not up after {timeout:.0f} s:\n{log.read_text()[-4000:]}")


@pytest.mark.slow
def test_vllm_and_k2_serve_return_the_same_tool_call(caller, tmp_path):
    """The same checkpoint served by `k2 serve` and by vLLM's CPU build with its kimi_k2 parser: the
    openai client gets the same OpenAI tool call from both — the one the model was trained to make
    (unicode and nested JSON arguments)."""
    import socket

    from openai import OpenAI

    from tests.k2core.model.test_vllm import vllm_python

    py = vllm_python()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc, log = _vllm_server(py, caller, port, tmp_path)
    server, url = serve(NativeLLM(caller, device="cpu"))
    try:
        _wait_healthy(proc, f"http://127.0.0.1:{port}", log)
        answers = {}
        for name, base in (("k2", url), ("vllm", f"http://127.0.0.1:{port}/v1")):
            r = OpenAI(base_url=base, api_key="none").chat.completions.create(
                model="k2-test", messages=ASK, tools=[WEATHER], max_tokens=48, temperature=0)
            msg = r.choices[0].message
            assert msg.tool_calls, (name, msg)
            answers[name] = [(c.id, c.function.name, json.loads(c.function.arguments)) for c in msg.tool_calls]
        want = ANSWER["tool_calls"][0]
        assert answers["k2"] == answers["vllm"] == [
            (want["id"], "get_weather", json.loads(want["function"]["arguments"]))]
    finally:
        server.should_exit = True
        proc.terminate()
        proc.wait(timeout=60)
