"""Hugging Face-format checkpoints: names, config.json fields, round trips, bad files."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open

from k2core.config import ConfigError
from k2core.model import K2ForCausalLM, ModelConfig, param_counts
from k2core.model.checkpoint import CheckpointError, init_checkpoint, load_checkpoint, save_checkpoint


def test_config_json_has_what_transformers_and_vllm_need(small_ckpt):
    model, path = small_ckpt
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["model_type"] == "deepseek_v3" and cfg["architectures"] == ["DeepseekV3ForCausalLM"]
    assert cfg["topk_method"] == "noaux_tc" and cfg["scoring_func"] == "sigmoid"
    assert cfg["num_nextn_predict_layers"] == 0 and cfg["rope_interleave"] is True
    assert cfg["n_routed_experts"] == 8 and cfg["num_key_value_heads"] == cfg["num_attention_heads"]
    assert ModelConfig.load(path / "config.json") == model.config


def test_safetensors_use_per_expert_hf_names(small_ckpt):
    model, path = small_ckpt
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "model.layers.1.mlp.experts.7.down_proj.weight" in keys
    assert "model.layers.1.mlp.gate.e_score_correction_bias" in keys
    assert "model.layers.0.mlp.gate_proj.weight" in keys                 # the dense layer
    assert "model.layers.2.self_attn.kv_a_proj_with_mqa.weight" in keys
    assert not any(k.endswith(("experts.gate_proj", "inv_freq", ".load")) for k in keys)
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        n = sum(math.prod(f.get_slice(k).get_shape()) for k in keys)
    buffers = sum(m.gate.e_score_correction_bias.numel() for _, m in model.moe_layers())
    assert n == param_counts(model.config)["total"] + buffers


def test_round_trip_is_bit_exact(small_ckpt):
    model, path = small_ckpt
    loaded = load_checkpoint(path)
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    ids = torch.randint(0, 4096, (1, 10))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_transformers_checkpoint_loads_into_k2(tmp_path, small_ckpt):
    transformers = pytest.importorskip("transformers")
    model, path = small_ckpt
    hf = transformers.DeepseekV3ForCausalLM.from_pretrained(path, dtype=torch.float32)
    hf.save_pretrained(tmp_path / "from_hf")            # transformers writes its own layout
    back = load_checkpoint(tmp_path / "from_hf")
    ids = torch.randint(0, 4096, (1, 12))
    with torch.no_grad():
        assert (back(ids).logits - model(ids).logits).abs().max() < 1e-5


def test_bf16_checkpoint_keeps_the_routing_bias_in_fp32(tmp_path):
    path = init_checkpoint("tiny", 3, tmp_path / "bf16", dtype=torch.bfloat16)
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        assert f.get_tensor("model.layers.1.mlp.gate.e_score_correction_bias").dtype == torch.float32
        assert f.get_tensor("model.layers.1.mlp.experts.0.up_proj.weight").dtype == torch.bfloat16
    assert json.loads((path / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_same_seed_same_weights(tmp_path):
    a = load_checkpoint(init_checkpoint("tiny", 7, tmp_path / "a"))
    b = load_checkpoint(init_checkpoint("tiny", 7, tmp_path / "b"))
    c = load_checkpoint(init_checkpoint("tiny", 8, tmp_path / "c"))
    assert torch.equal(a.lm_head.weight, b.lm_head.weight)
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)


def test_truncated_file_is_a_clear_error(small_ckpt):
    _, path = small_ckpt
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors: cannot read"):
        load_checkpoint(path)


def test_shape_mismatch_names_the_tensor(small_ckpt):
    _, path = small_ckpt
    cfg = json.loads((path / "config.json").read_text())
    cfg["moe_intermediate_size"] *= 2
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"experts.* has shape"):
        load_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ConfigError, match="model_type='llama'"):
        load_checkpoint(tmp_path)


def test_a_failed_save_leaves_nothing_behind(tmp_path, monkeypatch):
    import safetensors.torch

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    model = K2ForCausalLM(ModelConfig.preset("tiny")).init_weights(0)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(model, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_presets_and_published_k2_size():
    with torch.device("meta"):
        model = K2ForCausalLM(ModelConfig.preset("k2-1t"))
    counts = param_counts(model.config)
    assert sum(p.numel() for p in model.parameters()) == counts["total"]
    # computed from the released config.json: 1.026T total, 32.86B activated (report: 1.04T / 32.6B)
    assert counts["total"] == 1_026_408_209_408
    assert abs(counts["active"] / 32.6e9 - 1) < 0.01
    h200 = param_counts(ModelConfig.preset("h200"))
    assert 0.8e9 <= h200["total"] <= 1.0e9 and 0.15e9 <= h200["active"] <= 0.25e9
    vllm = ModelConfig.preset("tiny-vllm")
    assert vllm.kv_lora_rank + vllm.qk_rope_head_dim == 576
    with pytest.raises(ConfigError, match="unknown model preset 'huge'"):
        ModelConfig.preset("huge")
    with pytest.raises(ConfigError, match="num_experts_per_tok=9 exceeds n_routed_experts=8"):
        ModelConfig.preset("tiny", num_experts_per_tok=9)
