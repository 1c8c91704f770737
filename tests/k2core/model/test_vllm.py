"""The `tiny-vllm` checkpoint loads in vLLM (CPU build) and continues prompts as the native engine does.

vLLM lives in its own environment (`make vllm-env`, ~3.5 GB; `make test` builds it and sets
K2_REQUIRE_VLLM=1 so a missing environment fails instead of skipping).

Greedy tokens must equal the native engine's token for token, and vLLM's log-probability of each
chosen token the native model's within 1e-4 (fp32; measured ≤ 1e-6). Both hold only with the
backend's CPU setting of the rotary op (k2core/infer/vllm_worker.py: engine_kwargs): vLLM 0.32's
C++ rotary kernel mis-rotates MLA's query slice, which once looked like batch-dependent noise here.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from k2core.infer import Engine, SamplingParams
from k2core.model.checkpoint import init_checkpoint, load_checkpoint

HELPER = Path(__file__).with_name("vllm_greedy.py")


def vllm_python() -> str:
    """The vLLM environment's python (k2's own lookup); skip without one, fail under K2_REQUIRE_VLLM=1."""
    from k2core.infer.llm import vllm_python as find

    py = find()
    if py is None or not py.exists():
        msg = f"no vLLM environment at {py or '.venv-vllm/bin/python'} (run `make vllm-env`)"
        if os.environ.get("K2_REQUIRE_VLLM") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return str(py)                        # absolute: the helper runs with its own working directory


@pytest.mark.slow
def test_vllm_greedy_equals_native_engine(tmp_path):
    py = vllm_python()
    ckpt = init_checkpoint("tiny-vllm", 0, tmp_path / "tiny-vllm")
    prompts = [[5, 6, 7, 8], [100, 200, 300, 400, 500, 600], [42], list(range(1000, 1040))]
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
           "DO_NOT_TRACK": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.run([py, str(HELPER), str(ckpt), json.dumps(prompts), "16", "float32"],
                          capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("VLLM_RESULT ")]
    assert proc.returncode == 0 and lines, f"vLLM failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}"
    theirs = json.loads(lines[-1].removeprefix("VLLM_RESULT "))
    model = load_checkpoint(ckpt)
    ours = Engine(model).generate(prompts, SamplingParams(max_tokens=16, temperature=0))
    worst = 0.0
    for prompt, mine, toks, lps in zip(prompts, ours, theirs["tokens"], theirs["logprobs"]):
        assert mine.token_ids == toks, (prompt, mine.token_ids, toks)
        with torch.no_grad():   # the native model's log-probabilities of vLLM's tokens
            logits = model(torch.tensor([prompt + toks])).logits[0, len(prompt) - 1:-1]
        ours_lp = logits.log_softmax(-1).gather(1, torch.tensor(toks)[:, None]).squeeze(1)
        worst = max(worst, (ours_lp - torch.tensor(lps)).abs().max().item())
    assert worst < 1e-4, worst
    print(f"max |log p(vLLM) - log p(native)| = {worst:.2e}")
