"""Generation engines. ``Engine`` is the native one (k2's own checkpoints, latent KV cache); the
text interface over native / vLLM / OpenAI-compatible backends is `k2core.infer.llm`.

Names are imported on first use, so submodules load without torch where they can."""
from __future__ import annotations

from k2core.lazy import lazy_exports

_EXPORTS = {"Engine": "engine", "Generation": "engine", "SamplingParams": "engine"}
__all__ = list(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
