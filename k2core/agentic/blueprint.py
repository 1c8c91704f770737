"""Blueprint trajectories: a verified task turned into a conversation with no model involved.

User turns come from :class:`~k2core.agentic.user.BlueprintUser` (varied phrasings: everything at
once, or the request first and the details when asked); assistant turns are the gold calls — calls
that need nothing from each other's results go out together as parallel calls, a change is
confirmed with the user first, as the policies ask; tool results are the real outputs of executing
those calls on a fresh copy of the database; the closing answer states the facts the task requires.
Such a trajectory is constructed data (``origin=blueprint``), graded like any other.
"""
from __future__ import annotations

import json
import random
from typing import Any

from k2core.agentic.domains.base import Domain, leaves, result_text
from k2core.agentic.tasks import gold_actions
from k2core.agentic.user import BlueprintUser
from k2core.text import chat

ASK = ["I can help with that. Could you give me your {keys}?", "Sure. To look this up, can you tell me your {keys}?",
       "Happy to help. May I have your {keys}, please?"]
LEAD = ["", "Let me look that up.", "One moment while I check.", "Checking now."]
CONFIRM = ["To confirm: I will {what}. Shall I proceed?", "I am about to {what}. Do you confirm?",
           "Just to be sure, I'll {what}. Should I go ahead?"]
DONE = ["Done. {facts}", "All set. {facts}", "That's complete. {facts}"]
INFO = ["Here is what I found: {facts}", "{facts}", "I checked: {facts}"]


def agent_system_prompt(domain: type[Domain]) -> str:
    return (f"You are a customer service agent for {domain.description}. Use the tools to help the user, "
            f"follow the policy below, and end your final message with the result.\n\n{domain.policy}")


def _groups(domain: type[Domain], actions, known: set[str]) -> list[list]:
    """Consecutive reads whose arguments are all known before the group go out in parallel; each
    write is a group of its own."""
    specs = domain.toolkit.specs()
    groups: list[list] = []
    for a in actions:
        write = specs[a.name].mutates_state
        ready = all(v in known for v in leaves(a.arguments))
        if groups and not write and ready and not specs[groups[-1][0].name].mutates_state:
            groups[-1].append(a)
        else:
            groups.append([a])
    return groups


def _describe(domain: type[Domain], a) -> str:
    desc = domain.toolkit.specs()[a.name].description.split(";")[0].split(".")[0].strip()
    args = ", ".join(f"{k} {v}" for k, v in a.arguments.items())
    return f"{desc[0].lower()}{desc[1:]} ({args})"


def _label(fact: str, outputs: list[Any]) -> str:
    """'delivered' -> 'status: delivered' when some gold output holds it under a key."""
    plain = fact.lstrip("$")

    def find(obj: Any) -> str | None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                if not isinstance(v, (dict, list)) and str(v) == plain or (isinstance(v, float) and f"{v:.2f}" == plain):
                    return k
                hit = find(v)
                if hit:
                    return hit
        if isinstance(obj, list):
            for v in obj:
                hit = find(v)
                if hit:
                    return hit
        return None
    for o in outputs:
        key = find(o)
        if key:
            return f"{key.replace('_', ' ')}: {fact}"
    return fact


def build(domain: type[Domain], db, task: dict[str, Any], seed: int) -> dict[str, Any]:
    """The conversation of `task` (a τ²-shaped task of `domain`); its messages, the OpenAI tools
    and the final state hash."""
    rng = random.Random(seed)
    user = BlueprintUser()
    tk = domain.fresh(db)
    known_info = task["k2"]["known_info"]
    known = {str(v) for v in known_info.values()}
    messages: list[dict[str, Any]] = [{"role": "system", "content": agent_system_prompt(domain)}]
    brief = rng.random() < 0.5
    messages.append({"role": "user", "content": user.opening(task, rng, brief)})
    if brief:
        keys = list(known_info)
        keys = ", ".join(keys[:-1]) + (" and " if len(keys) > 1 else "") + keys[-1]
        messages.append({"role": "assistant", "content": rng.choice(ASK).format(keys=keys.replace("your ", ""))})
        messages.append({"role": "user", "content": user.give_info(task, rng)})
    outputs: list[Any] = []
    n = 0
    specs = domain.toolkit.specs()
    for group in _groups(domain, gold_actions(task), known):
        if specs[group[0].name].mutates_state:
            messages.append({"role": "assistant", "content": rng.choice(CONFIRM).format(what=_describe(domain, group[0]))})
            messages.append({"role": "user", "content": user.confirm(rng)})
        calls = []
        for a in group:
            calls.append({"id": chat.call_id(a.name, n), "type": "function",
                          "function": {"name": a.name, "arguments": json.dumps(a.arguments, ensure_ascii=False)}})
            n += 1
        messages.append({"role": "assistant", "content": rng.choice(LEAD) or None, "tool_calls": calls})
        for a, c in zip(group, calls):
            out = tk.use_tool(a.name, a.arguments)           # verified: gold actions do not fail
            outputs.append(out)
            known |= set(leaves(out))
            messages.append({"role": "tool", "name": a.name, "tool_call_id": c["id"], "content": result_text(out)})
    facts = "; ".join(_label(f, outputs) for f in task["evaluation_criteria"]["communicate_info"])
    writes = any(specs[a.name].mutates_state for a in gold_actions(task))
    if writes:
        final = rng.choice(DONE).format(facts=facts or "Your request has been carried out.")
    else:
        final = rng.choice(INFO).format(facts=facts)
    messages.append({"role": "assistant", "content": final.strip()})
    messages.append({"role": "user", "content": user.close(rng)})
    return {"messages": messages, "tools": domain.toolkit.openai_tools(), "final_hash": tk.state_hash()}
