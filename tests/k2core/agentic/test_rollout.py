"""The episode loop: all live conversations advance with one batched agent call per round;
malformed agent output becomes an error tool result with a recorded reason; stops end episodes.
The agent here is a scripted LLM (a test double: it answers from a script, not a model)."""
from __future__ import annotations

import json
import random

from k2core.agentic import tasks as T
from k2core.agentic.domains.bank import Bank
from k2core.agentic.rollout import DomainEnv, Episode, run_episodes
from k2core.agentic.user import STOP
from k2core.infer.llm import LLM, Completion, TextParams
from k2core.text import chat


class ScriptedLLM(LLM):
    backend, model = "scripted", "script"

    def __init__(self, script):
        self.script, self.batches = script, []

    def generate(self, prompts, params=None, progress=True):
        self.batches.append(len(prompts))
        outs = []
        for p in prompts:
            turn = p.count("<|im_assistant|>") - 1          # assistant turns so far in this conversation
            key = next(k for k in self.script if f"[{k}]" in p)
            steps = self.script[key]
            outs.append(Completion(steps[min(turn, len(steps) - 1)], "stop", 1, 1))
        return outs


def calls_text(*calls):
    inner = "".join(f"<|tool_call_begin|>functions.{n}:{i}<|tool_call_argument_begin|>{a}<|tool_call_end|>"
                    for i, (n, a) in enumerate(calls))
    return f"<|tool_calls_section_begin|>{inner}<|tool_calls_section_end|>"


def bank_task(db, kind="balance"):
    rng = random.Random(0)
    while True:
        v = T.verify(Bank, db, Bank.propose(db, rng))
        if v.ok and v.blueprint.kind == kind:
            return T.to_task(Bank, v, f"bank-{kind}")


def test_batched_rounds_errors_and_a_successful_episode():
    db = Bank.make_db(0, 8)
    task = bank_task(db)
    phone = task["k2"]["known_info"]["phone"]
    cust = Bank.fresh(db).use_tool("find_customer_by_phone", {"phone": phone})
    savings = next(a for a in Bank.fresh(db).use_tool("list_accounts", {"customer_id": cust}) if a["kind"] == "savings")
    script = {
        "good": [calls_text(("find_customer_by_phone", json.dumps({"phone": phone}))),
                 calls_text(("list_accounts", json.dumps({"customer_id": cust}))),
                 f"Your savings balance is ${savings['balance']:.2f}."],
        "garbage": [calls_text(("find_customer_by_phone", "{not json")), calls_text(("launch_rocket", "{}")),
                    calls_text(("get_balance", json.dumps({"account_id": 7}))),
                    '<|tool_calls_section_begin|>{"name": oops', "I give up. " + STOP],
    }
    llm = ScriptedLLM(script)
    tools = Bank.toolkit.openai_tools()
    eps = [Episode(task, DomainEnv(Bank, db), tools, [{"role": "system", "content": f"[{k}]"}], seed=i)
           for i, k in enumerate(script)]
    stats = run_episodes(eps, llm, TextParams(max_tokens=32), max_turns=8)
    good, bad = eps
    # one agent call per round carries every live conversation
    assert llm.batches[:3] == [2, 2, 2] and stats["agent_calls"] == len(llm.batches)
    assert good.termination == "user_stop"
    # the malformed section is a turn without calls: the scenario user, asked nothing, closes
    assert bad.termination == "user_stop" and bad.turns == 4
    assert T.grade(Bank, db, task, good.messages, good.termination).success
    assert [e["kind"] for e in bad.errors] == ["bad_json", "unknown_tool", "invalid_arguments", "malformed_call_section"]
    tool_results = [m["content"] for m in bad.messages if m["role"] == "tool"]
    assert tool_results[0].startswith("Error: arguments are not valid JSON")
    assert tool_results[1] == "Error: unknown tool 'launch_rocket'"
    assert "invalid arguments for get_balance" in tool_results[2]
    # ids renumbered over the conversation; the conversation stays well formed
    assert [c["id"] for m in good.messages for c in m.get("tool_calls") or []] == \
        ["functions.find_customer_by_phone:0", "functions.list_accounts:1"]
    assert chat.check_conversation(good.messages, tools) == []


def test_turn_limit_ends_an_agent_that_never_stops():
    db = Bank.make_db(0, 8)
    task = bank_task(db)
    llm = ScriptedLLM({"loop": [calls_text(("get_balance", json.dumps({"account_id": "A100"})))]})
    e = Episode(task, DomainEnv(Bank, db), Bank.toolkit.openai_tools(), [{"role": "system", "content": "[loop]"}])
    run_episodes([e], llm, TextParams(max_tokens=16), max_turns=3)
    assert e.termination == "max_turns" and e.turns == 3
    assert not T.grade(Bank, db, task, e.messages, e.termination).success


def test_agent_stop_marker_ends_the_episode():
    db = Bank.make_db(0, 8)
    task = bank_task(db)
    e = Episode(task, DomainEnv(Bank, db), Bank.toolkit.openai_tools(), [{"role": "system", "content": "[s]"}])
    run_episodes([e], ScriptedLLM({"s": ["Transferring you. " + STOP]}), TextParams(max_tokens=16))
    assert e.termination == "agent_stop" and e.turns == 1
