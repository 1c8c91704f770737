"""Generation engines. ``Engine`` is the native one (k2's own checkpoints, latent KV cache)."""
from k2core.infer.engine import Engine, Generation, SamplingParams

__all__ = ["Engine", "Generation", "SamplingParams"]
