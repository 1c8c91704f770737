"""The `sft` stage on a small real pipeline (pretrain -> tools -> synthesize -> sft): the held-out
loss falls, before / after metrics are computed on held-out turns and tasks, untrainable user
records are dropped with reasons, and the exported checkpoint carries the chat template and loads."""
from __future__ import annotations

import json

import pytest

from tests.k2core.agentic.conftest import pretrained, run_stage  # noqa: F401 — the session fixture
from tests.k2core.agentic.test_synthesize import SMALL as SYN

pytestmark = pytest.mark.slow
SFT = ["sft.steps=6", "sft.micro_batch=1", "sft.eval_every=3", "sft.eval_batches=2", "sft.checkpoint_every=3",
       "sft.warmup_steps=1", "sft.eval_turns=4", "sft.eval_tasks=2", "sft.eval_max_turns=2", "sft.eval_max_tokens=24",
       "sft.optim.lr=0.003", "sft.seq_len=8192"]


def test_sft_stage_trains_reports_and_exports(pretrained, tmp_path):  # noqa: F811
    tools, _ = run_stage(pretrained, "tools", ["tools.synthetic.count=0"])
    syn, _ = run_stage(pretrained, "synthesize", SYN, pins={"tools": tools.version})
    extra = tmp_path / "extra.jsonl"
    extra.write_text("\n".join(json.dumps(r) for r in [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}]},
        {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "functions.nope:0", "type": "function", "function": {"name": "nope", "arguments": "{}"}}]}]},
        {"messages": [{"role": "user", "content": "word " * 9000}, {"role": "assistant", "content": "ok"}]}]) + "\n")
    out, store = run_stage(pretrained, "sft", [*SFT, f"sft.data_files=[{extra}]"],
                           pins={"tools": tools.version, "synthesize": syn.version})
    m = out.metrics
    assert m["dropped_unknown_role"] == 1 and m["dropped_undeclared_tool"] == 1 and m["dropped_too_long"] == 1
    assert m["trained_conversations"] == m["conversations"] - 3 and m["heldout_in_train"] == 0
    assert m["final_val_loss"] < m["initial_val_loss"] and m["nan_steps"] == 0
    for when in ("before", "after"):
        assert m[f"{when}_turns"] == 4 and 0 <= m[f"{when}_exact_call"] <= 1 and m[f"{when}_tasks"] == 2
    art = store.artifact("sft", out.version)
    model_dir = art.path("model/config.json").parent
    from transformers import AutoTokenizer

    from k2core.infer.llm import NativeLLM
    from k2core.text import chat

    msgs = [{"role": "user", "content": "hi"}]
    assert AutoTokenizer.from_pretrained(str(model_dir)).apply_chat_template(
        msgs, add_generation_prompt=True, tokenize=False) == chat.render(msgs, add_generation_prompt=True)
    with NativeLLM(model_dir, device="cpu") as llm:
        assert llm.generate(["hello"])[0].completion_tokens >= 1
    assert "sft.png" in art.files("") and out.gate["success"]
