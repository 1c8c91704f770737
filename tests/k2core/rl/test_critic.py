"""The self-critique reward: rubric files, verdict parsing, both-order pairwise win rates with
scripted critics, agreement with a verifier on hand-labelled pairs, the floor, the critique env."""
import re
import shutil

import pytest

from k2core.rl import critic as C


def _responses(prompt: str) -> tuple[str, str]:
    m = re.search(r"## Response A\n(.*)\n\n## Response B\n(.*)\n\nWhich", prompt, re.S)
    return m.group(1), m.group(2)


def longer_wins(prompts):        # a consistent critic: prefers the longer response, whatever its position
    return [f"A is {'longer' if len(a) > len(b) else 'shorter'}.\nPreferred: {'A' if len(a) > len(b) else 'B'}"
            for a, b in map(_responses, prompts)]


def always_a(prompts):           # a purely position-biased critic
    return ["Preferred: A"] * len(prompts)


def test_shipped_rubrics_load_and_version_follows_content(tmp_path):
    r = C.load_rubrics()
    assert {"writing", "advice", "instructions"} <= set(r.tasks) and len(r.version) == 16
    assert r.text("advice").startswith(r.core) and r.tasks["advice"] in r.text("advice")
    assert r.text("no-such-task") == r.text()
    d = tmp_path / "rubrics"
    shutil.copytree(C.RUBRIC_DIR, d)
    assert C.load_rubrics(d).version == r.version
    (d / "tasks" / "advice.md").write_text("# Advice\n- Be brief.\n")
    assert C.load_rubrics(d).version != r.version


@pytest.mark.parametrize("name, content, message", [
    ("core.md", None, r"core\.md is missing"), ("prescriptive.md", "  \n", r"prescriptive\.md is empty"),
    ("tasks/advice.md", "", r"advice\.md is empty")])
def test_bad_rubric_files_are_named(tmp_path, name, content, message):
    d = tmp_path / "rubrics"
    shutil.copytree(C.RUBRIC_DIR, d)
    if content is None:
        (d / name).unlink()
    else:
        (d / name).write_text(content)
    with pytest.raises(C.RubricError, match=message):
        C.load_rubrics(d)


@pytest.mark.parametrize("text, verdict", [
    ("B rambles.\nPreferred: A", "A"), ("**Preferred:** B", "B"), ("preferred: response a", "A"),
    ("I prefer A.", None), ("Preferred: A\nPreferred: B", None), ("", None)])
def test_parse_verdict(text, verdict):
    v, why = C.parse_verdict(text)
    assert v == verdict and (why == "ok") == (verdict is not None)


def test_win_rates_from_a_consistent_critic():
    res = C.pairwise_rewards("Say hi.", ["a", "bb", "ccc"], longer_wins, "rubric")
    assert res.win_rates == [0.0, 0.5, 1.0]
    assert res.judged == 6 and res.parsed == 6 and res.position_bias == 0.0


def test_both_orders_cancel_a_position_biased_critic():
    res = C.pairwise_rewards("Say hi.", ["a", "bb", "ccc"], always_a, "rubric")
    assert res.win_rates == [0.5, 0.5, 0.5] and res.position_bias == 1.0


def test_unparsable_answers_and_identical_responses_are_counted_and_win_nothing():
    def half_broken(prompts):
        return ["no verdict here" if i % 2 else "Preferred: A" for i in range(len(prompts))]

    res = C.pairwise_rewards("q", ["x", "x ", "y"], half_broken, "rubric")
    assert res.identical_pairs == 1 and res.reasons["identical responses: not judged"] == 1
    assert res.judged == 4 and res.parsed == 2 and res.reasons["unparsable: no 'Preferred: A|B' line"] == 2
    # each pair: (first, y) -> first wins, (y, first) unparsable: y never wins
    assert res.win_rates == [1.0, 1.0, 0.0] and res.position_bias is None
    with pytest.raises(ValueError, match="2 answers for 6 prompts"):
        C.pairwise_rewards("q", ["x", "y", "z"], lambda p: ["Preferred: A"] * 2, "rubric")


def test_agreement_against_hand_labelled_pairs():
    pairs = [(1.0, 0.0, "A", "B"),    # prefers x, verifier prefers x: agree
             (0.0, 1.0, "B", "A"),    # prefers y, verifier y: agree
             (1.0, 0.0, "B", "A"),    # prefers y, verifier x: disagree
             (1.0, 0.0, "A", "A"),    # position-biased: undecided -> disagreement
             (0.5, 0.5, "A", "B"),    # verifier tie: skipped
             (0.0, 1.0, None, "A")]   # unparsable: undecided
    a = C.agreement(pairs)
    assert a == {"pairs": 5, "agree": 2, "undecided": 2, "ties_skipped": 1, "agreement": 0.4}
    assert C.agreement([(1.0, 1.0, "A", "B")])["agreement"] is None


def test_the_floor_switches_open_prompt_reward_off():
    assert C.open_reward_gate(0.59, 0.6)[0] is False and "below the floor 0.60" in C.open_reward_gate(0.59)[1]
    assert C.open_reward_gate(0.6, 0.6)[0] is True
    assert C.open_reward_gate(None)[0] is False


def test_critique_env_rewards_agreement_with_the_verifier():
    env = C.CritiqueEnv(rubric="rubric")
    assert env.add("2+2?", ["<answer>4</answer>", "<answer>5</answer>", "<answer>5</answer>"], [1.0, 0.0, 0.0]) == 2
    assert env.skipped["verifier tie"] == 1
    env.add("3+3?", ["<answer>6</answer>", "<answer>7</answer>"], [1.0, 0.0], heldout=True)
    probs = env.generate(seed=0, n=10)
    assert len(probs) == 2 and len(env.heldout(seed=0, n=10)) == 1
    right = []
    for p in probs:
        a, b = _responses(p.prompt)
        right.append("Preferred: A" if "4" in a else "Preferred: B")
    assert [v.reward for v in env.score(probs, right)] == [1.0, 1.0]
    wrong = ["Preferred: B" if r.endswith("A") else "Preferred: A" for r in right]
    assert [v.reward for v in env.score(probs, wrong)] == [0.0, 0.0]
    assert env.score(probs[:1], ["hmm"])[0].reason.startswith("unparsable")
    sides = {p.answer for s in range(20) for p in env.generate(seed=s, n=2)}
    assert sides == {"A", "B"}   # the verifier's pick is not always in the same position
