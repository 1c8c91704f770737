"""K1.5's objective through the shared loop: split over micro-batches of unequal sizes it gives the
loss and gradient of k15_loss on the whole batch, and MuonClip steps on it raise the log-probability
of the better response relative to the worse (π_old reset each iteration, as K1.5 does)."""
from __future__ import annotations

import pytest
import torch

from k2core.rl.loss import advantages, k15_loss, response_logprobs
from k2core.rl.train import K15Objective
from tests.k2core.agentic.conftest import pretrained, run_stage  # noqa: F401 — the session fixture


def _model():
    from k2core.config import PretrainConfig
    from k2core.train.loop import build_model

    return build_model(PretrainConfig(preset="tiny", model={"vocab_size": 64}, seed=2), None, torch.device("cpu"))


def _responses(g):
    """2 prompts x K = 3 responses: prompt tokens then 4 response tokens, right-padded to 12."""
    ids = torch.randint(1, 64, (6, 12), generator=g)
    mask = torch.zeros(6, 12, dtype=torch.long)
    for i, (p, n) in enumerate([(5, 4), (5, 3), (5, 4), (6, 4), (6, 2), (6, 4)]):
        mask[i, p:p + n] = 1
    return ids, mask


def test_k15_objective_split_over_micro_batches_equals_the_whole_batch():
    from k2core.train.loop import autocast, forward_backward, token_weights

    g = torch.Generator().manual_seed(0)
    ids, mask = _responses(g)
    rewards = torch.tensor([[1.0, 0.0, 0.5], [0.0, 0.0, 1.0]])
    a, b = _model(), _model()
    with torch.no_grad():
        old = response_logprobs(a(ids).logits, ids, mask) - 0.05          # pi_old a little off the current policy
    whole = k15_loss(response_logprobs(b(ids).logits, ids, mask).view(2, 3), old.view(2, 3), rewards, tau=0.3)
    whole.backward()
    adv = advantages(rewards).flatten()
    obj = K15Objective(tau=0.3)
    micro = [{"input_ids": ids[s], "response_mask": mask[s], "logp_old": old[s], "advantage": adv[s]}
             for s in (slice(0, 5), slice(5, 6))]                          # 5 + 1 responses
    w = token_weights(micro, 1, torch.device("cpu"), obj)
    assert [float(x) for x in w] == pytest.approx([10 / 6, 2 / 6])
    got = sum(forward_backward(a, m, autocast(torch.device("cpu")), 2, wi, obj)[0] for m, wi in zip(micro, w)) / 2
    assert float(got) == pytest.approx(float(whole.detach()), rel=1e-5)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-7, msg=name)


def test_k15_steps_prefer_the_rewarded_response():
    from k2core.optim.config import OptimConfig
    from k2core.train.loop import autocast, train_step

    g = torch.Generator().manual_seed(1)
    ids, mask = _responses(g)
    rewards = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    model = _model()
    opt = OptimConfig(lr=0.02).build(model)
    obj = K15Objective(tau=0.5)

    def gap():
        with torch.no_grad():
            lp = response_logprobs(model(ids).logits, ids, mask).view(2, 3)
        return float((lp[0, 0] - lp[0, 1:].mean()) + (lp[1, 1] - lp[1, [0, 2]].mean())), lp.flatten()

    start, _ = gap()
    for _ in range(8):
        _, old = gap()                                                      # pi_old = the policy of this iteration
        batch = {"input_ids": ids, "response_mask": mask, "logp_old": old, "advantage": advantages(rewards).flatten()}
        r = train_step(model, opt, [batch], amp=autocast(torch.device("cpu")), grad_clip=1.0,
                       device=torch.device("cpu"), objective=obj)
        assert r.loss >= 0
    end, _ = gap()
    assert end > start + 1.0, (start, end)


def test_ptx_adds_the_language_model_loss():
    g = torch.Generator().manual_seed(2)
    ids, mask = _responses(g)
    ptx = torch.randint(0, 64, (2, 10), generator=g)
    model = _model()
    with torch.no_grad():
        old = response_logprobs(model(ids).logits, ids, mask)
        batch = {"input_ids": ids, "response_mask": mask, "logp_old": old, "advantage": torch.zeros(6), "ptx_ids": ptx}
        rl, _ = K15Objective(tau=0.3).loss(model, batch)
        both, _ = K15Objective(tau=0.3, ptx_weight=0.25).loss(model, batch)
        lm = model(ptx, labels=ptx).loss
    assert float(rl) == pytest.approx(0.0, abs=1e-10)                     # no advantage, pi = pi_old
    assert float(both) == pytest.approx(0.25 * float(lm), rel=1e-6)


