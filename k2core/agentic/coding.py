"""Coding tasks: small programming problems with unit tests, generated with computed answers (a
reference implementation run on seeded inputs), solved by an agent that has a ``run_python``
tool executed in k2's sandbox. Success = the tests pass on the agent's final program.

A task is τ²-shaped like the domain tasks (``user_scenario``, ``evaluation_criteria``), with the
function name, the reference solution and the tests under ``"k2"``; its blueprint trajectory calls
``run_python`` with the reference solution and a self-check, reads the sandbox's real output, and
answers with the program. Constructed data, labelled so.
"""
from __future__ import annotations

import json
import random
from typing import Any, Callable

from k2core.text import chat

_REFS: dict[str, str] = {
    "sum_even_squares": "def sum_even_squares(xs):\n    return sum(x * x for x in xs if x % 2 == 0)\n",
    "count_vowels": "def count_vowels(s):\n    return sum(ch in 'aeiouAEIOU' for ch in s)\n",
    "second_largest": "def second_largest(xs):\n    distinct = sorted(set(xs))\n    return distinct[-2] if len(distinct) > 1 else None\n",
    "run_length": ("def run_length(s):\n    out = []\n    for ch in s:\n        if out and out[-1][0] == ch:\n"
                   "            out[-1][1] += 1\n        else:\n            out.append([ch, 1])\n"
                   "    return ''.join(f'{c}{n}' for c, n in out)\n"),
    "is_palindrome": ("def is_palindrome(s):\n    t = [c.lower() for c in s if c.isalnum()]\n    return t == t[::-1]\n"),
    "fizzbuzz_count": ("def fizzbuzz_count(n):\n    return sum(1 for i in range(1, n + 1) if i % 3 == 0 or i % 5 == 0)\n"),
    "digits_sum": "def digits_sum(n):\n    return sum(int(d) for d in str(abs(n)))\n",
    "merge_sorted": ("def merge_sorted(a, b):\n    i = j = 0\n    out = []\n    while i < len(a) and j < len(b):\n"
                     "        if a[i] <= b[j]:\n            out.append(a[i]); i += 1\n        else:\n"
                     "            out.append(b[j]); j += 1\n    return out + a[i:] + b[j:]\n"),
    "word_lengths": "def word_lengths(s):\n    return {w: len(w) for w in s.split()}\n",
    "max_subarray": ("def max_subarray(xs):\n    best = cur = xs[0]\n    for x in xs[1:]:\n        cur = max(x, cur + x)\n"
                     "        best = max(best, cur)\n    return best\n"),
}
_WORDS = ["apple", "level", "rotor", "banana", "kayak", "stats", "python", "noon", "civic", "tree"]


def _ints(rng, lo=-20, hi=20, n=(1, 9)):
    return [rng.randint(lo, hi) for _ in range(rng.randint(*n))]


# (function name, signature, statement, input generator); the reference is _REFS[name]
PROBLEMS: list[tuple[str, str, str, Callable[[random.Random], list]]] = [
    ("sum_even_squares", "sum_even_squares(xs: list[int]) -> int",
     "returns the sum of the squares of the even numbers in xs", lambda r: [_ints(r)]),
    ("count_vowels", "count_vowels(s: str) -> int", "counts the vowels (a, e, i, o, u, either case) in s",
     lambda r: [" ".join(r.sample(_WORDS, 3)).title() if r.random() < 0.5 else r.choice(_WORDS)]),
    ("second_largest", "second_largest(xs: list[int]) -> int | None",
     "returns the second largest distinct value in xs, or None if there is none", lambda r: [_ints(r, 0, 9)]),
    ("run_length", "run_length(s: str) -> str",
     "run-length encodes s: each run of a character becomes the character followed by the run's length "
     "(\"aab\" -> \"a2b1\")", lambda r: ["".join(r.choice("ab") * r.randint(1, 3) for _ in range(r.randint(1, 4)))]),
    ("is_palindrome", "is_palindrome(s: str) -> bool",
     "tells whether s reads the same backwards, ignoring case and non-alphanumeric characters",
     lambda r: [r.choice(_WORDS) + (" " if r.random() < 0.3 else "")]),
    ("fizzbuzz_count", "fizzbuzz_count(n: int) -> int", "counts the numbers from 1 to n divisible by 3 or by 5",
     lambda r: [r.randint(0, 200)]),
    ("digits_sum", "digits_sum(n: int) -> int", "returns the sum of the decimal digits of n (the sign ignored)",
     lambda r: [r.randint(-99999, 99999)]),
    ("merge_sorted", "merge_sorted(a: list[int], b: list[int]) -> list[int]",
     "merges two sorted lists into one sorted list", lambda r: [sorted(_ints(r, 0, 30, (0, 6))), sorted(_ints(r, 0, 30, (0, 6)))]),
    ("word_lengths", "word_lengths(s: str) -> dict[str, int]", "maps each word of s (split on whitespace) to its length",
     lambda r: [" ".join(r.sample(_WORDS, r.randint(1, 4)))]),
    ("max_subarray", "max_subarray(xs: list[int]) -> int",
     "returns the largest sum of a non-empty contiguous run of xs", lambda r: [_ints(r, -10, 10, (1, 9))]),
]


