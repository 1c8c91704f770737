"""User simulators. Both speak for a τ²-style task's ``user_scenario`` and end the conversation
with τ²-bench's stop markers (``###STOP###`` goal reached, ``###TRANSFER###`` handed to a human,
``###OUT-OF-SCOPE###`` the scenario lacks what the agent asks for).

- :class:`BlueprintUser` needs no model: it renders turns from the scenario with varied
  phrasings — the opening request, the facts it knows when asked, a confirmation before a change,
  a closing stop. Blueprint trajectories and the RL gym's tool-use tasks use it.
- :class:`TeacherUser` is the configured engine playing the persona (prompt
  ``prompts/user_simulator.txt``); all live conversations' user turns go out as one batch.
"""
from __future__ import annotations

import random
import re
import string
from pathlib import Path
from typing import Any

STOP, TRANSFER, OUT_OF_SCOPE = "###STOP###", "###TRANSFER###", "###OUT-OF-SCOPE###"
MARKERS = {STOP: "user_stop", TRANSFER: "user_transfer", OUT_OF_SCOPE: "user_out_of_scope"}
PROMPT = Path(__file__).parent / "prompts" / "user_simulator.txt"

OPEN_FULL = ["Hi, {reason_sentence} My details: {known}.", "Hello! {reason_sentence} Here is my info: {known}.",
             "{reason_sentence} ({known})", "Hey there. {reason_sentence} You'll need these: {known}."]
OPEN_BRIEF = ["Hi, {reason_sentence}", "Hello, can you help? {reason_sentence}", "{reason_sentence} Thanks in advance."]
GIVE = ["Sure: {known}.", "Of course. {known}.", "Here you go: {known}.", "{known}."]
CONFIRM = ["Yes, please go ahead.", "Yes, do it.", "Confirmed, go ahead.", "Yes please."]
CLOSE = ["Thanks, that's all I needed. " + STOP, "Great, thank you! " + STOP, "Perfect, thanks. " + STOP]
ASK_WORDS = re.compile(r"\b(could you|can you|please provide|please give|what is your|tell me|need your|may i have)\b", re.I)
CONFIRM_WORDS = re.compile(r"\b(shall i|should i|confirm|proceed|go ahead)\b", re.I)


def termination_of(text: str) -> str | None:
    for marker, reason in MARKERS.items():
        if marker in text:
            return reason
    return None


def reason_sentence(reason: str) -> str:
    """'you want to cancel order #W1' -> 'I want to cancel order #W1.'"""
    r = re.sub(r"^you\b", "I", reason.strip())
    r = re.sub(r"\byour\b", "my", r)
    r = re.sub(r"\byou are\b", "I am", r)
    r = re.sub(r"\byou\b", "I", r)
    r = r.replace("I both", "we both")
    return r[0].upper() + r[1:] + ("" if r.endswith((".", "?", "!")) else ".")


def facts(known: dict[str, str]) -> str:
    return ", ".join(f"{k.removeprefix('your ')} {v}" for k, v in known.items())


class BlueprintUser:
    """The scenario's user, rendered without a model (seeded phrasings)."""

    def opening(self, task: dict[str, Any], rng: random.Random, brief: bool) -> str:
        k2 = task["k2"]
        sentence = reason_sentence(task["user_scenario"]["instructions"]["reason_for_call"])
        template = rng.choice(OPEN_BRIEF if brief else OPEN_FULL)
        return template.format(reason_sentence=sentence, known=facts(k2["known_info"]))

    def give_info(self, task: dict[str, Any], rng: random.Random) -> str:
        return rng.choice(GIVE).format(known=facts(task["k2"]["known_info"]))

    def confirm(self, rng: random.Random) -> str:
        return rng.choice(CONFIRM)

    def close(self, rng: random.Random) -> str:
        return rng.choice(CLOSE)

    def respond(self, task: dict[str, Any], messages: list[dict[str, Any]], rng: random.Random) -> str:
        """The next user turn of a live conversation: the opening, the facts when asked, a yes when
        asked to confirm, else a stop."""
        if not any(m.get("role") == "user" for m in messages):
            return self.opening(task, rng, brief=rng.random() < 0.5)
        last = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "assistant"), "")
        said = " ".join(m.get("content") or "" for m in messages if m.get("role") == "user")
        unsaid = {k: v for k, v in task["k2"]["known_info"].items() if str(v) not in said}
        if CONFIRM_WORDS.search(last):
            return self.confirm(rng)
        if unsaid and (ASK_WORDS.search(last) or "?" in last):
            return rng.choice(GIVE).format(known=facts(unsaid))
        return self.close(rng)


class TeacherUser:
    """The teacher LLM playing the user; one generate call per round for all conversations."""

    def __init__(self, llm, params, prompt_file: str | None = None):
        self.llm, self.params = llm, params
        self.template = string.Template(Path(prompt_file or PROMPT).read_text())

    def prompt(self, task: dict[str, Any], messages: list[dict[str, Any]]) -> str:
        from k2core.text import chat

        ins = task["user_scenario"]["instructions"]
        system = self.template.safe_substitute(persona=task["user_scenario"].get("persona") or "a customer",
                                               reason=ins["reason_for_call"], known=ins["known_info"],
                                               unknown=ins.get("unknown_info") or "nothing else",
                                               instructions=ins.get("task_instructions") or "")
        # roles flipped: the simulator writes the user's side as its assistant turns
        flipped = [{"role": "system", "content": system}]
        for m in messages:
            if m["role"] == "assistant" and m.get("content"):
                flipped.append({"role": "user", "content": m["content"]})
            elif m["role"] == "user":
                flipped.append({"role": "assistant", "content": m["content"]})
        if len(flipped) == 1:
            flipped.append({"role": "user", "content": "Hello, how can I help you today?"})
        return chat.render(flipped, add_generation_prompt=True)

    def respond_batch(self, items: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> list[str | None]:
        """The next user turn of each conversation (None: it no longer fits the user model's context)."""
        prompts = [self.prompt(t, m) for t, m in items]
        fit = [self.llm.fits(p, self.params.max_tokens) for p in prompts]
        outs = iter(self.llm.generate([p for p, ok in zip(prompts, fit) if ok], self.params, progress=False)
                    if any(fit) else [])
        return [next(outs).text.strip() if ok else None for ok in fit]
