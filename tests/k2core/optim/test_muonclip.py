"""MuonClip: routing table, exactness against torch.optim.Muon / AdamW, QK-Clip's MLA rule,
telemetry, checkpointable state, ZeRO-1 sharding over gloo and the DeepSpeed stage-0 path."""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.optim._muon import _zeropower_via_newtonschulz

from k2core.model import K2ForCausalLM, ModelConfig
from k2core.optim.muonclip import MuonClip, MuonClipError, attention_layouts, newton_schulz, route_parameters
from tests.conftest import free_port

HERE = Path(__file__).parent


def small_model(seed: int = 0, **kw) -> K2ForCausalLM:
    cfg = ModelConfig.preset("tiny", num_hidden_layers=3, first_k_dense_replace=1, **kw)
    return K2ForCausalLM(cfg).init_weights(seed)


def batch(model, n=2, t=32, seed=0):
    return torch.randint(0, model.config.vocab_size, (n, t), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------- routing
def test_routing_table_assigns_every_parameter_once():
    model = small_model()
    routes = route_parameters(model)
    by_name = {r.name: r for r in routes}
    assert len(by_name) == len(routes) == len(list(model.parameters()))
    assert by_name["model.embed_tokens.weight"].kind == "adamw"
    assert by_name["lm_head.weight"].kind == "adamw"
    assert by_name["model.norm.weight"].kind == "adamw"
    assert by_name["model.layers.0.self_attn.kv_a_layernorm.weight"].kind == "adamw"
    for name in ("model.layers.0.self_attn.q_b_proj.weight", "model.layers.0.self_attn.kv_a_proj_with_mqa.weight",
                 "model.layers.1.mlp.gate.weight", "model.layers.1.mlp.shared_experts.down_proj.weight",
                 "model.layers.0.mlp.up_proj.weight"):
        assert by_name[name].kind == "muon", name
    assert by_name["model.layers.1.mlp.experts.gate_proj"].why == "expert stack (8 matrices)"
    assert not any("e_score_correction_bias" in n for n in by_name)   # a buffer, not a gradient parameter


def test_routing_table_tied_embeddings_once():
    model = small_model(tie_word_embeddings=True)
    names = [r.name for r in route_parameters(model)]
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    assert len(names) == len({id(p) for p in model.parameters()})


# ---------------------------------------------------------------------------- exactness
def test_cpu_defaults_to_fp32_newton_schulz_and_bf16_stays_available():
    model = small_model()
    assert MuonClip.for_model(model)._ns_dtype(torch.device("cpu")) == torch.float32
    assert MuonClip.for_model(model, ns_dtype="bf16")._ns_dtype(torch.device("cpu")) == torch.bfloat16
    assert MuonClip.for_model(model)._ns_dtype(torch.device("cuda")) == torch.bfloat16
    with pytest.raises(MuonClipError, match="ns_dtype = 'fp16'"):
        MuonClip.for_model(model, ns_dtype="fp16")
    # fp32 and bf16 iterations agree to bf16 precision
    G = torch.randn(4, 32, 64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(newton_schulz(G, dtype=torch.float32), newton_schulz(G).float(), atol=0.03, rtol=0)


def test_batched_newton_schulz_equals_torch_per_matrix():
    g = torch.Generator().manual_seed(0)
    for shape in [(6, 64, 128), (6, 128, 64), (3, 96, 96)]:
        G = torch.randn(*shape, generator=g)
        ours = newton_schulz(G)
        ref = torch.stack([_zeropower_via_newtonschulz(m, (3.4445, -4.7750, 2.0315), 5, 1e-7) for m in G])
        assert ours.dtype == torch.bfloat16 and ours.shape == G.shape
        assert torch.equal(ours, ref), shape


@pytest.mark.parametrize("shape", [(5, 48, 80), (5, 80, 48), (64, 64), (96, 40)])
def test_folded_identity_form_equals_the_addmm_form(shape):
    """(B + aI)·X — the GPU path's form, without addmm's copy — is the same polynomial."""
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    for dt, tol in ((torch.float32, 1e-5), (torch.bfloat16, 0.05)):
        ref = newton_schulz(G, dtype=dt)
        out = newton_schulz(G, dtype=dt, fold_identity=True)
        assert out.shape == G.shape and out.dtype == dt
        X = G.to(dt)
        keep = X.clone()
        newton_schulz(X, dtype=dt, fold_identity=True)
        assert torch.equal(X, keep)                    # the input is not normalised in place
        torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=0)


def test_muon_part_equals_torch_muon_over_10_steps():
    """QK-Clip off: the Muon groups' updates equal torch.optim.Muon(match_rms_adamw), expert stacks
    compared matrix by matrix."""
    model = small_model()
    opt = MuonClip.for_model(model, lr=0.01, weight_decay=0.1, qk_clip_tau=None, ns_dtype="bf16")
    muon = [r.param for r in opt.routes if r.kind == "muon"]
    refs = []
    for p in muon:
        refs += [torch.nn.Parameter(m.clone()) for m in (p.data if p.ndim == 3 else p.data[None])]
    ref_opt = torch.optim.Muon(refs, lr=0.01, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    g = torch.Generator().manual_seed(3)
    for _ in range(10):
        k = 0
        for p in muon:
            p.grad = torch.randn(p.shape, generator=g)
            for m in (p.grad if p.ndim == 3 else p.grad[None]):
                refs[k].grad = m.clone()
                k += 1
        opt.step()
        ref_opt.step()
    ours = torch.cat([p.detach().reshape(-1) for p in muon])
    theirs = torch.cat([p.detach().reshape(-1) for p in refs])
    assert (ours - theirs).abs().max() <= 1e-6


def test_adamw_part_equals_torch_adamw():
    model = small_model()
    opt = MuonClip.for_model(model, lr=3e-3, weight_decay=0.1, qk_clip_tau=None)
    adam = [r.param for r in opt.routes if r.kind == "adamw"]
    refs = [torch.nn.Parameter(p.detach().clone()) for p in adam]
    ref_opt = torch.optim.AdamW(refs, lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, foreach=True)
    g = torch.Generator().manual_seed(4)
    for _ in range(5):
        for p, r in zip(adam, refs):
            p.grad = torch.randn(p.shape, generator=g)
            r.grad = p.grad.clone()
        opt.step()
        ref_opt.step()
    for p, r in zip(adam, refs):
        assert torch.equal(p, r)


def test_flattened_parameters_are_refused_with_the_reason():
    flat = torch.nn.Parameter(torch.zeros(100))
    with pytest.raises(MuonClipError, match="flattened partitions.*stage = 0"):
        MuonClip([{"params": [flat], "kind": "muon"}])
    with pytest.raises(MuonClipError, match="kind 'sgd'"):
        MuonClip([{"params": [flat], "kind": "sgd"}])


# ---------------------------------------------------------------------------- QK-Clip
def _layer_inputs(model, ids):
    """Each attention layer's input (and rotary tables) in one forward, for recomputing its logits."""
    seen = []
    hooks = [layer.self_attn.register_forward_pre_hook(lambda m, a, kw: seen.append(a), with_kwargs=True)
             for layer in model.model.layers]
    with torch.no_grad():
        out = model(ids, want_max_logits=True)
    for h in hooks:
        h.remove()
    return out.max_logits, seen


def test_qk_clip_caps_clipped_heads_and_leaves_the_rest_bit_identical():
    model = small_model(seed=2)
    ids = batch(model)
    S, inputs = _layer_inputs(model, ids)
    tau = float(S.flatten().median())        # about half the heads above, half below
    before = copy.deepcopy(model.state_dict())
    opt = MuonClip.for_model(model, lr=0.0, weight_decay=0.0, qk_clip_tau=tau)   # lr 0: the clip alone
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    stats = opt.step(max_logits=S)
    clipped = S > tau
    assert stats.clipped_heads == int(clipped.sum()) > 0 and (~clipped).any()
    assert stats.min_gamma == pytest.approx(float(tau / S.max()))
    cfg = model.config
    H, dn, dr, dv = cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
    for i, layer in enumerate(model.model.layers):
        pre = f"model.layers.{i}.self_attn."
        q0 = before[pre + "q_b_proj.weight"].view(H, dn + dr, -1)
        kv0 = before[pre + "kv_b_proj.weight"].view(H, dn + dv, -1)
        q1 = layer.self_attn.q_b_proj.weight.detach().view(H, dn + dr, -1)
        kv1 = layer.self_attn.kv_b_proj.weight.detach().view(H, dn + dv, -1)
        for h in range(H):
            if clipped[i, h]:
                gamma = tau / S[i, h]
                torch.testing.assert_close(q1[h, :dn], q0[h, :dn] * gamma.sqrt())
                torch.testing.assert_close(q1[h, dn:], q0[h, dn:] * gamma)
                torch.testing.assert_close(kv1[h, :dn], kv0[h, :dn] * gamma.sqrt())
            else:
                assert torch.equal(q1[h], q0[h]) and torch.equal(kv1[h, :dn], kv0[h, :dn])
            assert torch.equal(kv1[h, dn:], kv0[h, dn:])                         # value rows
        for name in ("kv_a_proj_with_mqa.weight", "q_a_proj.weight", "o_proj.weight",
                     "kv_a_layernorm.weight", "q_a_layernorm.weight"):
            assert torch.equal(model.state_dict()[pre + name], before[pre + name]), name
        # the same layer input now gives max logits <= tau on the clipped heads, equal elsewhere
        x, cos, sin = inputs[i][:3]
        with torch.no_grad():
            _, s_new = layer.self_attn(x, cos, sin, want_max_logit=True)
        assert (s_new[clipped[i]] <= tau * (1 + 1e-5)).all()
        torch.testing.assert_close(s_new[clipped[i]], torch.full_like(s_new[clipped[i]], tau), rtol=1e-5, atol=0)
        assert torch.equal(s_new[~clipped[i]], S[i][~clipped[i]])


def test_qk_clip_off_reports_max_logits_without_touching_weights():
    model = small_model()
    S, _ = _layer_inputs(model, batch(model))
    opt = MuonClip.for_model(model, lr=0.0, weight_decay=0.0, qk_clip_tau=None)
    before = copy.deepcopy(model.state_dict())
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    stats = opt.step(max_logits=S * 1000)
    assert stats.clipped_heads == 0 and stats.min_gamma == 1.0
    assert stats.as_metrics()["max_logit"] == pytest.approx(float(S.max() * 1000))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_qk_clip_needs_matching_layers():
    model = small_model()
    opt = MuonClip.for_model(model, qk_clip_tau=1.0)
    assert len(attention_layouts(model)) == 3
    with pytest.raises(MuonClipError, match="2 layers but the optimizer knows 3"):
        opt.step(max_logits=torch.ones(2, 4))
    with pytest.raises(MuonClipError, match="qk_clip_tau = 0"):
        MuonClip.for_model(model, qk_clip_tau=0.0)


# ---------------------------------------------------------------------------- training + state
def _train(model, opt, steps, seed=0):
    for s in range(steps):
        ids = batch(model, seed=seed + s)
        out = model(ids, labels=ids, want_max_logits=True)
        out.loss.backward()
        opt.step(max_logits=out.max_logits)
        opt.zero_grad()
    return out.loss.item()


def test_state_dict_resume_is_bit_exact(tmp_path):
    torch.set_num_threads(1)
    a = small_model()
    opt_a = MuonClip.for_model(a, lr=0.01, qk_clip_tau=1.0)
    _train(a, opt_a, 3)
    torch.save({"model": a.state_dict(), "opt": opt_a.state_dict()}, tmp_path / "ck.pt")
    _train(a, opt_a, 3, seed=3)

    b = small_model(seed=9)                       # different init: everything comes from the file
    opt_b = MuonClip.for_model(b, lr=0.01, qk_clip_tau=1.0)
    ck = torch.load(tmp_path / "ck.pt")
    b.load_state_dict(ck["model"])
    opt_b.load_state_dict(ck["opt"])
    _train(b, opt_b, 3, seed=3)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), n
    assert set(opt_b.state_dict()["state"]) == set(opt_a.state_dict()["state"])


def test_muonclip_trains_a_small_model():
    torch.manual_seed(0)
    model = small_model()
    opt = MuonClip.for_model(model, lr=3e-3, qk_clip_tau=100.0)
    ids = batch(model, n=4)
    losses = []
    for _ in range(15):
        out = model(ids, labels=ids, want_max_logits=True)
        out.loss.backward()
        opt.step(max_logits=out.max_logits)
        opt.zero_grad()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0] - 1.0, losses


