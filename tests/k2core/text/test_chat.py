"""K2's chat format: the layout of POSTTRAIN_REFERENCE.md §1 byte for byte, the loss mask, and
render -> parse as the identity on every assistant-turn shape; the parser's rules (vLLM's kimi_k2,
but dotted names kept whole)."""
from __future__ import annotations

import json

import pytest

from k2core.text import chat

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                            "parameters": {"type": "object", "required": ["city"],
                                                           "properties": {"city": {"type": "string"}}}}}


def call(name, i, args):
    return {"id": chat.call_id(name, i), "type": "function",
            "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)}}


def test_reference_layout_byte_for_byte():
    """The measured K2-Thinking-style rendering (think removed) from POSTTRAIN_REFERENCE.md §1."""
    msgs = [{"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [call("get_weather", 0, {"city": "Paris"})]},
            {"role": "tool", "name": "get_weather", "tool_call_id": "functions.get_weather:0",
             "content": '{"weather": "Sunny"}'}]
    text = chat.render(msgs, [WEATHER], add_generation_prompt=True)
    decl = json.dumps(chat.deep_sort([WEATHER]), ensure_ascii=False)
    assert text == (
        f"<|im_system|>tool_declare<|im_middle|>{decl}<|im_end|>"
        "<|im_system|>system<|im_middle|>You are a helpful assistant<|im_end|>"
        "<|im_user|>user<|im_middle|>Weather in Paris?<|im_end|>"
        "<|im_assistant|>assistant<|im_middle|><|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0"
        '<|tool_call_argument_begin|>{"city": "Paris"}<|tool_call_end|><|tool_calls_section_end|><|im_end|>'
        "<|im_system|>get_weather<|im_middle|>## Return of functions.get_weather:0\n"
        '{"weather": "Sunny"}<|im_end|><|im_assistant|>assistant<|im_middle|>')
    # the declaration is deep-sorted: key order of the input does not matter
    shuffled = {"function": {"parameters": WEATHER["function"]["parameters"], "name": "get_weather",
                             "description": "Weather of a city"}, "type": "function"}
    assert chat.tool_declaration([shuffled]) == decl


def test_system_message_kept_and_names_used():
    text = chat.render([{"role": "system", "content": "Be brief."}, {"role": "user", "name": "ava", "content": "hi"}])
    assert text == "<|im_system|>system<|im_middle|>Be brief.<|im_end|><|im_user|>ava<|im_middle|>hi<|im_end|>"


SHAPES = [
    {"role": "assistant", "content": "Plain answer, no call."},
    {"role": "assistant", "content": None, "tool_calls": [call("get_weather", 0, {"city": "Paris"})]},
    {"role": "assistant", "content": "Checking both.", "tool_calls": [call("get_weather", 3, {"city": "Zürich"}),
                                                                        call("get_weather", 4, {"city": "東京"})]},
    {"role": "assistant", "content": None, "tool_calls": [call("math.add", 0, {"a": {"b": [1, 2, {"c": None}]}, "s": "x<y"})]},
    {"role": "assistant", "content": None, "tool_calls": [call("noargs", 0, {})]},
    {"role": "assistant", "content": "multi\nline ✓ text"},
]


@pytest.mark.parametrize("msg", SHAPES)
def test_round_trip_is_identity(msg):
    text = chat.render([{"role": "user", "content": "q"}, msg])
    body = text.split(chat.GENERATION_PROMPT, 1)[1]                # what a model generates for this turn
    assert chat.parse(body) == {**msg, "content": msg.get("content") or None}


def test_parser_rules():
    # no section: all content; a dotted name kept whole (vLLM would return "add")
    assert chat.parse("hello<|im_end|>") == {"role": "assistant", "content": "hello"}
    text = ("ok<|tool_calls_section_begin|><|tool_call_begin|> functions.math.add:7 <|tool_call_argument_begin|>"
            ' {"a": 1} <|tool_call_end|><|tool_calls_section_end|>')
    m = chat.parse(text)
    assert m["content"] == "ok"
    assert m["tool_calls"] == [{"id": "functions.math.add:7", "type": "function",
                                "function": {"name": "math.add", "arguments": '{"a": 1}'}}]
    # the singular section token and a missing section end (truncation) still parse
    trunc = "<|tool_call_section_begin|><|tool_call_begin|>functions.f:0<|tool_call_argument_begin|>{}<|tool_call_end|>"
    assert chat.parse(trunc)["tool_calls"][0]["function"]["name"] == "f"
    # an id without :IDX is not a call; the section then holds none
    assert "tool_calls" not in chat.parse("<|tool_calls_section_begin|><|tool_call_begin|>f<|tool_call_argument_begin|>{}"
                                          "<|tool_call_end|><|tool_calls_section_end|>")
    assert chat.arguments_of({"function": {"arguments": "{bad"}})[0] is None
    assert chat.arguments_of({"function": {"arguments": "[1]"}})[1].startswith("arguments must be a JSON object")


def test_loss_mask_covers_assistant_spans_only():
    from tokenizers import Tokenizer, models, pre_tokenizers

    from k2core.text.special_tokens import SPECIAL_TOKENS

    tok = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(SPECIAL_TOKENS)
    msgs = [{"role": "user", "content": "q"}, SHAPES[2],
            {"role": "tool", "tool_call_id": "functions.get_weather:3", "content": "r"},
            {"role": "tool", "tool_call_id": "functions.get_weather:4", "content": "r"},
            {"role": "assistant", "content": "done"}]
    ids, mask = chat.encode(tok, msgs, [WEATHER])
    assert ids == tok.encode(chat.render(msgs, [WEATHER]), add_special_tokens=False).ids
    trained = [tok.id_to_token(i) for i, m in zip(ids, mask) if m]
    # the assistant's call markers and closing tokens are trained; no role header, no tool result
    assert trained.count("<|im_end|>") == 2 and "<|tool_calls_section_begin|>" in trained
    assert "<|im_assistant|>" not in trained and "<|im_user|>" not in trained and "<|im_system|>" not in trained


def test_check_conversation_finds_each_problem():
    good = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
            {"role": "assistant", "content": None, "tool_calls": [call("get_weather", 0, {"city": "P"})]},
            {"role": "tool", "tool_call_id": "functions.get_weather:0", "content": "r"},
            {"role": "assistant", "content": "a"}]
    assert chat.check_conversation(good, [WEATHER]) == []
    assert "undeclared tool" in " ".join(chat.check_conversation(good, [{"type": "function", "function": {"name": "x"}}]))
    unanswered = good[:3] + [good[4]]
    assert "never answered" in " ".join(chat.check_conversation(unanswered, [WEATHER]))
    stray = good[:2] + [{"role": "tool", "tool_call_id": "functions.nope:9", "content": "r"}]
    assert "no open call" in " ".join(chat.check_conversation(stray, [WEATHER]))
    assert "before any user turn" in " ".join(chat.check_conversation([good[0], good[4]]))
    with pytest.raises(chat.ChatFormatError, match="role 'robot'"):
        chat.render([{"role": "robot", "content": "x"}])


def _hf_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    from k2core.data.tokenize import save_tokenizer, train_tokenizer

    tok = train_tokenizer(["Weather in Paris? Sunny and warm. functions get weather city"] * 50, 400, 1)
    save_tokenizer(tok, tmp_path / "tok", seq_len=128)
    return AutoTokenizer.from_pretrained(str(tmp_path / "tok")), tok


def test_the_checkpoint_chat_template_renders_what_k2_renders(tmp_path):
    """transformers' apply_chat_template with the template k2 writes into tokenizer_config.json."""
    hf, tok = _hf_tokenizer(tmp_path)
    convs = [[{"role": "user", "content": "Weather in Paris?"}, *SHAPES[1:2],
              {"role": "tool", "name": "get_weather", "tool_call_id": "functions.get_weather:0", "content": "sunny"},
              {"role": "assistant", "content": "Sunny."}],
             [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "part"}]},
              *SHAPES[2:5], SHAPES[0]],
             [{"role": "user", "content": "  leading spaces and\nnewlines  "}, SHAPES[5]]]
    for msgs in convs:
        for tools in ([WEATHER], None):
            for gen in (True, False):
                ours = chat.render(msgs, tools, add_generation_prompt=gen)
                theirs = hf.apply_chat_template(msgs, tools=tools, add_generation_prompt=gen, tokenize=False)
                assert theirs == ours
    # dict arguments (not yet JSON text) render like transformers' tojson
    dict_args = [{"role": "user", "content": "q"}, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "functions.f:0", "type": "function", "function": {"name": "f", "arguments": {"b": 1, "a": "é"}}}]}]
    assert hf.apply_chat_template(dict_args, tokenize=False) == chat.render(dict_args)
    # every special token is one token of the checkpoint's tokenizer, and ids agree
    text = chat.render(convs[0], [WEATHER], add_generation_prompt=True)
    assert hf(text, add_special_tokens=False)["input_ids"] == tok.encode(text, add_special_tokens=False).ids


