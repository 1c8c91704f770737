"""Tasks: blueprint-then-verify (APIGen-MT), τ²-bench's Task JSON shape, and its grading rules.

- :func:`verify` executes a blueprint's gold actions on a fresh copy of the database; a blueprint
  whose action fails, that changes nothing and tells nothing, or whose facts to communicate are
  neither in the gold outputs nor in the policy is rejected with that reason.
- :func:`to_task` writes a verified blueprint as a τ²-bench Task (``user_scenario``,
  ``evaluation_criteria`` with ``actions``, ``env_assertions``, ``communicate_info``,
  ``reward_basis``); k2's extras (rubric, difficulty, what the user knows) sit under ``"k2"``,
  which τ²-style readers may ignore.
- :func:`grade` scores a conversation by τ²-bench's rules: 0 unless it ended by a stop; otherwise
  the product of the ``reward_basis`` components — DB (the agent's state-changing calls replayed
  on a fresh copy vs the gold actions executed on another: same state hash), COMMUNICATE (each fact
  in some assistant message, case-insensitive, commas stripped), ACTION (each gold action matched
  by a call), ENV_ASSERTION (each assertion on the final state).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from k2core.agentic.domains.base import Action, Blueprint, Domain, ToolError, leaves, result_text
from k2core.text.chat import arguments_of

REJECT_REASONS = ("gold_action_failed", "no_state_change", "no_effect", "communicate_not_grounded")
STOPS = ("user_stop", "agent_stop")


@dataclass
class Verified:
    blueprint: Blueprint
    outputs: list[Any] | None             # each gold action's result, in order (None: rejected)
    reason: str = ""                      # one of REJECT_REASONS + detail
    final_hash: str = ""

    @property
    def ok(self) -> bool:
        return self.outputs is not None


def verify(domain: type[Domain], db: BaseModel, bp: Blueprint) -> Verified:
    tk = domain.fresh(db)
    before = tk.state_hash()
    outputs = []
    for a in bp.actions:
        try:
            outputs.append(tk.use_tool(a.name, a.arguments))
        except ToolError as e:
            return Verified(bp, None, f"gold_action_failed: {a.name}: {e}")
    specs = domain.toolkit.specs()
    writes = any(specs[a.name].mutates_state for a in bp.actions)
    after = tk.state_hash()
    if writes and after == before:
        return Verified(bp, None, "no_state_change: the write actions left the database as it was")
    if not writes and not bp.communicate:
        return Verified(bp, None, "no_effect: no write action and nothing to tell the user")
    said = {x.lower().replace(",", "") for o in outputs for x in leaves(o)}
    policy = domain.policy.lower()
    for info in bp.communicate:              # a fact comes from the data the gold calls return, or the policy
        plain = info.lower().replace(",", "").lstrip("$")
        if plain not in said and plain not in policy:
            return Verified(bp, None, f"communicate_not_grounded: {info!r} is in no gold output nor the policy")
    return Verified(bp, outputs, "", after)


def known_text(known: dict[str, str]) -> str:
    return "; ".join(f"your {k}: {v}" if not k.startswith("your ") else f"{k}: {v}" for k, v in known.items())


def to_task(domain: type[Domain], v: Verified, task_id: str) -> dict[str, Any]:
    bp = v.blueprint
    basis = ["DB", "COMMUNICATE"] if bp.communicate else ["DB"]
    return {
        "id": task_id,
        "description": {"purpose": bp.reason, "relevant_policies": None,
                        "notes": f"constructed by k2 from a verified blueprint ({domain.name}/{bp.kind})"},
        "user_scenario": {"persona": bp.persona,
                          "instructions": {"domain": domain.name, "reason_for_call": bp.reason,
                                           "known_info": known_text(bp.known_info),
                                           "unknown_info": bp.unknown_info or None,
                                           "task_instructions": bp.task_instructions}},
        "initial_state": None,
        "evaluation_criteria": {
            "actions": [{"action_id": f"{task_id}-{i}", "requestor": a.requestor, "name": a.name,
                         "arguments": a.arguments, "info": None, "compare_args": None}
                        for i, a in enumerate(bp.actions)],
            "env_assertions": [], "communicate_info": list(bp.communicate), "nl_assertions": None,
            "reward_basis": basis},
        "k2": {"kind": bp.kind, "difficulty": bp.difficulty, "known_info": bp.known_info,
               "rubric": {"success_criteria": bp.reason, "expected_tools": [a.name for a in bp.actions],
                          "checkpoints": list(bp.checkpoints)},
               "gold_outputs": [result_text(o) for o in v.outputs or []], "final_hash": v.final_hash},
    }


def gold_actions(task: dict[str, Any]) -> list[Action]:
    return [Action(a["name"], a.get("arguments") or {}, a.get("requestor", "assistant"))
            for a in task["evaluation_criteria"]["actions"]]


# ---------------------------------------------------------------------------- grading
@dataclass
class Grade:
    reward: float
    components: dict[str, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return abs(self.reward - 1.0) < 1e-6


def tool_calls(messages: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any] | None]]:
    """The assistant's calls in order: (name, arguments or None when they did not parse)."""
    out = []
    for m in messages:
        if m.get("role") == "assistant":
            for c in m.get("tool_calls") or []:
                out.append((c["function"]["name"], arguments_of(c)[0]))
    return out


def _norm(s: str) -> str:
    return s.lower().replace(",", "")


def grade(domain: type[Domain], db: BaseModel, task: dict[str, Any], messages: list[dict[str, Any]],
          termination: str) -> Grade:
    crit = task["evaluation_criteria"]
    if termination not in STOPS:
        return Grade(0.0, {}, [f"not_terminated: the conversation ended by {termination}"])
    g = Grade(1.0)
    calls = tool_calls(messages)
    basis = crit.get("reward_basis") or ["DB", "COMMUNICATE"]
    if "DB" in basis:
        specs = domain.toolkit.specs()
        predicted = domain.fresh(db)
        for name, args in calls:
            if name in specs and specs[name].mutates_state and args is not None:
                try:
                    predicted.use_tool(name, args)
                except ToolError:
                    pass
        gold = domain.fresh(db)
        for a in gold_actions(task):
            try:
                gold.use_tool(a.name, a.arguments)
            except ToolError:
                pass
        ok = predicted.state_hash() == gold.state_hash()
        g.components["DB"] = float(ok)
        if not ok:
            g.reasons.append("db_mismatch: the final state differs from the gold actions'")
    if "COMMUNICATE" in basis:
        said = [_norm(m.get("content") or "") for m in messages if m.get("role") == "assistant"]
        missing = [i for i in crit.get("communicate_info") or [] if not any(_norm(i) in s for s in said)]
        g.components["COMMUNICATE"] = float(not missing)
        if missing:
            g.reasons.append(f"not_communicated: {missing}")
    if "ACTION" in basis:
        unmatched = [a.name for a in gold_actions(task)
                     if not any(n == a.name and args is not None and all(args.get(k) == v for k, v in a.arguments.items())
                                for n, args in calls)]
        g.components["ACTION"] = float(not unmatched)
        if unmatched:
            g.reasons.append(f"actions_missing: {unmatched}")
    if "ENV_ASSERTION" in basis:              # k2's domains write none; a task that has some is not passed blindly
        pending = crit.get("env_assertions") or []
        g.components["ENV_ASSERTION"] = float(not pending)
        if pending:
            g.reasons.append(f"env_assertions_unsupported: k2 does not evaluate {len(pending)} env assertion(s) yet")
    for v in g.components.values():
        g.reward *= v
    return g
