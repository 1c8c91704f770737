"""Model fixtures: a small K2 config with dense + MoE layers and 8 experts, and its checkpoint."""
from __future__ import annotations

import pytest
import torch

from k2core.model import K2ForCausalLM, ModelConfig
from k2core.model.checkpoint import save_checkpoint


def small_config(**kw) -> ModelConfig:
    # 3 layers: 1 dense + 2 MoE, 8 routed experts (top-2) + 1 shared
    return ModelConfig.preset("tiny", num_hidden_layers=3, first_k_dense_replace=1, n_routed_experts=8, **kw)


def random_model(cfg: ModelConfig, seed: int = 1, bias_std: float = 0.05) -> K2ForCausalLM:
    m = K2ForCausalLM(cfg).init_weights(seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():   # a non-zero routing bias, so parity covers bias-based selection
        for _, moe in m.moe_layers():
            moe.gate.e_score_correction_bias.copy_(torch.randn(cfg.n_routed_experts, generator=g) * bias_std)
    return m.eval()


@pytest.fixture
def small_ckpt(tmp_path):
    cfg = small_config()
    model = random_model(cfg)
    return model, save_checkpoint(model, tmp_path / "ckpt")