def reference(name: str) -> Callable[..., Any]:
    ns: dict[str, Any] = {}
    exec(_REFS[name], ns)            # our own reference source (trusted), run to compute the answers
    return ns[name]


def computed_tests(name: str, rng: random.Random, n: int) -> list[tuple[list, Any]]:
    """`n` (arguments, expected) pairs for problem `name`: seeded inputs, the reference's outputs
    (JSON-normalised, as the sandbox harness reports them)."""
    gen = next(g for p, _, _, g in PROBLEMS if p == name)
    ref = reference(name)
    out = []
    for _ in range(n):
        args = gen(rng)
        out.append((args, json.loads(json.dumps(ref(*args)))))
    return out


def make_task(index: int, seed: int, n_tests: int = 6) -> dict[str, Any]:
    rng = random.Random(seed * 1_000_003 + index)
    name, signature, statement, _ = PROBLEMS[index % len(PROBLEMS)]
    tests = [{"args": args, "expected": expected} for args, expected in computed_tests(name, rng, n_tests)]
    tid = f"coding-{index}"
    request = f"Write a Python function `{signature}` that {statement}. Test it before you answer."
    return {"id": tid, "description": {"purpose": request, "relevant_policies": None,
                                       "notes": "constructed by k2: reference solution + computed tests"},
            "user_scenario": {"persona": "a developer", "instructions": {
                "domain": "coding", "reason_for_call": request, "known_info": "", "unknown_info": None,
                "task_instructions": "Ask for the function; accept a tested program."}},
            "initial_state": None,
            "evaluation_criteria": {"actions": [], "env_assertions": [], "communicate_info": [], "nl_assertions": None,
                                    "reward_basis": ["TESTS"]},
            "k2": {"kind": name, "difficulty": 1, "function": name, "solution": _REFS[name], "tests": tests,
                   "known_info": {}, "rubric": {"success_criteria": "the final program passes the unit tests",
                                                "expected_tools": ["run_python"],
                                                "checkpoints": ["program written", "program run", "tests pass"]}}}


SYSTEM = ("You are a coding assistant. Write Python code, run it with the run_python tool to check it, and end "
          "with the final program in a ```python code block.")


def final_code(messages: list[dict[str, Any]]) -> str | None:
    """The program of the last assistant message with a python code block, else the last run_python code."""
    import re

    for m in reversed(messages):
        if m.get("role") == "assistant" and m.get("content"):
            blocks = re.findall(r"```(?:python)?\n(.*?)```", m["content"], re.S)
            if blocks:
                return blocks[-1]
    for m in reversed(messages):
        for c in reversed(m.get("tool_calls") or []):
            if c["function"]["name"] == "run_python":
                args, _ = chat.arguments_of(c)
                if args and isinstance(args.get("code"), str):
                    return args["code"]
    return None


def build(task: dict[str, Any], seed: int) -> dict[str, Any]:
    """The blueprint conversation: the request, a run_python call with the reference solution and a
    self-check on two tests (really run in the sandbox), the program as the answer."""
    from k2core.agentic.rollout import SandboxEnv
    from k2core.agentic.user import CLOSE

    rng = random.Random(seed)
    k2 = task["k2"]
    checks = "".join(f"print({k2['function']}(*{json.dumps(t['args'])}) == {t['expected']!r})\n"
                     for t in k2["tests"][:2])
    code = k2["solution"] + "\n" + checks
    env = SandboxEnv()
    cid = chat.call_id("run_python", 0)
    out = env.call("run_python", {"code": code})
    return {"messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": task["description"]["purpose"]},
        {"role": "assistant", "content": rng.choice(["Here is a first version; let me test it.", "", "Let me write and run it."])
         or None, "tool_calls": [{"id": cid, "type": "function",
                                  "function": {"name": "run_python", "arguments": json.dumps({"code": code})}}]},
        {"role": "tool", "name": "run_python", "tool_call_id": cid, "content": out},
        {"role": "assistant", "content": f"The checks pass. Here is the function:\n\n```python\n{k2['solution']}```"},
        {"role": "user", "content": rng.choice(CLOSE)}], "tools": [SandboxEnv.TOOL], "sandbox_output": out}
