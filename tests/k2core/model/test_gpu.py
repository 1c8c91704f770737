"""CUDA-only paths checked against their CPU / eager equivalents (marked gpu; CI has no GPU)."""
from __future__ import annotations

import pytest
import torch

from k2core.infer import Engine, SamplingParams
from k2core.model import K2ForCausalLM, ModelConfig
from tests.k2core.conftest import random_model, small_config

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("T,S", [(300, 300), (64, 64), (5, 133)])
def test_triton_max_logit_equals_torch(T, S):
    from k2core.model.kernels import qk_max_logit

    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(3, 8, T, 192, device="cuda", generator=g).bfloat16()
    k = torch.randn(3, 8, S, 192, device="cuda", generator=g).bfloat16()
    ref = (q.float() @ k.float().transpose(-1, -2))
    ref = ref.masked_fill(~torch.ones(T, S, dtype=torch.bool, device="cuda").tril(S - T), float("-inf"))
    assert torch.allclose(qk_max_logit(q, k, 128), ref.amax(dim=(0, 2, 3)), rtol=1e-3, atol=1e-2)


def test_max_logits_on_gpu_match_cpu():
    model = random_model(small_config(qk_nope_head_dim=32, qk_rope_head_dim=16))
    ids = torch.randint(0, 4096, (2, 100), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cpu = model(ids, want_max_logits=True).max_logits
        gpu = model.cuda()(ids.cuda(), want_max_logits=True).max_logits.cpu()
    assert torch.allclose(cpu, gpu, rtol=1e-3, atol=1e-3)


def test_cuda_graph_decoding_equals_eager():
    model = random_model(small_config(), seed=5).cuda()
    prompts = torch.randint(2, 4096, (4, 9), generator=torch.Generator().manual_seed(1)).tolist()
    prompts[1] = prompts[1][:3]
    p = SamplingParams(max_tokens=40, temperature=0)
    graph = Engine(model, cuda_graph=True).generate(prompts, p)
    eager = Engine(model, cuda_graph=False).generate(prompts, p)
    cpu = Engine(model.cpu()).generate(prompts, p)
    assert [g.token_ids for g in graph] == [g.token_ids for g in eager] == [g.token_ids for g in cpu]


def test_bf16_training_step_runs_and_learns():
    cfg = ModelConfig.preset("tiny")
    model = K2ForCausalLM(cfg).init_weights(0).cuda().bfloat16().train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = torch.randint(0, cfg.vocab_size, (4, 65), device="cuda", generator=torch.Generator(device="cuda").manual_seed(0))
    losses = []
    for _ in range(30):
        out = model(ids[:, :-1], labels=ids[:, 1:], want_max_logits=True)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0] - 1.0 and out.max_logits.isfinite().all()
