"""The `vllm` backend of the engine interface: a trained `tiny-vllm` checkpoint served by vLLM's CPU
build in its own environment, through the persistent worker (marked slow; `make test` builds
`.venv-vllm` and sets K2_REQUIRE_VLLM=1, so a missing environment fails instead of skipping).

The trained checkpoint matters: at random initialisation attention is near-uniform whatever the
rotary positions, so tests/k2core/model/test_vllm.py alone could not see vLLM 0.32's CPU rotary
kernel mis-rotating MLA's query slice (fixed by the worker's engine_kwargs; docs/benchmarks.md).
"""
from __future__ import annotations

import pytest
import torch

from k2core.infer.llm import LLMError, NativeLLM, TextParams, VLLMLLM
from tests.k2core.model.test_vllm import vllm_python

TEXT = ("The miller crossed the bridge to the market. The baker sold bread near the church. "
        "In winter the lake froze and the children skated past the old tower. ") * 20
PROMPTS = ["The miller crossed", "In winter the lake", "The baker sold bread near"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A `tiny-vllm` model trained for 120 steps on TEXT: peaked logits, no near-ties."""
    from k2core.data.tokenize import save_tokenizer, train_tokenizer
    from k2core.model import K2ForCausalLM, ModelConfig
    from k2core.model.checkpoint import save_checkpoint

    vllm_python()            # skips without a vLLM environment (fails under K2_REQUIRE_VLLM=1)
    out = tmp_path_factory.mktemp("vllm") / "model"
    tok = train_tokenizer([TEXT], vocab_size=300, min_frequency=1)
    torch.manual_seed(0)
    model = K2ForCausalLM(ModelConfig.preset("tiny-vllm", vocab_size=tok.get_vocab_size())).init_weights(0)
    ids = torch.tensor(tok.encode(TEXT).ids)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(120):
        starts = torch.randint(0, len(ids) - 65, (8,))
        x = torch.stack([ids[s:s + 64] for s in starts])
        model(x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    save_checkpoint(model, out)
    save_tokenizer(tok, out, seq_len=128)
    return out


@pytest.fixture(scope="module")
def vllm(trained):
    with VLLMLLM(trained, dtype="float32", max_model_len=256) as llm:
        yield llm


def test_vllm_backend_serves_the_checkpoint(vllm, trained):
    assert vllm.version == "0.32.0" and vllm.describe() == f"vllm:{trained.parent.name}"
    outs = vllm.generate(PROMPTS, TextParams(max_tokens=12), progress=False)
    assert [o.prompt_tokens for o in outs] == [len(vllm.tokenizer.encode(p).ids) for p in PROMPTS]
    assert all(o.completion_tokens == 12 and o.finish_reason == "length" and o.text for o in outs)
    cut = vllm.generate(PROMPTS, TextParams(max_tokens=30, stop=[" the"]), progress=False)
    for o in cut:   # the stop string is cut (or never appeared and the budget ran out)
        assert " the" not in o.text and (o.finish_reason == "stop" or o.completion_tokens == 30)
    assert any(o.finish_reason == "stop" for o in cut)


def test_vllm_worker_errors_are_named(trained, tmp_path):
    with pytest.raises(LLMError, match="no vLLM environment"):
        VLLMLLM(trained, python=tmp_path / "nope" / "python")
    with pytest.raises(LLMError, match="has no tokenizer.json"):
        VLLMLLM(tmp_path)


def test_vllm_greedy_text_equals_native(vllm, trained):
    native = NativeLLM(trained, device="cpu")
    params = TextParams(max_tokens=12)
    assert [o.text for o in vllm.generate(PROMPTS, params, progress=False)] == \
        [o.text for o in native.generate(PROMPTS, params, progress=False)]

