"""The one episode loop (synthesis, RL and evaluation all call it): live conversations between an
agent (the engine, prompted in K2's chat format), a user simulator and tool environments, advanced
together — one batched agent call and one batched user call per round, across every live
conversation, never one conversation at a time.

An environment executes the agent's calls: :class:`DomainEnv` (an executable domain's toolkit on a
fresh database copy), :class:`SandboxEnv` (``run_python`` in k2's sandbox) or
:class:`SimulatedEnv` (the teacher as a world model, k2core/agentic/simulator.py; its calls are
batched too). Malformed agent output — a call section that does not parse, arguments that are not
a JSON object, an unknown tool, arguments of the wrong type — gets an error message as the tool
result, as τ²-bench does, and is recorded on the episode with its reason.
"""
from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass, field
from typing import Any

from k2core.agentic.domains.base import Domain, ToolError, result_text
from k2core.agentic.user import STOP, BlueprintUser, termination_of
from k2core.text import chat
from k2core.text.special_tokens import TOOL_CALL_BEGIN

class DomainEnv:
    """An executable domain's tools over a fresh copy of its database."""

    def __init__(self, domain: type[Domain], db):
        self.domain, self.toolkit = domain, domain.fresh(db)
        self.names = set(domain.toolkit.specs())

    def call(self, name: str, args: dict[str, Any]) -> str:
        return result_text(self.toolkit.use_tool(name, args))


class SandboxEnv:
    """``run_python``: the code runs in k2's sandbox; the tool answers with its exit code and output."""

    TOOL = {"type": "function", "function": {
        "name": "run_python", "description": "Run a Python program in a sandbox and return its exit code, stdout "
                                             "and stderr.",
        "parameters": {"type": "object", "properties": {"code": {"type": "string", "description": "the program"}},
                       "required": ["code"]}}}

    def __init__(self):
        self.names = {"run_python"}

    def call(self, name: str, args: dict[str, Any]) -> str:
        from k2core import sandbox

        code = args.get("code")
        if not isinstance(code, str):
            raise ToolError("Error: run_python needs a string argument code")
        r = sandbox.run(["python", "main.py"], files={"main.py": code}, limits=sandbox.Limits(timeout_s=10))
        return result_text({"exit_code": r.exit_code, "stdout": r.stdout[-2000:], "stderr": r.stderr[-2000:],
                            **({"stopped_by": r.stopped_by} if r.stopped_by else {})})


@dataclass
class Episode:
    task: dict[str, Any]
    env: Any
    tools: list[dict[str, Any]]             # the OpenAI tools offered (the env's + distractors)
    messages: list[dict[str, Any]]          # starts with the agent's system prompt
    seed: int = 0
    phase: str = "user"                     # whose turn: user | agent
    done: bool = False
    termination: str = ""                   # user_stop | agent_stop | max_turns | user_transfer | ...
    turns: int = 0                          # agent generations
    calls: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    rng: random.Random = field(default_factory=random.Random)
    sim_state: dict[str, Any] = field(default_factory=dict)   # the tool simulator's world for this conversation

    def __post_init__(self):
        self.rng = random.Random(self.seed)

    def error(self, kind: str, detail: str) -> str:
        self.errors.append({"turn": self.turns, "kind": kind, "detail": detail[:300]})
        return detail


