"""K2's chat format, once: render OpenAI-style messages (+ tools) to text, token ids and a loss
mask, and parse generated text back into OpenAI ``tool_calls`` (POSTTRAIN_REFERENCE.md §1).

    <|im_system|>tool_declare<|im_middle|>[{"function": {...}, "type": "function"}]<|im_end|>   (tools only)
    <|im_system|>system<|im_middle|>You are a helpful assistant<|im_end|>
    <|im_user|>user<|im_middle|>Cancel order #W1.<|im_end|>
    <|im_assistant|>assistant<|im_middle|>Sure.<|tool_calls_section_begin|><|tool_call_begin|>
        functions.cancel_order:0<|tool_call_argument_begin|>{"order_id": "#W1"}<|tool_call_end|>
        <|tool_calls_section_end|><|im_end|>
    <|im_system|>cancel_order<|im_middle|>## Return of functions.cancel_order:0\n{...}<|im_end|>

Every message is ``<open-role-token>NAME<|im_middle|>CONTENT<|im_end|>`` with no separator; NAME
is the message's ``name`` or its role. A conversation that does not open with a system message
gets :data:`DEFAULT_SYSTEM`. Tools are declared as JSON with every key sorted (Kimi's tokenizer
deep-sorts them), serialised as Jinja's ``tojson`` does (``ensure_ascii=False``), so a Jinja chat
template can render the same bytes. Tool-call ids are ``functions.NAME:IDX`` with IDX counting
calls over the whole conversation (:func:`call_id`).

The parser agrees with vLLM 0.32's ``kimi_k2`` tool parser on the same text (tested: no-call turns,
parallel calls, unicode and nested JSON arguments, dotted names, truncation). It keeps a dotted
tool name whole (``math.add``, as BFCL's names are), as vLLM 0.32 does; vLLM's older
``kimi_k2_tool_parser.py`` kept only the part after the last dot (``add``). Like sglang's and
mlx-lm's parsers it also accepts the singular ``<|tool_call_section_begin|>``.

Only this module knows the layout: synthesis, SFT, serving, RL and evaluation all call it.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterable

from k2core.text.special_tokens import (IM_ASSISTANT, IM_END, IM_MIDDLE, IM_SYSTEM, IM_USER, TOOL_CALL_ARGUMENT_BEGIN,
                                        TOOL_CALL_BEGIN, TOOL_CALL_END, TOOL_CALLS_BEGIN, TOOL_CALLS_END)

from k2core.text.chat_template import CHAT_TEMPLATE, DEFAULT_SYSTEM, GENERATION_PROMPT  # noqa: F401 (re-exported)
STOP = [IM_END]                                  # an assistant turn ends here
_OPEN = {"system": IM_SYSTEM, "user": IM_USER, "assistant": IM_ASSISTANT, "tool": IM_SYSTEM}
ROLES = tuple(_OPEN)


class ChatFormatError(ValueError):
    """A message the format cannot render (unknown role, a tool result without a call id...)."""


def deep_sort(obj: Any) -> Any:
    """Dicts with their keys sorted, recursively (lists keep their order)."""
    if isinstance(obj, dict):
        return {k: deep_sort(obj[k]) for k in sorted(obj)}
    if isinstance(obj, list):
        return [deep_sort(x) for x in obj]
    return obj


def tojson(obj: Any) -> str:
    """Jinja's ``tojson`` as transformers overrides it: ``json.dumps(obj, ensure_ascii=False)``."""
    return json.dumps(obj, ensure_ascii=False)


def call_id(name: str, index: int) -> str:
    return f"functions.{name}:{index}"


def tool_declaration(tools: list[dict[str, Any]]) -> str:
    return tojson(deep_sort(tools))


# ---------------------------------------------------------------------------- rendering
@dataclass(frozen=True)
class Segment:
    text: str
    train: bool                                  # an assistant-written span (the SFT loss covers it)


