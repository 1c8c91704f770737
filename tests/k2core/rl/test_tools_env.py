"""The gym's tool-use environment: multi-turn tasks of synthesize's executable domains through the
one rollout loop, rewarded by τ²'s grading — a replay of a verified blueprint trajectory earns 1,
an agent that never acts earns 0 — and the rl stage trains on such episodes end to end."""
from __future__ import annotations

import pytest

from k2core.infer.llm import LLM, Completion
from k2core.text import chat
from k2core.text.special_tokens import IM_ASSISTANT
from tests.k2core.agentic.conftest import pretrained, run_stage  # noqa: F401 — the session fixture
from tests.k2core.rl.test_train import RL, sft_model  # noqa: F401 — module fixture: tools, synthesize, sft

pytestmark = pytest.mark.slow


class Gold(LLM):
    """An agent that knows the answer: its first turn makes the task's gold calls (τ²'s
    evaluation_criteria.actions, `drop` of them left out), its next one says what the user must be
    told (communicate_info)."""

    backend, model = "gold", "gold"

    def __init__(self, task, drop: int = 0):
        crit = task["evaluation_criteria"]
        self.actions = crit.get("actions") or []
        self.actions = self.actions[:len(self.actions) - drop]
        self.info = crit.get("communicate_info") or []

    def generate(self, prompts, params=None, progress=True):
        outs = []
        for p in prompts:
            if p.count(IM_ASSISTANT) == 1 and self.actions:          # the first agent turn
                calls = [{"id": chat.call_id(a["name"], i), "function": {"name": a["name"], "arguments": a["arguments"]}}
                         for i, a in enumerate(self.actions)]
                outs.append("Working on it." + chat.render_tool_calls(calls))
            else:
                outs.append("Done. " + "; ".join(map(str, self.info)))
        return [Completion(t, "stop", 1, 1) for t in outs]


class Idle(LLM):
    backend, model = "idle", "idle"

    def generate(self, prompts, params=None, progress=True):
        return [Completion("I cannot help with that.", "stop", 1, 1) for _ in prompts]


@pytest.fixture(scope="module")
def syn_env(pretrained, sft_model):  # noqa: F811
    from k2core.rl.gym import make
    from k2core.store import open_store

    syn = open_store(pretrained["store"]).artifact("synthesize", sft_model["pins"]["synthesize"])
    return syn, make("tools", synthesize=syn, max_turns=12)


def test_reward_is_the_tau2_verdict_of_the_episode(syn_env):
    from k2core.infer.llm import TextParams

    syn, env = syn_env
    problems = env.generate(seed=0, n=6)
    params = TextParams(max_tokens=64, temperature=0.0, seed=0)
    writes = 0
    for p in problems:
        [good] = env.rollout(Gold(p.answer), [p], 1, params)
        assert good["verdict"].reward == 1.0 and good["verdict"].reason == "correct", good["verdict"]
        [idle] = env.rollout(Idle(), [p], 1, params)
        assert idle["verdict"].reward == 0.0 and idle["verdict"].reason.startswith("wrong")
        if p.answer["evaluation_criteria"].get("actions"):         # the last gold call left out: the state differs
            [short] = env.rollout(Gold(p.answer, drop=1), [p], 1, params)
            writes += short["verdict"].reward == 0.0 and "db_mismatch" in short["verdict"].reason
    assert writes >= 1
    held = {q.answer["id"] for q in env.heldout(seed=0, n=8)}
    assert held and held.isdisjoint(q.answer["id"] for q in env.generate(0, 40))


def test_the_rl_stage_trains_on_tool_use_episodes(pretrained, sft_model):  # noqa: F811
    sets = [*RL, "rl.tasks=[tools,math]", "rl.max_tokens={tools: 16, math: 8}", "rl.tool_max_turns=2",
            "rl.steps=2", "rl.heldout_prompts=2", "rl.prompts_per_task=2"]
    out, store = run_stage(pretrained, "rl", sets, pins=sft_model["pins"])
    m = out.metrics
    assert out.gate["success"] and m["steps"] == 2 and m["nan_steps"] == 0 and m["heldout_in_train"] == 0
    for when in ("before", "after"):
        assert 0 <= m[f"{when}_heldout_pass_tools"] <= 1
    import pandas as pd

    df = pd.read_parquet(store.artifact("rl", out.version).path("telemetry.parquet"))
    assert {"reward_tools", "length_tools", "truncated_tools"} <= set(df)
    assert (df["length_tools"] > 0).all()          # trained on assistant-written tokens of the episodes
