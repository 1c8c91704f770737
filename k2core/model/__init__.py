"""The K2 model (MLA + sparse MoE), its configuration and Hugging Face-format checkpoints.

Names are imported on first use, so `k2core.model.config` loads without torch."""
from __future__ import annotations

from k2core.lazy import lazy_exports

_EXPORTS = {"PRESETS": "config", "ModelConfig": "config", "param_counts": "config",
            "K2ForCausalLM": "k2", "K2Output": "k2", "KVCache": "k2"}
__all__ = list(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
