"""The K2 model against transformers' DeepseekV3ForCausalLM, and the router's rules."""
from __future__ import annotations

import pytest
import torch

from k2core.model import K2ForCausalLM
from k2core.model.checkpoint import load_checkpoint, save_checkpoint
from tests.k2core.conftest import random_model, small_config

transformers = pytest.importorskip("transformers")


def hf_model(path):
    return transformers.DeepseekV3ForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


YARN = dict(rope_scaling=dict(factor=4.0, original_max_position_embeddings=256, mscale=1.0, mscale_all_dim=0.707),
            max_position_embeddings=1024)


@pytest.mark.parametrize("extra", [{}, dict(n_group=4, topk_group=2), YARN, dict(q_lora_rank=None)],
                         ids=["k2", "group-limited", "yarn", "full-rank-q"])
def test_logits_equal_transformers(tmp_path, extra):
    model = random_model(small_config(**extra))
    save_checkpoint(model, tmp_path / "c")
    ref = hf_model(tmp_path / "c")
    ids = torch.randint(0, model.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model(ids).logits, ref(ids).logits
    assert ours.shape == theirs.shape == (2, 40, model.config.vocab_size)
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_gradients_equal_transformers(tmp_path):
    """The training path: the same loss and, parameter by parameter, the same gradients (fp32)."""
    model = random_model(small_config()).train()
    save_checkpoint(model, tmp_path / "c")
    ref = hf_model(tmp_path / "c").train()
    ids = torch.randint(0, model.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    ours, theirs = model(ids, labels=ids).loss, ref(ids, labels=ids).loss
    assert abs(ours.item() - theirs.item()) <= 1e-5
    ours.backward()
    theirs.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for name, p in ref.named_parameters():
        if name.endswith("experts.gate_up_proj"):   # transformers keeps [gate; up] as one tensor
            mine = torch.cat([grads[name.replace("gate_up_proj", "gate_proj")],
                              grads[name.replace("gate_up_proj", "up_proj")]], dim=1)
        else:
            mine = grads[name]
        scale = p.grad.abs().max().item()
        assert scale > 0, name
        assert (mine - p.grad).abs().max().item() <= 1e-4 * scale, name


def test_yarn_changes_the_model():
    ids = torch.randint(0, 4096, (1, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = random_model(small_config(max_position_embeddings=1024))(ids).logits
        yarn = random_model(small_config(**YARN))(ids).logits
    assert (plain - yarn).abs().max().item() > 1e-3


def test_loss_is_next_token_cross_entropy(tmp_path):
    model = random_model(small_config())
    ids = torch.randint(0, 4096, (2, 16), generator=torch.Generator().manual_seed(0))
    out = model(ids, labels=ids)
    expected = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    assert torch.allclose(out.loss, expected)
    hf = hf_model(save_checkpoint(model, tmp_path / "ckpt"))   # transformers' convention: labels=input_ids
    assert torch.allclose(hf(ids, labels=ids).loss, out.loss, atol=1e-5)


def naive_max_logits(model: K2ForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    """S_max per layer and head from an explicit causal QKᵀ over transformers' modules."""
    ref_layers = []
    hooks = []
    captured = {}
    for i, layer in enumerate(model.model.layers):
        hooks.append(layer.self_attn.register_forward_hook(
            lambda mod, args, out, i=i: captured.__setitem__(i, args[0])))
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    cfg = model.config
    for i, layer in enumerate(model.model.layers):
        att, x = layer.self_attn, captured[i]
        B, T, _ = x.shape
        q = att._q(x).view(B, T, cfg.num_attention_heads, cfg.qk_head_dim)
        c, kr = att.kv_a_proj_with_mqa(x).split([cfg.kv_lora_rank, cfg.qk_rope_head_dim], -1)
        kn = att.kv_b_proj(att.kv_a_layernorm(c)).view(B, T, cfg.num_attention_heads, -1)[..., :cfg.qk_nope_head_dim]
        pos = torch.arange(T).float()[:, None] * model.inv_freq
        cos, sin = pos.cos(), pos.sin()

        def rot(t):   # interleaved pairs, rotated in place (the layout in the weights)
            t1, t2 = t[..., 0::2], t[..., 1::2]
            return torch.stack([t1 * cos - t2 * sin, t2 * cos + t1 * sin], -1).flatten(-2)
        qr = rot(q[..., cfg.qk_nope_head_dim:].transpose(1, 2))               # B N T Dr
        kr = rot(kr[:, None])                                                   # B 1 T Dr
        logits = (torch.einsum("btnd,bsnd->bnts", q[..., :cfg.qk_nope_head_dim], kn)
                  + qr @ kr.transpose(-1, -2)) * cfg.softmax_scale
        logits = logits.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
        ref_layers.append(logits.amax(dim=(0, 2, 3)))
    return torch.stack(ref_layers)


def test_max_logits_per_head_match_explicit_computation():
    model = random_model(small_config())
    ids = torch.randint(0, 4096, (3, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(ids, want_max_logits=True)
        plain = model(ids)
    assert out.max_logits.shape == (3, model.config.num_attention_heads)
    assert torch.allclose(out.max_logits, naive_max_logits(model, ids), atol=1e-5)
    assert torch.equal(out.logits, plain.logits)   # asking for S_max does not change the forward


# ---------------------------------------------------------------------------- router
def test_bias_selects_experts_but_never_changes_gate_values():
    cfg = small_config()
    moe = random_model(cfg).moe_layers()[0][1]
    x = torch.randn(50, cfg.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        moe.gate.e_score_correction_bias.zero_()
        gates0, idx0, scores = moe.gate(x)
        moe.gate.e_score_correction_bias[3] = 10.0        # expert 3 now wins every token
        gates1, idx1, scores1 = moe.gate(x)
    assert torch.equal(scores, scores1)
    assert (idx1 == 3).any(-1).all() and not (idx0 == 3).any(-1).all()
    # gates are the chosen *raw* sigmoid scores, normalised, × routed_scaling_factor
    raw = scores.gather(1, idx1)
    expected = raw / raw.sum(-1, keepdim=True) * cfg.routed_scaling_factor
    assert torch.allclose(gates1, expected)
    assert torch.allclose(gates1.sum(-1), torch.full((50,), cfg.routed_scaling_factor))


def test_expert_load_sums_to_tokens_times_k_and_bias_update_follows_the_sign():
    cfg = small_config()
    model = random_model(cfg).train()
    ids = torch.randint(0, 4096, (2, 30), generator=torch.Generator().manual_seed(0))
    model(ids)
    load = model.expert_load()
    assert load.shape == (2, cfg.n_routed_experts)
    assert torch.equal(load.sum(-1), torch.full((2,), 60.0 * cfg.num_experts_per_tok))
    before = [m.gate.e_score_correction_bias.clone() for _, m in model.moe_layers()]
    used = model.update_routing_bias(speed=0.01)
    assert torch.equal(used, load)
    for b0, (_, m), l in zip(before, model.moe_layers(), load):
        delta = m.gate.e_score_correction_bias - b0
        assert torch.allclose(delta, -0.01 * torch.sign(l - l.mean()))
    assert model.expert_load().sum() == 0          # reset after the update
    assert not any("e_score_correction_bias" in n for n, _ in model.named_parameters())


def test_sequence_balance_loss_is_added_and_trains_the_router():
    model = random_model(small_config(seq_aux_loss_alpha=1e-2)).train()
    ids = torch.randint(0, 4096, (2, 16), generator=torch.Generator().manual_seed(0))
    out = model(ids, labels=ids)
    ce = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    assert out.aux_loss is not None and out.aux_loss.item() > 0
    assert torch.allclose(out.loss, ce + out.aux_loss)
    out.aux_loss.backward()
    assert model.moe_layers()[0][1].gate.weight.grad.abs().sum() > 0


def test_experts_run_as_grouped_gemm_equal_a_per_expert_loop():
    cfg = small_config()
    moe = random_model(cfg).moe_layers()[0][1]
    x = torch.randn(40, cfg.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        gates, idx, _ = moe.gate(x)
        y, counts = moe.experts(x, gates, idx)
        ref = torch.zeros_like(x)
        e = moe.experts
        for t in range(40):
            for k in range(cfg.num_experts_per_tok):
                j = idx[t, k]
                h = torch.nn.functional.silu(e.gate_proj[j] @ x[t]) * (e.up_proj[j] @ x[t])
                ref[t] += gates[t, k] * (e.down_proj[j] @ h)
    assert torch.allclose(y, ref, atol=1e-5)
    assert torch.equal(counts, torch.bincount(idx.flatten(), minlength=8).int())


def test_dense_decode_path_equals_grouped_gemm():
    cfg = small_config()
    moe = random_model(cfg).moe_layers()[0][1]
    x = torch.randn(6, cfg.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        gates, idx, _ = moe.gate(x)
        y_grouped, c_grouped = moe.experts(x, gates, idx)       # CPU: always the grouped path
        y_dense, c_dense = moe.experts._dense(x, gates, idx)
    assert torch.allclose(y_dense, y_grouped, atol=1e-6)
    assert torch.equal(c_dense, c_grouped)


def test_fuse_for_decode_keeps_outputs_and_parameters(tmp_path):
    cfg = small_config()
    model = random_model(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids).logits
    params_before = dict(model.named_parameters())
    model.fuse_for_decode()
    assert dict(model.named_parameters()).keys() == params_before.keys()
    assert all(p is params_before[n] for n, p in model.named_parameters())   # same objects
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, ref, atol=1e-5)
        moe = model.moe_layers()[0][1]
        moe.experts.up_proj.mul_(2.0)           # an in-place update reaches the fused weight
        changed = model(ids).logits
        moe.experts.up_proj.mul_(0.5)
    assert not torch.allclose(changed, ref, atol=1e-3)
    loss = model.train()(ids, labels=ids).loss  # with gradients the unfused projections run
    loss.backward()
    attn = model.model.layers[0].self_attn
    assert attn.q_a_proj.weight.grad is not None and moe.experts.gate_proj.grad is not None
    model.eval().double()                       # a cast makes new tensors: fused again from them
    assert moe.experts._fused.dtype == torch.float64
    assert moe.experts.gate_proj.data_ptr() == moe.experts._fused.data_ptr()
    model.float()
    save_checkpoint(model, tmp_path / "ckpt")   # views into one weight save as separate tensors
    with torch.no_grad():
        assert torch.allclose(load_checkpoint(tmp_path / "ckpt")(ids).logits, ref, atol=1e-5)