VLLM_CASES = [
    "Just text, no call.",
    "",
    "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>"
    '{"city": "Paris"}<|tool_call_end|><|tool_calls_section_end|>',
    "Checking both.<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:3<|tool_call_argument_begin|>"
    '{"city": "Zürich"}<|tool_call_end|><|tool_call_begin|>functions.get_weather:4<|tool_call_argument_begin|>'
    '{"city": "東京"}<|tool_call_end|><|tool_calls_section_end|>',
    "<|tool_calls_section_begin|><|tool_call_begin|>functions.math.add:0<|tool_call_argument_begin|>"
    '{"a": {"b": [1, 2, {"c": null}]}, "s": "x>y"}<|tool_call_end|><|tool_calls_section_end|>',
    "<|tool_calls_section_begin|><|tool_call_begin|>functions.noargs:1<|tool_call_argument_begin|>{}<|tool_call_end|>",
    "<|tool_calls_section_begin|><|tool_call_begin|>functions.f:0<|tool_call_argument_begin|>{not json}"
    "<|tool_call_end|><|tool_calls_section_end|>",
]


@pytest.mark.slow
def test_parser_agrees_with_vllms_kimi_k2_parser(tmp_path):
    """The same generated texts through vLLM 0.32's kimi_k2 tool parser (in vLLM's environment,
    with a k2 tokenizer) and through k2's parser: same content, ids, names and argument strings.
    Texts come from k2's renderer for real message shapes, plus raw edge cases."""
    import subprocess
    from pathlib import Path

    from tests.k2core.model.test_vllm import vllm_python

    _hf_tokenizer(tmp_path)
    rendered = [chat.render([m]).split(chat.GENERATION_PROMPT, 1)[1].removesuffix("<|im_end|>") for m in SHAPES]
    texts = rendered + VLLM_CASES
    p = subprocess.run([vllm_python(), str(Path(__file__).with_name("vllm_parse.py")), str(tmp_path / "tok")],
                       input=json.dumps(texts), capture_output=True, text=True, timeout=300)
    line = next((x for x in p.stdout.splitlines() if x.startswith("K2PARSE ")), None)
    assert line, p.stderr[-3000:]
    for text, v in zip(texts, json.loads(line[8:])):
        ours = chat.parse(text)
        calls = [{"id": c["id"], "name": c["function"]["name"], "arguments": c["function"]["arguments"]}
                 for c in ours.get("tool_calls") or []]
        assert calls == v["calls"], text
        assert bool(calls) == v["tools_called"]
        assert (ours["content"] or None) == (v["content"] or None), text
