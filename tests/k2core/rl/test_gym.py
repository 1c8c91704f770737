"""The verifiable-rewards gym: every environment's verifier on right, wrong and malformed answers,
failures as verdicts with reasons (a verifier over time, code that hangs), seeded generation, the
registry's config errors and the difficulty filter."""
from __future__ import annotations

import threading
import time

import pytest

from k2core.errors import ConfigError
from k2core.rl import gym
from k2core.rl.gym import Problem, difficulty_filter, make


def test_unknown_environment_names_the_available_ones():
    with pytest.raises(ConfigError, match="no environment 'chess'; available: coding, instructions, logic, math"):
        make("chess")


@pytest.mark.parametrize("level", [1, 2, 3])
def test_math_right_wrong_malformed(level):
    env = make("math")
    problems = env.generate(seed=3, n=4, difficulty=level)
    assert problems == env.generate(seed=3, n=4, difficulty=level)          # seeded
    assert len({p.prompt for p in problems}) > 1 and all("<answer>" in p.prompt for p in problems)
    right = [f"Thinking... <answer>{p.answer}</answer>" for p in problems]
    boxed = [f"so \\boxed{{{p.answer}}}" for p in problems]
    wrong = [f"<answer>{p.answer}+1</answer>" for p in problems]
    assert [v.reward for v in env.score(problems, right)] == [1.0] * 4
    assert [v.reason for v in env.score(problems, boxed)] == ["correct"] * 4
    assert [(v.reward, v.reason) for v in env.score(problems, wrong)] == [(0.0, "wrong")] * 4
    bad = env.score(problems[:2], ["I do not know", ""])
    assert [v.reward for v in bad] == [0.0, 0.0] and all(v.reason.startswith("unparsable") for v in bad)


def test_math_equivalent_forms_and_off_the_main_thread():
    env = make("math")
    p = Problem("math", "m", "q", "\\frac{3}{4}")
    out: list = []
    # Prefect runs tasks in threads: math-verify's SIGALRM must not be called there (a process pool is)
    t = threading.Thread(target=lambda: out.extend(env.score([p, p, p], ["<answer>0.75</answer>", "<answer>3/4</answer>",
                                                                        "<answer>0.7</answer>"])))
    t.start()
    t.join()
    assert [v.reason for v in out] == ["correct", "correct", "wrong"]


def slow_check(gold: str, pred: str) -> bool:      # runs in the pool's worker process
    time.sleep(3)
    return True


def failing_check(gold: str, pred: str) -> bool:
    raise RecursionError("deep")


def test_a_verifier_over_time_or_raising_is_a_verdict():
    [(ok, why)] = gym.verify_in_pool([("1", "$1$")], timeout_s=0.5, check=failing_check)
    assert ok is None and why == "verifier_error: RecursionError: deep"
    t0 = time.monotonic()
    [(ok, why)] = gym.verify_in_pool([("1", "$1$")], timeout_s=0.5, check=slow_check)
    assert ok is None and why == "verifier_timeout: over 0.5 s" and time.monotonic() - t0 < 2.5


def test_logic_uses_reasoning_gym_scores():
    env = make("logic", tasks=["chain_sum", "spell_backward", "gcd"])
    problems = env.generate(seed=1, n=6)
    assert [p.meta["task"] for p in problems] == ["chain_sum"] * 2 + ["spell_backward"] * 2 + ["gcd"] * 2
    assert [v.reward for v in env.score(problems, [f"<answer>{p.answer}</answer>" for p in problems])] == [1.0] * 6
    assert all(v.reward < 1.0 for v in env.score(problems, ["<answer>zzqx</answer>"] * 6))
    assert env.score(problems[:1], [str(problems[0].answer)])[0].reason.startswith("unparsable")
    with pytest.raises(ConfigError, match="coin_flip.*refused"):
        make("logic", tasks=["coin_flip"])
    with pytest.raises(ConfigError, match="no task 'chess'"):
        make("logic", tasks=["chess"])


def test_instruction_constraints_are_checked_by_code():
    env = make("instructions")
    p = Problem("instructions", "i", "q", [{"kind": "keyword", "args": {"w": "river"}},
                                            {"kind": "lowercase", "args": {}},
                                            {"kind": "max_words", "args": {"n": 6}}])
    v = env.score([p] * 4, ["the river runs slow", "The river runs slow", "the lake is wide and deep and cold", " "])
    assert [x.reward for x in v] == [1.0, pytest.approx(2 / 3), pytest.approx(1 / 3), 0.0]   # 3: only lowercase holds
    assert v[1].reason == "failed: lowercase" and v[3].reason.startswith("unparsable")
    js = Problem("instructions", "j", "q", [{"kind": "json", "args": {"key": "title"}},
                                            {"kind": "bullets", "args": {"n": 2}}])
    assert [x.reward for x in env.score([js] * 3, ['{"title": "Sea"}', "- a\n- b", '{"title": 3}'])] == [0.5, 0.5, 0.0]
    gen = env.generate(seed=0, n=5, difficulty=3)
    assert all(len(g.answer) == 4 and "Rules:" in g.prompt for g in gen)
    kinds = [{c["kind"] for c in g.answer} for g in gen]
    assert not any({"lowercase", "uppercase"} <= k or {"json", "bullets"} <= k for k in kinds)


@pytest.mark.slow
def test_coding_runs_the_tests_in_the_sandbox():
    from k2core.agentic import coding

    env = make("coding", tests=4, timeout_s=3.0)
    problems = env.generate(seed=0, n=3)
    right = [f"Here:\n```python\n{coding._REFS[p.meta['function']]}```" for p in problems]
    assert [v.reward for v in env.score(problems, right)] == [1.0] * 3
    fn = problems[0].meta["function"]
    v = env.score([problems[0]] * 3, [f"```python\ndef {fn}(*a):\n    return 'nope'\n```", "no code here",
                                      f"```python\ndef {fn}(*a):\n    while True:\n        pass\n```"])
    assert (v[0].reward, v[0].reason) == (0.0, "wrong")
    assert v[1].reason.startswith("unparsable") and v[1].reward == 0.0
    assert v[2].reward == 0.0 and v[2].reason == "sandbox_timeout"


def test_difficulty_filter_keeps_sometimes_solved_prompts():
    assert difficulty_filter([[1, 1, 1], [0, 0, 0], [1, 0, 0], [0.5, 0.5, 1.0], []]) == [False, False, True, True, False]
    assert difficulty_filter([[0.5, 0.5]], solved=0.5) == [False]
