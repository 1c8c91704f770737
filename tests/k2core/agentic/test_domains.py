"""Executable domains: schemas from signatures + docstrings, typed validation, refusals as tool
answers, deterministic databases and state hashes, blueprint-then-verify, and τ²-bench's grading
rules (any path to the gold end state passes; a wrong write, a missing fact or no stop fails)."""
from __future__ import annotations

import random
from collections import Counter

import jsonschema
import pytest

from k2core.agentic import blueprint as B
from k2core.agentic import tasks as T
from k2core.agentic.domains import DOMAINS, ToolError
from k2core.agentic.domains.base import Action, Blueprint
from k2core.agentic.domains.retail import Retail
from k2core.text import chat


@pytest.mark.parametrize("name", sorted(DOMAINS))
def test_schemas_are_valid_json_schema_with_descriptions(name):
    d = DOMAINS[name]
    assert len(d.toolkit.specs()) >= 5
    for spec in d.toolkit.specs().values():
        jsonschema.Draft202012Validator.check_schema(spec.parameters)
        jsonschema.Draft202012Validator.check_schema(spec.returns)
        assert spec.parameters["type"] == "object" and spec.description
        for p, sch in spec.parameters["properties"].items():
            assert sch.get("description"), f"{name}.{spec.name}.{p} has no description"


def test_database_and_hash_are_deterministic():
    a, b = Retail.make_db(3, 10), Retail.make_db(3, 10)
    assert Retail.toolkit(a).state_hash() == Retail.toolkit(b).state_hash()
    assert Retail.toolkit(Retail.make_db(4, 10)).state_hash() != Retail.toolkit(a).state_hash()


def test_use_tool_validates_and_refuses():
    db = Retail.make_db(0, 10)
    tk = Retail.fresh(db)
    with pytest.raises(ToolError, match="unknown tool"):
        tk.use_tool("drop_tables")
    with pytest.raises(ToolError, match="invalid arguments for cancel_pending_order: reason"):
        tk.use_tool("cancel_pending_order", {"order_id": "#W1000", "reason": "bored"})
    with pytest.raises(ToolError, match="order_id: Field required"):
        tk.use_tool("get_order_details", {})
    delivered = next(o for o in db.orders.values() if o.status == "delivered")
    before = tk.state_hash()
    with pytest.raises(ToolError, match="only pending orders can be cancelled"):
        tk.use_tool("cancel_pending_order", {"order_id": delivered.order_id, "reason": "no longer needed"})
    assert tk.state_hash() == before                    # a refusal changes nothing
    pending = next(o for o in db.orders.values() if o.status == "pending")
    out = tk.use_tool("cancel_pending_order", {"order_id": pending.order_id, "reason": "ordered by mistake"})
    assert out["status"] == "cancelled" and out["refund"] == round(sum(i.price for i in pending.items), 2)
    assert tk.state_hash() != before and Retail.toolkit(db).state_hash() == before   # the original is untouched


def test_verify_rejects_with_reasons():
    db = Retail.make_db(0, 10)
    delivered = next(o for o in db.orders.values() if o.status == "delivered")
    bad = Blueprint("cancel", "r", {}, [Action("cancel_pending_order", {"order_id": delivered.order_id,
                                                                         "reason": "no longer needed"})])
    assert T.verify(Retail, db, bad).reason.startswith("gold_action_failed: cancel_pending_order")
    nothing = Blueprint("status", "r", {}, [Action("get_order_details", {"order_id": delivered.order_id})])
    assert T.verify(Retail, db, nothing).reason.startswith("no_effect")
    made_up = Blueprint("status", "r", {}, nothing.actions, communicate=["$999999.99"])
    assert T.verify(Retail, db, made_up).reason.startswith("communicate_not_grounded")
    told = Blueprint("status", "r", {}, nothing.actions, communicate=[delivered.status])
    assert T.verify(Retail, db, told).ok


@pytest.mark.parametrize("name", sorted(DOMAINS))
def test_every_verified_blueprint_trajectory_passes_its_own_grade(name):
    d = DOMAINS[name]
    db = d.make_db(1, 15)
    rng = random.Random(0)
    kinds, n = Counter(), 0
    for i in range(120):
        v = T.verify(d, db, d.propose(db, rng))
        if not v.ok:
            continue
        task = T.to_task(d, v, f"{name}-{i}")
        conv = B.build(d, db, task, seed=i)
        assert chat.check_conversation(conv["messages"], conv["tools"]) == []
        g = T.grade(d, db, task, conv["messages"], "user_stop")
        assert g.success, (g.reasons, v.blueprint.kind)
        assert conv["final_hash"] == v.final_hash          # the conversation reached the gold end state
        kinds[v.blueprint.kind] += 1
        n += 1
    assert n >= 40 and len(kinds) >= 3, kinds


def _task(seed=0):
    db = Retail.make_db(seed, 15)
    rng = random.Random(seed)
    while True:
        v = T.verify(Retail, db, Retail.propose(db, rng))
        if v.ok and v.blueprint.kind == "cancel":
            return db, T.to_task(Retail, v, "t"), v


def test_grade_follows_tau2_rules():
    db, task, v = _task()
    conv = B.build(Retail, db, task, seed=1)
    msgs = conv["messages"]
    assert T.grade(Retail, db, task, msgs, "user_stop").success
    # any path to the same end state passes: only the write call, no lookups
    write = [a for a in T.gold_actions(task) if a.name == "cancel_pending_order"][0]
    short = [{"role": "user", "content": "cancel"},
             {"role": "assistant", "content": None, "tool_calls": [{"id": "functions.cancel_pending_order:0",
              "type": "function", "function": {"name": write.name, "arguments": __import__("json").dumps(write.arguments)}}]},
             {"role": "tool", "tool_call_id": "functions.cancel_pending_order:0", "content": "ok"},
             {"role": "assistant", "content": f"Cancelled; refund {task['evaluation_criteria']['communicate_info'][0]}."}]
    g = T.grade(Retail, db, task, short, "agent_stop")
    assert g.success and g.components == {"DB": 1.0, "COMMUNICATE": 1.0}
    # not ended by a stop -> 0 whatever happened
    assert T.grade(Retail, db, task, msgs, "max_turns").reasons[0].startswith("not_terminated")
    # the fact never said -> COMMUNICATE fails, DB still passes
    silent = short[:3] + [{"role": "assistant", "content": "Done."}]
    g = T.grade(Retail, db, task, silent, "user_stop")
    assert g.components == {"DB": 1.0, "COMMUNICATE": 0.0} and not g.success
    # an extra, wrong write -> DB fails
    other = next(o for o in db.orders.values() if o.status == "pending" and o.order_id != write.arguments["order_id"])
    extra = short + [{"role": "assistant", "content": None, "tool_calls": [{"id": "functions.cancel_pending_order:1",
                      "type": "function", "function": {"name": "cancel_pending_order",
                                                       "arguments": f'{{"order_id": "{other.order_id}", "reason": "no longer needed"}}'}}]},
                     {"role": "tool", "tool_call_id": "functions.cancel_pending_order:1", "content": "ok"}]
    assert T.grade(Retail, db, task, extra, "user_stop").components["DB"] == 0.0
    # ACTION basis: every gold action must be matched by a call
    act = {**task, "evaluation_criteria": {**task["evaluation_criteria"], "reward_basis": ["ACTION"]}}
    assert not T.grade(Retail, db, act, short, "user_stop").success      # the lookups are missing
    assert T.grade(Retail, db, act, msgs, "user_stop").success