def _content_text(content: Any) -> str:
    """A string, or OpenAI content parts (their text parts joined)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    raise ChatFormatError(f"message content must be a string or a list of parts, got {type(content).__name__}")


def _arguments(args: Any) -> str:
    return args if isinstance(args, str) else tojson(args)


def render_tool_calls(calls: list[dict[str, Any]]) -> str:
    parts = [TOOL_CALLS_BEGIN]
    for c in calls:
        fn = c.get("function") or {}
        cid = c.get("id")
        if not cid or not fn.get("name"):
            raise ChatFormatError(f"a tool call needs an id and function.name: {c}")
        parts.append(f"{TOOL_CALL_BEGIN}{cid}{TOOL_CALL_ARGUMENT_BEGIN}{_arguments(fn.get('arguments', {}))}"
                     f"{TOOL_CALL_END}")
    parts.append(TOOL_CALLS_END)
    return "".join(parts)


def segments(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
             add_generation_prompt: bool = False) -> list[Segment]:
    """The conversation as spans of text, each marked trainable or not: an assistant message's
    content, tool calls and closing ``<|im_end|>`` are trainable; its header, and everything
    anyone else wrote, are not."""
    out: list[Segment] = []
    if tools:
        out.append(Segment(f"{IM_SYSTEM}tool_declare{IM_MIDDLE}{tool_declaration(tools)}{IM_END}", False))
    if not messages or messages[0].get("role") != "system":
        out.append(Segment(f"{IM_SYSTEM}system{IM_MIDDLE}{DEFAULT_SYSTEM}{IM_END}", False))
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in _OPEN:
            raise ChatFormatError(f"message {i}: role {role!r}; expected one of {', '.join(ROLES)}")
        name = m.get("name") or role
        head = f"{_OPEN[role]}{name}{IM_MIDDLE}"
        if role == "assistant":
            body = _content_text(m.get("content"))
            if m.get("tool_calls"):
                body += render_tool_calls(m["tool_calls"])
            out += [Segment(head, False), Segment(body + IM_END, True)]
        elif role == "tool":
            if not m.get("tool_call_id"):
                raise ChatFormatError(f"message {i}: a tool message needs tool_call_id")
            out.append(Segment(f"{head}## Return of {m['tool_call_id']}\n{_content_text(m.get('content'))}{IM_END}",
                               False))
        else:
            out.append(Segment(f"{head}{_content_text(m.get('content'))}{IM_END}", False))
    if add_generation_prompt:
        out.append(Segment(GENERATION_PROMPT, False))
    return out


def render(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
           add_generation_prompt: bool = False) -> str:
    return "".join(s.text for s in segments(messages, tools, add_generation_prompt))


def encode(tokenizer, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
           add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
    """Token ids and a same-length 0/1 loss mask (1 = assistant-written) with a ``tokenizers``
    tokenizer. Segment boundaries are special tokens, so encoding span by span gives the ids of
    the whole text."""
    ids: list[int] = []
    mask: list[int] = []
    for s in segments(messages, tools, add_generation_prompt):
        piece = tokenizer.encode(s.text, add_special_tokens=False).ids
        ids += piece
        mask += [int(s.train)] * len(piece)
    return ids, mask


# ---------------------------------------------------------------------------- parsing
_SECTION_BEGIN = re.compile(r"<\|tool_calls?_section_begin\|>")
_CALL = re.compile(re.escape(TOOL_CALL_BEGIN) + r"\s*(?P<id>[^<]+:\d+)\s*" + re.escape(TOOL_CALL_ARGUMENT_BEGIN)
                   + r"\s*(?P<args>(?:(?!" + re.escape(TOOL_CALL_BEGIN) + r").)*?)\s*" + re.escape(TOOL_CALL_END),
                   re.DOTALL)


def tool_name(cid: str) -> str:
    """``functions.math.add:3`` -> ``math.add``: the id up to its first colon, without the
    ``functions.`` prefix (vLLM 0.32's parser does the same; older vLLM parsers kept only ``add``)."""
    return cid.split(":", 1)[0].strip().removeprefix("functions.")


def parse(text: str) -> dict[str, Any]:
    """Generated assistant text -> an OpenAI assistant message: ``content`` (None when empty) and,
    when there are calls, ``tool_calls`` with the raw ids and argument strings."""
    text = text.removesuffix(IM_END)
    m = _SECTION_BEGIN.search(text)
    if m is None:
        return {"role": "assistant", "content": text or None}
    content = text[:m.start()]
    calls = [{"id": c["id"].strip(), "type": "function",
              "function": {"name": tool_name(c["id"]), "arguments": c["args"]}}
             for c in _CALL.finditer(text, m.end())]
    msg: dict[str, Any] = {"role": "assistant", "content": content or None}
    if calls:
        msg["tool_calls"] = calls
    return msg


def arguments_of(call: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """A parsed call's arguments as a dict, or (None, why) when they are not a JSON object."""
    raw = call.get("function", {}).get("arguments", "")
    if isinstance(raw, dict):
        return raw, ""
    try:
        args = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError as e:
        return None, f"arguments are not valid JSON ({e.msg} at char {e.pos})"
    if not isinstance(args, dict):
        return None, f"arguments must be a JSON object, got {type(args).__name__}"
    return args, ""


# ---------------------------------------------------------------------------- checks
def check_conversation(messages: list[dict[str, Any]], tools: Iterable[dict[str, Any]] | None = None) -> list[str]:
    """Why a conversation is not well formed (empty when it is): roles in a valid order (system
    first if at all, a user turn before the first assistant turn), every call naming a declared
    tool with unique ids, every tool result answering an open call of the turn before it."""
    problems: list[str] = []
    declared = {t["function"]["name"] for t in tools or () if "function" in t}
    open_calls: set[str] = set()
    seen_ids: set[str] = set()
    seen_user = False
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in _OPEN:
            problems.append(f"message {i}: unknown role {role!r}")
            continue
        if role == "system" and i != 0:
            problems.append(f"message {i}: a system message after the start")
        if role == "user":
            seen_user = True
        if role == "assistant" and not seen_user:
            problems.append(f"message {i}: an assistant turn before any user turn")
        if role != "tool" and open_calls and role != "assistant":
            problems.append(f"message {i}: {role} message while calls {sorted(open_calls)} are unanswered")
        if role == "assistant":
            if open_calls:
                problems.append(f"message {i}: calls {sorted(open_calls)} were never answered")
            open_calls = set()
            for c in m.get("tool_calls") or []:
                cid, name = c.get("id"), c.get("function", {}).get("name")
                if cid in seen_ids:
                    problems.append(f"message {i}: duplicate call id {cid}")
                seen_ids.add(cid)
                open_calls.add(cid)
                if declared and name not in declared:
                    problems.append(f"message {i}: call to undeclared tool {name!r}")
        if role == "tool":
            cid = m.get("tool_call_id")
            if cid not in open_calls:
                problems.append(f"message {i}: tool result for {cid!r}, which no open call has")
            open_calls.discard(cid)
    if open_calls:
        problems.append(f"calls {sorted(open_calls)} were never answered")
    return problems
