"""RL training through the shared loop: K1.5's objective as a `loop.Objective`, so an RL step is
`Trainer.train_step` — micro-batches, DDP, clipping, MuonClip + QK-Clip, the routing-bias update —
with this loss instead of the language-model loss. (The `rl` stage — rollouts, rewards, π_old
log-probs, schedules — builds on it.)

An RL micro-batch holds B sampled responses with their prompts:
    input_ids [B, T]       prompt + response, right-padded
    response_mask [B, T]   1 on response tokens (what log π(y|x) sums over)
    logp_old [B]           Σ log π_old(y|x), from the policy before this iteration's update
    advantage [B]          r − r̄ over the K responses to the same prompt
    ptx_ids [B', T'] (optional)  a pre-training-style batch for the PTX loss (labels = ids)
"""
from __future__ import annotations

import torch

from k2core.rl.loss import k15_terms, response_logprobs
from k2core.train.loop import Batch, Objective


class K15Objective(Objective):
    """mean_i (adv_i − τ·(log π_θ(y_i|x) − log π_old(y_i|x)))² + ptx_weight · LM loss on ``ptx_ids``;
    units = responses, so a step's loss is the mean over every response of the global batch."""

    def __init__(self, tau: float, ptx_weight: float = 0.0):
        self.tau, self.ptx_weight = tau, ptx_weight

    def loss(self, net, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        out = net(batch["input_ids"], want_max_logits=True)
        logp = response_logprobs(out.logits, batch["input_ids"], batch["response_mask"])
        loss = k15_terms(logp, batch["logp_old"].to(logp.dtype), batch["advantage"].to(logp.dtype), self.tau).mean()
        max_logits = out.max_logits
        if self.ptx_weight and "ptx_ids" in batch:
            ptx = net(batch["ptx_ids"], labels=batch["ptx_ids"], want_max_logits=True)
            loss = loss + self.ptx_weight * ptx.loss
            max_logits = torch.maximum(max_logits, ptx.max_logits)
        return loss, max_logits

    def units(self, batch: Batch) -> torch.Tensor:
        return torch.tensor(batch["input_ids"].shape[0])
