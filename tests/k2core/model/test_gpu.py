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


def test_cuda_graph_decoding_is_greedy_under_the_eager_model():
    """Compiled + graph-replayed bf16 decoding vs a full eager forward over the same tokens.

    bf16 kernels differ between the compiled and eager paths, so exact token equality is not
    expected at near-ties; each chosen token must be the eager argmax within bf16 noise."""
    model = random_model(small_config(), seed=5).cuda().bfloat16()
    prompts = torch.randint(2, 4096, (4, 9), generator=torch.Generator().manual_seed(1)).tolist()
    prompts[1] = prompts[1][:3]
    engine = Engine(model)
    assert engine.cuda_graph and engine.compile
    out = engine.generate(prompts, SamplingParams(max_tokens=40, temperature=0))
    assert engine.cuda_graph            # capture succeeded (no eager fallback)
    for p, g in zip(prompts, out):
        assert len(g.token_ids) == 40
        with torch.no_grad():
            logits = model(torch.tensor([p + g.token_ids], device="cuda")).logits[0, len(p) - 1:-1].float()
        chosen = logits.gather(1, torch.tensor(g.token_ids, device="cuda")[:, None]).squeeze(1)
        assert (logits.max(-1).values - chosen).max().item() < 0.1


def test_fp32_graph_decoding_equals_cpu_and_graphs_are_reused():
    model = random_model(small_config(), seed=5).cuda()
    prompts = torch.randint(2, 4096, (2, 9), generator=torch.Generator().manual_seed(1)).tolist()
    p = SamplingParams(max_tokens=20, temperature=0)
    engine = Engine(model, compile=False)          # graph capture without inductor, fp32
    first = engine.generate(prompts, p)
    again = engine.generate([q[:7] for q in prompts], p)      # same bucket: the captured graph again
    assert len(engine._graphs) == 1 and engine.cuda_graph
    cpu = Engine(model.cpu())
    assert [g.token_ids for g in first] == [g.token_ids for g in cpu.generate(prompts, p)]
    assert [g.token_ids for g in again] == [g.token_ids for g in cpu.generate([q[:7] for q in prompts], p)]


def test_fp32_grouped_experts_on_cuda_equal_cpu():
    model = random_model(small_config(), seed=2)
    ids = torch.randint(0, 4096, (2, 50), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cpu = model(ids).logits
        gpu = model.cuda()(ids.cuda()).logits.cpu()
    assert (cpu - gpu).abs().max().item() < 1e-4


def test_bf16_training_step_runs_and_learns():
    cfg = ModelConfig.preset("tiny")
    model = K2ForCausalLM(cfg).init_weights(0).cuda().bfloat16().train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = torch.randint(0, cfg.vocab_size, (4, 65), device="cuda", generator=torch.Generator(device="cuda").manual_seed(0))
    losses = []
    for _ in range(30):
        out = model(ids, labels=ids, want_max_logits=True)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0] - 1.0 and out.max_logits.isfinite().all()


def test_fp32_master_weights_under_autocast_use_the_grouped_gemm():
    """Training keeps fp32 weights and autocasts to bf16: the experts must not fall back to the
    per-expert fp32 loop (which syncs on every layer)."""
    import k2core.model.k2 as k2mod

    model = random_model(small_config()).cuda().train()
    ids = torch.randint(0, 4096, (2, 64), device="cuda", generator=torch.Generator(device="cuda").manual_seed(0))
    calls = []
    real = torch._grouped_mm
    k2mod.torch._grouped_mm = lambda *a, **kw: calls.append(a[0].dtype) or real(*a, **kw)
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(ids, labels=ids).loss
    finally:
        k2mod.torch._grouped_mm = real
    assert calls and set(calls) == {torch.bfloat16}
    ref = model(ids, labels=ids).loss          # fp32 path
    assert abs(loss.item() - ref.item()) < 0.05


def test_compiled_training_gradients_are_bit_identical_between_runs():
    """The same batch twice gives the same gradients bit for bit. Routed tokens' gradients are
    summed back with a gather: the plain ``x[order // K]`` backward, compiled, adds the K slot
    gradients with atomics in any order (with K >= 3 the float sums then differ between runs)."""
    cfg = ModelConfig.preset("tiny", num_hidden_layers=3, first_k_dense_replace=1, n_routed_experts=16,
                             num_experts_per_tok=8)
    model = K2ForCausalLM(cfg).init_weights(0).cuda().bfloat16().train()
    fwd = torch.compile(model)
    ids = torch.randint(0, cfg.vocab_size, (8, 512), device="cuda", generator=torch.Generator(device="cuda").manual_seed(0))
    grads = []
    for _ in range(3):
        fwd(ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        model.zero_grad(set_to_none=True)
    differ = sorted({n for g in grads[1:] for n in g if not torch.equal(grads[0][n], g[n])})
    assert not differ, differ
