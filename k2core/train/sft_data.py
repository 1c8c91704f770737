"""SFT data: conversations in K2's chat format -> packed training rows (issue 21's `sft` stage reads
trajectories through this).

- :func:`screen` says why a conversation cannot be trained on (unknown role, a call to an
  undeclared tool, arguments that are not a JSON object, an empty assistant turn, no assistant
  turn at all); such conversations are counted with their reason and dropped, never repaired.
- :func:`encode` renders each conversation to token ids with the assistant-only loss mask
  (k2core/text/chat.py); one longer than ``seq_len`` is dropped as ``too_long`` — never cut, so
  no call is ever truncated mid-way.
- :func:`pack` places whole conversations into rows of ``seq_len`` tokens (first fit, longest
  first), each with a segment id: the model confines attention to a segment and restarts its
  positions there (``K2ForCausalLM(..., segment_ids=...)``), so a packed conversation trains on
  exactly what it would alone. Labels are the ids on assistant tokens and -100 elsewhere (and on
  the padding, segment -1).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from k2core.text import chat

REASONS = ("unknown_role", "undeclared_tool", "bad_arguments", "empty_assistant", "no_assistant", "too_long",
           "malformed")


@dataclass
class Encoded:
    index: int                     # the conversation's position in the input
    ids: list[int]
    mask: list[int]                # 1 = an assistant-written token (trained)


@dataclass
class Packed:
    input_ids: list[list[int]] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)
    segment_ids: list[list[int]] = field(default_factory=list)
    placement: dict[int, tuple[int, int]] = field(default_factory=dict)   # conversation -> (row, offset)


def screen(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> tuple[str, str] | None:
    """(reason, detail) when the conversation is not trainable, else None."""
    declared = {t["function"]["name"] for t in tools or () if "function" in t}
    n_assistant = 0
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in chat.ROLES:
            return "unknown_role", f"message {i}: role {role!r}"
        if role != "assistant":
            continue
        n_assistant += 1
        calls = m.get("tool_calls") or []
        if not calls and not (m.get("content") or "").strip():
            return "empty_assistant", f"message {i}: an assistant turn with no content and no call"
        for c in calls:
            name = c.get("function", {}).get("name")
            if name not in declared:
                return "undeclared_tool", f"message {i}: a call to {name!r}, which the tools do not declare"
            args, why = chat.arguments_of(c)
            if args is None:
                return "bad_arguments", f"message {i}: {name}: {why}"
    if not n_assistant:
        return "no_assistant", "nothing to train on"
    problems = chat.check_conversation(messages, tools)
    if problems:
        return "malformed", problems[0]
    return None


def encode(tokenizer, conversations: list[tuple[list[dict[str, Any]], list[dict[str, Any]] | None]],
           seq_len: int) -> tuple[list[Encoded], list[dict[str, Any]]]:
    """Token ids + loss masks of the trainable conversations, and the dropped ones with reasons."""
    kept, dropped = [], []
    for i, (messages, tools) in enumerate(conversations):
        bad = screen(messages, tools)
        if bad is None:
            try:
                ids, mask = chat.encode(tokenizer, messages, tools)
            except chat.ChatFormatError as e:
                bad = ("malformed", str(e))
            else:
                if len(ids) > seq_len:
                    bad = ("too_long", f"{len(ids)} tokens > seq_len {seq_len}")
        if bad is not None:
            dropped.append({"index": i, "reason": bad[0], "detail": bad[1]})
            continue
        kept.append(Encoded(i, ids, mask))
    return kept, dropped


def pack(encoded: list[Encoded], seq_len: int, pad_id: int) -> Packed:
    """Whole conversations into rows of `seq_len` (first fit, longest first; deterministic)."""
    rows: list[list[Encoded]] = []
    room: list[int] = []
    for e in sorted(encoded, key=lambda e: (-len(e.ids), e.index)):
        for r, free in enumerate(room):
            if len(e.ids) <= free:
                rows[r].append(e)
                room[r] -= len(e.ids)
                break
        else:
            rows.append([e])
            room.append(seq_len - len(e.ids))
    out = Packed()
    for r, members in enumerate(rows):
        ids, labels, seg = [], [], []
        for s, e in enumerate(members):
            out.placement[e.index] = (r, len(ids))
            ids += e.ids
            labels += [t if m else -100 for t, m in zip(e.ids, e.mask)]
            seg += [s] * len(e.ids)
        pad = seq_len - len(ids)
        out.input_ids.append(ids + [pad_id] * pad)
        out.labels.append(labels + [-100] * pad)
        out.segment_ids.append(seg + [-1] * pad)
    return out