def _declared(tools: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {t["function"]["name"]: t["function"] for t in tools}


def execute_calls(e: Episode, msg: dict[str, Any], simulator=None, pending: list | None = None) -> None:
    """Renumber `msg`'s calls (``functions.NAME:IDX`` over the conversation), run each, append the
    assistant message and one tool message per call. Simulated calls are queued on `pending`."""
    import jsonschema

    declared = _declared(e.tools)
    e.messages.append(msg)
    for c in msg.get("tool_calls") or []:
        name = c["function"]["name"]
        c["id"] = chat.call_id(name, e.calls)
        e.calls += 1
        tool_msg = {"role": "tool", "name": name, "tool_call_id": c["id"], "content": ""}
        e.messages.append(tool_msg)
        args, why = chat.arguments_of(c)
        if args is None:
            tool_msg["content"] = e.error("bad_json", f"Error: {why}")
            continue
        if name not in declared:
            tool_msg["content"] = e.error("unknown_tool", f"Error: unknown tool {name!r}")
            continue
        try:
            jsonschema.validate(args, declared[name].get("parameters") or {"type": "object"})
        except jsonschema.ValidationError as err:
            tool_msg["content"] = e.error("invalid_arguments", f"Error: invalid arguments for {name}: {err.message}")
            continue
        if name in getattr(e.env, "names", ()):
            try:
                tool_msg["content"] = e.env.call(name, args)
            except ToolError as err:
                tool_msg["content"] = e.error("tool_error", str(err))
        elif simulator is not None and pending is not None:
            pending.append((e, tool_msg, declared[name], args))
        else:
            tool_msg["content"] = e.error("distractor_call", f"Error: {name} is not available for this request")


_MALFORMED = re.compile(r"<\|tool_calls?_section_begin\|>|" + re.escape(TOOL_CALL_BEGIN))


def agent_turn(e: Episode, text: str, simulator=None, pending: list | None = None) -> None:
    msg = chat.parse(text)
    if "tool_calls" not in msg and _MALFORMED.search(text):
        e.error("malformed_call_section", "a tool-call section with no call that parses")
        msg["content"] = text                  # what the model wrote, kept for the record
    e.turns += 1
    if msg.get("tool_calls"):
        execute_calls(e, msg, simulator, pending)
        e.phase = "agent"
        return
    if not msg.get("content"):
        e.error("empty_turn", "the agent wrote nothing")
        msg["content"] = ""
    e.messages.append(msg)
    if STOP in (msg.get("content") or ""):
        e.done, e.termination = True, "agent_stop"
    else:
        e.phase = "user"


def run_episodes(episodes: list[Episode], agent, params, user=None, simulator=None, max_turns: int = 12,
                 bar=None) -> dict[str, Any]:
    """Advance every episode to its end: per round one batched user call for the episodes waiting
    on their user, one batched agent call for those waiting on the agent, one batched simulator
    call for simulated tools. `agent` is an :class:`~k2core.infer.llm.LLM`; `params` its
    :class:`~k2core.infer.llm.TextParams` (``keep_special`` is forced on: tool calls are special
    tokens). `user` is a :class:`BlueprintUser` (default), a :class:`TeacherUser` (``respond_batch``)
    or any object with ``respond(task, messages, rng)``."""
    from dataclasses import replace

    user = user or BlueprintUser()
    params = replace(params, keep_special=True, stop=sorted(set(params.stop) | set(chat.STOP)))
    t0, rounds, agent_calls, done_before = time.monotonic(), 0, 0, sum(e.done for e in episodes)
    while True:
        live = [e for e in episodes if not e.done]
        if not live:
            break
        rounds += 1
        waiting = [e for e in live if e.phase == "user"]
        if waiting:
            if hasattr(user, "respond_batch"):        # a model playing the user: one batched call
                texts = user.respond_batch([(e.task, e.messages) for e in waiting])
            else:                                      # rendered users (blueprint, an issue's statement)
                texts = [user.respond(e.task, e.messages, e.rng) for e in waiting]
            for e, t in zip(waiting, texts):
                if t is None:
                    e.error("context_exceeded", "the conversation no longer fits the user simulator's context")
                    e.done, e.termination = True, "context_exceeded"
                    continue
                e.messages.append({"role": "user", "content": t})
                end = termination_of(t)
                if end:
                    e.done, e.termination = True, end
                else:
                    e.phase = "agent"
        acting = [e for e in live if not e.done and e.phase == "agent"]
        if acting:
            over = [e for e in acting if e.turns >= max_turns]
            for e in over:
                e.done, e.termination = True, "max_turns"
            acting = [e for e in acting if not e.done]
        if acting:
            prompts = [chat.render(e.messages, e.tools, add_generation_prompt=True) for e in acting]
            fit = [agent.fits(p, params.max_tokens) for p in prompts]
            for e, ok in zip(acting, fit):
                if not ok:
                    e.error("context_exceeded", f"the conversation no longer fits the agent's context "
                                                f"({getattr(agent, 'context_length', None)} tokens)")
                    e.done, e.termination = True, "context_exceeded"
            acting = [e for e, ok in zip(acting, fit) if ok]
            prompts = [p for p, ok in zip(prompts, fit) if ok]
        if acting:
            outs = agent.generate(prompts, params, progress=False)
            agent_calls += 1
            pending: list = []
            for e, out in zip(acting, outs):
                e.prompt_tokens += out.prompt_tokens or 0
                e.completion_tokens += out.completion_tokens or 0
                agent_turn(e, out.text, simulator, pending)
            if pending:
                simulator.answer(pending)
        if bar is not None:
            finished = sum(e.done for e in episodes)
            bar.update(finished - done_before)
            done_before = finished
    return {"episodes": len(episodes), "rounds": rounds, "agent_calls": agent_calls,
            "seconds": round(time.monotonic() - t0, 3)}