# ---------------------------------------------------------------------------- the rl stage
RL = ["rl.steps=4", "rl.updates_per_iteration=2", "rl.tasks=[instructions,math]", "rl.prompts_per_task=3",
      "rl.samples=2", "rl.heldout_prompts=4", "rl.eval_every=2", "rl.checkpoint_every=2", "rl.eval_batches=1",
      "rl.max_tokens={instructions: 12, math: 8}", "rl.ptx_seq_len=8192", "rl.optim.lr=0.003"]
SFT_SMALL = ["sft.steps=2", "sft.micro_batch=1", "sft.eval_every=2", "sft.eval_batches=1", "sft.checkpoint_every=2",
             "sft.warmup_steps=1", "sft.eval_turns=1", "sft.eval_tasks=0", "sft.eval_max_tokens=8", "sft.seq_len=8192"]


@pytest.fixture(scope="module")
def sft_model(pretrained):  # noqa: F811
    from tests.k2core.agentic.test_synthesize import SMALL as SYN

    tools, _ = run_stage(pretrained, "tools", ["tools.synthetic.count=0"])
    syn, _ = run_stage(pretrained, "synthesize", SYN, pins={"tools": tools.version})
    sft, _ = run_stage(pretrained, "sft", SFT_SMALL, pins={"tools": tools.version, "synthesize": syn.version})
    sets = ["tools.synthetic.count=0", *SYN, *SFT_SMALL]
    return {"pins": {"tools": tools.version, "synthesize": syn.version, "sft": sft.version}, "sets": sets}


@pytest.mark.slow
def test_rl_stage_trains_reports_and_resumes_bit_identical(pretrained, sft_model, tmp_path):  # noqa: F811
    """The stage end to end (held-out reward before / after, telemetry, plot, exported model, gate);
    killed like kill -9 after step 2 it resumes from that checkpoint to the same weights."""
    import hashlib
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import pandas as pd

    out, store = run_stage(pretrained, "rl", RL, pins=sft_model["pins"])
    m = out.metrics
    assert out.gate["success"] and m["steps"] == 4 and m["iterations"] == 2 and m["nan_steps"] == 0
    assert m["heldout_in_train"] == 0 and m["metrics_computed"] == 1
    for when in ("before", "after"):
        assert -0.5 <= m[f"{when}_heldout_reward"] <= 1 and f"{when}_heldout_reward_math" in m
    assert m["engine_logprob_gap_median"] < 1e-4      # CPU fp32: the engine's log-probs are the training forward's
    art = store.artifact("rl", out.version)
    df = pd.read_parquet(art.path("telemetry.parquet"))
    assert list(df["update"]) == [0, 1, 0, 1] and list(df.iteration) == [0, 0, 1, 1]
    assert df.heldout_reward.notna().tolist() == [True, False, True, False]
    assert {"reward_math", "truncated_instructions", "temperature", "frac_reward_zero_std", "max_logit"} <= set(df)
    assert df.temperature.iloc[0] == 1.0 and df.temperature.iloc[-1] == pytest.approx(0.7)
    assert "rl.png" in art.files("") and "model/config.json" in art.files("model/")
    from k2core.infer.llm import NativeLLM

    with NativeLLM(art.path("model/config.json").parent, device="cpu") as llm:
        assert llm.generate(["hello"])[0].completion_tokens >= 1

    # kill -9 after step 2, rerun: resumes from step-0000002.pt and ends with the same weights
    root = Path(__file__).resolve().parents[3]
    sets = [*pretrained["sets"], *sft_model["sets"], *RL]

    def script(store_dir, env):
        cmd = [sys.executable, str(root / "tests/k2core/train/stages.py"), str(store_dir), "rl",
               *(f"--set={s}" for s in sets)]
        return subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, cwd=root, timeout=600)

    killed = tmp_path / "killed"
    shutil.copytree(pretrained["store"], killed)
    shutil.rmtree(killed / "artifacts" / "rl", ignore_errors=True)
    r = script(killed, {"K2_TRAIN_CALLBACKS": "tests.k2core.train.callbacks:crash_after_2"})
    assert r.returncode == 9, r.stderr[-2000:]
    assert not list((killed / "artifacts").glob("rl/*/manifest.json"))
    r = script(killed, {})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming from" in r.stdout and "step-0000002.pt" in r.stdout

    clean = tmp_path / "clean"                       # the same process set-up, never interrupted
    shutil.copytree(pretrained["store"], clean)
    shutil.rmtree(clean / "artifacts" / "rl", ignore_errors=True)
    assert script(clean, {}).returncode == 0

    def digest(p):
        [f] = list(Path(p).glob("artifacts/rl/*/model/model.safetensors"))
        return hashlib.sha256(f.read_bytes()).hexdigest()
    assert digest(killed) == digest(clean)
