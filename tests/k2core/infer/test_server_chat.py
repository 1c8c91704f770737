"""`k2 serve`'s /v1/chat/completions driven by the `openai` Python client on loopback: messages
rendered in K2's chat format, OpenAI tool_calls parsed from K2 tokens, tool_choice forcing, n,
usage, streaming deltas, errors. Backends: a scripted LLM (a test double that answers fixed
K2-format text: a random model writes no tool call) and the native engine on a real checkpoint."""
from __future__ import annotations

import json

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
