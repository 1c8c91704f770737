"""The `sft` stage on a small real pipeline (pretrain -> tools -> synthesize -> sft): the held-out
loss falls, before / after metrics are computed on held-out turns and tasks, untrainable user
records are dropped with reasons, and the exported checkpoint carries the chat template and loads;
two processes follow one process's curve, and a run killed mid-training resumes to the same weights."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.k2core.agentic.conftest import pretrained, run_stage  # noqa: F401 — the session fixture
from tests.k2core.agentic.test_synthesize import SMALL as SYN
from tests.k2core.infer.test_server_chat import WEATHER
from tests.k2core.train.test_pretrain import CRASH_AFTER_6

pytestmark = pytest.mark.slow
SFT = ["sft.steps=6", "sft.micro_batch=1", "sft.eval_every=3", "sft.eval_batches=2", "sft.checkpoint_every=3",
       "sft.warmup_steps=1", "sft.eval_turns=4", "sft.eval_tasks=2", "sft.eval_max_turns=2", "sft.eval_max_tokens=24",
       "sft.optim.lr=0.003", "sft.seq_len=8192"]


@pytest.fixture(scope="module")
def synthesized(pretrained):  # noqa: F811
    tools, _ = run_stage(pretrained, "tools", ["tools.synthetic.count=0"])
    syn, _ = run_stage(pretrained, "synthesize", SYN, pins={"tools": tools.version})
    return tools, syn


def test_sft_stage_trains_reports_and_exports(pretrained, synthesized, tmp_path):  # noqa: F811
    tools, syn = synthesized
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
    report = json.loads(Path(art.path("report.json")).read_text())
    for when in ("before", "after"):   # every scored turn is in the report: gold call(s), the answer, exact or not
        got = report["samples"][when]
        assert len(got) == 4 and all(s["gold"] and "(" in s["gold"][0] for s in got)
        assert sum(s["exact"] for s in got) == round(m[f"{when}_exact_call"] * 4)
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




def _conversation(i: int) -> tuple[list[dict], list[dict]]:
    city = ["Oslo", "Lima", "Pune", "Kyiv", "Rome", "Bern"][i % 6] + str(i)
    call = {"id": f"functions.get_weather:{i % 3}", "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": city})}}
    return ([{"role": "user", "content": f"weather in {city}?"},
             {"role": "assistant", "content": None, "tool_calls": [call]},
             {"role": "tool", "tool_call_id": call["id"], "content": f"{i % 30} C"},
             {"role": "assistant", "content": f"It is {i % 30} C in {city}."}], [WEATHER])


def _train(pretrained, tmp, nproc: int, name: str):  # noqa: F811
    """The sft worker alone (what the stage launches) on short tool-call conversations."""
    from tokenizers import Tokenizer

    from k2core.config import load_config
    from k2core.models import model_dir
    from k2core.progress import Progress
    from k2core.store import open_store
    from k2core.text.special_tokens import PAD
    from k2core.train import sft
    from k2core.train.loop import launch
    from k2core.train.sft_data import encode, pack
    from tests.k2core.train.stages import SMALL

    base = model_dir(open_store(pretrained["store"]).artifact("pretrain", pretrained["pins"]["pretrain"]))
    cfg = load_config(overrides=[*SMALL, "sft.steps=8", "sft.micro_batch=2", "sft.checkpoint_every=4",
                                 "sft.eval_every=4", "sft.eval_batches=1", "sft.warmup_steps=1", "sft.seq_len=1024",
                                 "sft.optim.lr=0.003", "sft.seed=3", f"sft.nproc={nproc}"]).sft
    tok = Tokenizer.from_file(str(base / "tokenizer.json"))
    kept, dropped = encode(tok, [_conversation(i) for i in range(40)], cfg.seq_len)
    assert kept and not dropped, dropped[:1]
    wd = tmp / name
    wd.mkdir(exist_ok=True)
    packed = pack(kept, cfg.seq_len, tok.token_to_id(PAD))
    job = sft.make_job(cfg, base, wd, packed, packed, tmp / f"resume-{name}")
    logs: list[str] = []
    launch(sft.ENTRY, job, wd, nproc, cfg.steps, "sft", logs.append, Progress)
    return wd, logs


def _weights(wd) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(wd / "model" / "model.safetensors")


def test_two_processes_follow_one_and_a_killed_run_resumes_bit_identical(pretrained, tmp_path,  # noqa: F811
                                                                         monkeypatch):
    """sft under torchrun (gloo): the rows of each micro-batch split over the ranks, the loss the
    per-token mean of the whole batch — the curve one process draws. Killed like kill -9 after step 6
    (checkpoint at step 4), the rerun resumes and ends with the uninterrupted run's weights."""
    from k2core.train.loop import TrainingFailed

    one, _ = _train(pretrained, tmp_path, 1, "one")
    two, _ = _train(pretrained, tmp_path, 2, "two")
    a, b = (pd.read_parquet(wd / "telemetry.parquet") for wd in (one, two))
    assert list(b.step) == list(range(8)) == list(a.step)
    assert abs(a.loss[0] - b.loss[0]) < 1e-5                       # same weights, same rows, same token mean
    np.testing.assert_allclose(b.loss, a.loss, rtol=1e-3)
    assert b.loss.iloc[-1] < b.loss.iloc[0]
    monkeypatch.setenv("K2_TRAIN_CALLBACKS", CRASH_AFTER_6)
    with pytest.raises(TrainingFailed, match="exited with status"):
        _train(pretrained, tmp_path, 2, "killed")
    monkeypatch.delenv("K2_TRAIN_CALLBACKS")
    resumed, logs = _train(pretrained, tmp_path, 2, "killed")
    assert any("resuming from" in m and "step-0000004.pt" in m for m in logs), logs
    x, y = _weights(two), _weights(resumed)
    assert x.keys() == y.keys()
    for k in x:
        assert torch.equal(x[k], y[k]), k
