"""The K2 model (MLA + sparse MoE), its configuration and Hugging Face-format checkpoints."""
from k2core.model.config import PRESETS, ModelConfig, param_counts
from k2core.model.k2 import K2ForCausalLM, K2Output, KVCache

__all__ = ["PRESETS", "ModelConfig", "param_counts", "K2ForCausalLM", "K2Output", "KVCache"]
