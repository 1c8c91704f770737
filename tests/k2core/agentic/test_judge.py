"""Judges, user simulators, the tool simulator and coding tasks: verdicts with reasons; the
LLM judge's answer parsed (or called unparseable) and its agreement counted; the scenario user's
turns; the simulator's answers validated against the return schema; reference solutions pass their
computed tests in the sandbox and a wrong one fails. LLMs here are scripted test doubles."""
from __future__ import annotations

import json
import random

from k2core.agentic import coding
from k2core.agentic.judge import LLMJudge, TestsJudge, agreement, parse_judgement
from k2core.agentic.rollout import Episode
from k2core.agentic.simulator import ToolSimulator
from k2core.agentic.user import BlueprintUser, TeacherUser, reason_sentence, termination_of
from k2core.infer.llm import LLM, Completion, TextParams


class Fixed(LLM):
    backend, model = "fixed", "fixed"

    def __init__(self, texts, context=None):
        self.texts, self.prompts, self.context = list(texts), [], context

    def fits(self, prompt, max_tokens):
        return self.context is None or len(prompt) <= self.context

    def generate(self, prompts, params=None, progress=True):
        self.prompts += prompts
        return [Completion(self.texts.pop(0), "stop", 1, 1) for _ in prompts]


TASK = {"id": "t", "description": {"purpose": "cancel order #W1"}, "user_scenario": {
    "persona": "terse", "instructions": {"domain": "retail", "reason_for_call": "you want to cancel your order #W1",
                                         "known_info": "your zip: 12345", "task_instructions": "ask"}},
        "k2": {"known_info": {"zip": "12345", "order id": "#W1"},
               "rubric": {"success_criteria": "order cancelled", "checkpoints": ["authenticated"]}}}


def test_parse_judgement_and_agreement():
    assert parse_judgement("Yes. The order was cancelled.") == (True, "The order was cancelled.")
    assert parse_judgement("  no, the refund was never stated\nmore") == (False, "the refund was never stated")
    ok, why = parse_judgement("maybe")
    assert ok is None and why.startswith("unparseable")
    judge = LLMJudge(Fixed(["yes it worked", "No.", "banana", "yes"]), TextParams(max_tokens=8))
    vs = judge.judge_batch([(TASK, [{"role": "user", "content": "hi"}])] * 4)
    assert [v.success for v in vs] == [True, False, False, True] and vs[2].judge == "llm_unparseable"
    assert "order cancelled" in judge.llm.prompts[0] and "user: hi" in judge.llm.prompts[0]
    a = agreement(list(zip([True, True, False, False], vs)))
    # parsed: (T,yes) agree, (T,no) false_no, (F,yes) false_yes; unparseable counts against
    assert a == {"judged": 4, "parsed": 3, "agreement": 0.25, "agreement_when_parsed": 0.3333, "true_yes": 1,
                 "true_no": 0, "false_yes": 1, "false_no": 1}
    long = LLMJudge(Fixed([], context=10), TextParams(max_tokens=8)).judge_batch([(TASK, [])])
    assert long[0].judge == "llm_unfit" and long[0].reasons[0].startswith("prompt_too_long")


def test_scenario_user_turns():
    u, rng = BlueprintUser(), random.Random(0)
    opening = u.respond(TASK, [], rng)
    assert "I want to cancel my order #W1." in opening
    asked = [{"role": "user", "content": "I want to cancel my order #W1."},
             {"role": "assistant", "content": "Could you give me your zip code?"}]
    assert "12345" in u.respond(TASK, asked, rng)                    # facts when asked, the unsaid ones
    confirm = asked + [{"role": "assistant", "content": "I will cancel #W1. Shall I proceed?"}]
    assert u.respond(TASK, confirm, rng) in ("Yes, please go ahead.", "Yes, do it.", "Confirmed, go ahead.", "Yes please.")
    done = asked + [{"role": "assistant", "content": "Done, refunded."}]
    assert termination_of(u.respond(TASK, done, rng)) == "user_stop"
    assert reason_sentence("you want to move your meeting") == "I want to move my meeting."
    assert termination_of("ok ###TRANSFER###") == "user_transfer" and termination_of("fine") is None


def test_teacher_user_flips_roles_and_reports_unfit_prompts():
    llm = Fixed(["Hi, I need to cancel #W1."])
    out = TeacherUser(llm, TextParams(max_tokens=8)).respond_batch([(TASK, [])])
    assert out == ["Hi, I need to cancel #W1."]
    p = llm.prompts[0]
    assert "terse" in p and "Hello, how can I help you today?" in p and p.endswith("<|im_assistant|>assistant<|im_middle|>")
    assert TeacherUser(Fixed([], context=10), TextParams(max_tokens=8)).respond_batch([(TASK, [])]) == [None]


def test_tool_simulator_validates_against_the_return_schema():
    fn = {"name": "get_stock", "description": "price", "parameters": {"type": "object"},
          "returns": {"type": "object", "properties": {"price": {"type": "number"}}, "required": ["price"]}}
    e = Episode(TASK, None, [], [])
    msgs = [{"role": "tool", "content": ""} for _ in range(3)]
    llm = Fixed(['{"result": {"price": 12.5}, "state": {"calls": 1}} trailing', '{"result": {"price": "high"}}', "nope"])
    sim = ToolSimulator(llm, TextParams(max_tokens=8), failure_rate=0.0, edge_rate=0.0)
    sim.answer([(e, m, fn, {"ticker": "X"}) for m in msgs])
    assert json.loads(msgs[0]["content"]) == {"price": 12.5} and e.sim_state == {"calls": 1}
    assert msgs[1]["content"].startswith("Error: get_stock failed") and msgs[2]["content"].startswith("Error")
    assert [x["kind"] for x in e.errors] == ["simulator_invalid", "simulator_invalid"] and sim.valid == 1


def test_coding_tasks_reference_passes_and_wrong_code_fails():
    for i in range(len(coding.PROBLEMS)):
        t = coding.make_task(i, seed=3)
        assert TestsJudge()(t, t["k2"]["solution"]).success, t["k2"]["function"]
    t = coding.make_task(0, seed=3)
    wrong = "def sum_even_squares(xs):\n    return sum(xs)\n"
    v = TestsJudge()(t, wrong)
    assert not v.success and v.reasons[0].startswith("tests_failed") and 0 <= v.reward < 1
    assert TestsJudge()(t, None).reasons == ["no_code: the agent gave no program"]
    conv = coding.build(t, seed=1)
    out = json.loads(conv["sandbox_output"])
    assert out["exit_code"] == 0 and out["stdout"].split() == ["True", "True"]
    assert coding.final_code(conv["messages"]) == t["k2"]["solution"]
