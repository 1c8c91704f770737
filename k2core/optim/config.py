"""`OptimConfig`: MuonClip's settings as a typed config section that builds the optimizer
(OLMo-core's pattern: `OptimConfig(...).build(model)`). Nested in the training stages' sections."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from k2core.section import Section


class OptimConfig(Section):
    """MuonClip (K2 §2.1): Muon for hidden matrices, AdamW for embeddings / head / norm gains,
    QK-Clip on the attention logits."""

    lr: float = Field(2e-4, gt=0, description="peak learning rate, shared by Muon and AdamW (match_rms_adamw)")
    weight_decay: float = Field(0.1, ge=0, description="decoupled weight decay (K2: 0.1)")
    momentum: float = Field(0.95, ge=0, lt=1, description="Muon momentum")
    nesterov: bool = True
    ns_steps: int = Field(5, ge=1, le=20, description="Newton-Schulz iterations")
    ns_dtype: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="Newton-Schulz precision; auto = bf16 on GPUs, fp32 on CPUs (bf16 is emulated there)")
    adamw_betas: tuple[float, float] = (0.9, 0.95)
    adamw_eps: float = Field(1e-8, gt=0)
    qk_clip_tau: float | None = Field(100.0, gt=0, description="QK-Clip threshold tau: heads whose max logit "
                                      "exceeds it get their q/k rows rescaled (K2: 100; its ablation: 30); "
                                      "null turns QK-Clip off")

    def build(self, model, **extra: Any):
        """A :class:`~k2core.optim.muonclip.MuonClip` over `model` with these settings; `extra`
        adds what is not configuration (``process_group=…``, ``reduce_grads=…``)."""
        from k2core.optim.muonclip import MuonClip

        return MuonClip.for_model(model, lr=self.lr, weight_decay=self.weight_decay, momentum=self.momentum,
                                  nesterov=self.nesterov, ns_steps=self.ns_steps, ns_dtype=self.ns_dtype,
                                  adamw_betas=tuple(self.adamw_betas), adamw_eps=self.adamw_eps,
                                  qk_clip_tau=self.qk_clip_tau, **extra)
