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
- With ``share_prefix``, conversations that open with the same tokens before their first user turn
  (the tool declarations and the system prompt: ~1,500 of a blueprint conversation's ~2,300
  tokens) are packed as one copy of that prefix (segment 0) followed by their remainders, each
  attending to the prefix (``K2ForCausalLM(..., prefix_lens=...)``): the same logits, loss and
  gradients as the whole conversations (tested), with the prefix computed once per row.
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
    prefix_lens: list[int] = field(default_factory=list)                   # shared prefix tokens per row (0: none)
    placement: dict[int, tuple[int, int]] = field(default_factory=dict)   # conversation -> (row, offset)
    represented_tokens: int = 0                                            # tokens of the whole conversations


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


def _first_fit(items: list[Encoded], size, room0: int) -> list[list[Encoded]]:
    """First fit, longest first (deterministic): lists of items whose sizes fit in `room0`."""
    rows: list[list[Encoded]] = []
    room: list[int] = []
    for e in sorted(items, key=lambda e: (-size(e), e.index)):
        for r, free in enumerate(room):
            if size(e) <= free:
                rows[r].append(e)
                room[r] -= size(e)
                break
        else:
            rows.append([e])
            room.append(room0 - size(e))
    return rows


def prefix_length(e: Encoded, user_id: int | None) -> int:
    """Tokens before the first user turn (tool declarations + system prompt); 0 without one."""
    return e.ids.index(user_id) if user_id is not None and user_id in e.ids else 0


MIN_SHARED = 64          # shortest common opening worth sharing (tokens)


def _common(a: list[int], b: list[int], limit: int) -> int:
    """Length of the common prefix of `a` and `b`, at most `limit`."""
    n = min(len(a), len(b), limit)
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def pack(encoded: list[Encoded], seq_len: int, pad_id: int, share_prefix: bool = False,
         user_id: int | None = None) -> Packed:
    """Whole conversations into rows of `seq_len` (first fit, longest first; deterministic). With
    `share_prefix` (and `user_id`, the ``<|im_user|>`` token), conversations are sorted by their
    tokens before the first user turn, and neighbours whose openings agree on at least MIN_SHARED
    tokens form a group: each row of a group holds one copy of the group's common opening, then
    the rest of each member conversation."""
    out = Packed(represented_tokens=sum(len(e.ids) for e in encoded))
    alone: list[Encoded] = []
    heads = {e.index: e.ids[:prefix_length(e, user_id)] for e in encoded} if share_prefix else {}
    groups: list[tuple[int, list[Encoded]]] = []          # (shared prefix length, members)
    for e in sorted(encoded, key=lambda e: (heads.get(e.index, []), e.index)):
        head = heads.get(e.index, [])
        if groups and head:
            n, members = groups[-1]
            common = _common(heads[members[0].index], head, n)
            if common >= MIN_SHARED:
                groups[-1] = (common, members + [e])
                continue
        if len(head) >= MIN_SHARED:
            groups.append((len(head), [e]))
        else:
            alone.append(e)
    for P, members in groups:
        if len(members) == 1:
            alone += members
            continue
        prefix = members[0].ids[:P]
        for row in _first_fit(members, lambda e: len(e.ids) - P, seq_len - P):
            _emit(out, [(e, P) for e in row], list(prefix), seq_len, pad_id)
    for row in _first_fit(alone, lambda e: len(e.ids), seq_len):
        _emit(out, [(e, 0) for e in row], [], seq_len, pad_id)
    return out


def _emit(out: Packed, members: list[tuple[Encoded, int]], prefix: list[int], seq_len: int, pad_id: int) -> None:
    """One row: the shared prefix (segment 0, untrained), then each member from `skip` tokens on."""
    r = len(out.input_ids)
    ids, labels, seg = list(prefix), [-100] * len(prefix), [0] * len(prefix)
    first = 1 if prefix else 0
    for s, (e, skip) in enumerate(members, start=first):
        out.placement[e.index] = (r, len(ids) - skip)
        start = len(labels)
        ids += e.ids[skip:]
        labels += [t if m else -100 for t, m in zip(e.ids[skip:], e.mask[skip:])]
        labels[start] = -100          # nothing before it in the row predicts a segment's first token
        seg += [s] * (len(e.ids) - skip)
    pad = seq_len - len(ids)
    out.input_ids.append(ids + [pad_id] * pad)
    out.labels.append(labels + [-100] * pad)
    out.segment_ids.append(seg + [-1] * pad)
    out.prefix_lens.append(len(prefix))