# ---------------------------------------------------------------------------- distributed
def _torchrun(tmp_path, *args, nproc=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
           f"--master-port={free_port()}", str(HERE / "dist_train.py"), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)


def _single(tmp_path, *args):
    out = tmp_path / "single.pt"
    r = subprocess.run([sys.executable, str(HERE / "dist_train.py"), "--mode", "single", "--out", str(out), *args],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return torch.load(out), torch.load(f"{out}.grads0")


@pytest.mark.slow
def test_zero1_over_gloo_equals_single_process(tmp_path):
    single, single_grads = _single(tmp_path, "--tau", "0.05")
    assert sum(single["clipped"]) > 0                   # QK-Clip is exercised
    # same batch on both ranks (gradients already averaged, as after DDP): bit-identical result
    r = _torchrun(tmp_path, "--mode", "zero1", "--tau", "0.05", "--out", str(tmp_path / "z.pt"))
    assert r.returncode == 0, r.stderr[-3000:]
    z = torch.load(tmp_path / "z.pt")
    assert 0 < z["owned"] < len(z["params"])             # rank 0 holds state for only its share
    assert z["clipped"] == single["clipped"]
    for n, p in single["params"].items():
        assert torch.equal(p, z["params"][n]), n
    # each rank takes half the batch; gradients are reduced to each parameter's owner
    r = _torchrun(tmp_path, "--mode", "zero1", "--split", "--tau", "0.05", "--out", str(tmp_path / "s.pt"))
    assert r.returncode == 0, r.stderr[-3000:]
    reduced = {**torch.load(tmp_path / "s.pt.grads0"), **torch.load(tmp_path / "s.pt.grads1")}
    assert set(reduced) == set(single_grads)
    for n, g in single_grads.items():
        torch.testing.assert_close(reduced[n], g, rtol=1e-4, atol=1e-6, msg=n)
    assert torch.load(tmp_path / "s.pt")["clipped"][0] == single["clipped"][0]   # S_max max-reduced


@pytest.mark.slow
def test_deepspeed_stage0_path_equals_single_process(tmp_path):
    single, _ = _single(tmp_path, "--tau", "0.05")
    r = _torchrun(tmp_path, "--mode", "deepspeed", "--tau", "0.05", "--out", str(tmp_path / "d.pt"))
    assert r.returncode == 0, r.stderr[-3000:]
    d = torch.load(tmp_path / "d.pt")
    assert d["world"] == 2 and d["clipped"] == single["clipped"]
    for n, p in single["params"].items():
        assert torch.equal(p, d["params"][n]), n
    # ZeRO stage 1 hands the optimizer flattened partitions: refused, naming the fix
    r = _torchrun(tmp_path, "--mode", "deepspeed", "--zero-stage", "1", "--out", str(tmp_path / "x.pt"), nproc=1)
    assert r.returncode != 0 and "zero_optimization.stage = 0" in r.stderr
