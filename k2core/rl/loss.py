"""K1.5's policy loss and K2's RL schedules, pure functions over tensors and numbers.

K1.5 (arXiv 2501.12599), reused by K2 (§3.2.2): for each prompt x, K responses y_1..y_K from the
policy of the last iteration π_old with rewards r_i; the baseline is their mean r̄; the surrogate

    L = mean_i ( r_i − r̄ − τ · log(π_θ(y_i | x) / π_old(y_i | x)) )²

is minimised in θ (no value network; τ regularises toward π_old). Budget control (K2): a response
cut at its task type's token budget gets a configured penalty. Temperature decay (K2): sampling
temperature from a start to an end value over training. K1.5's length penalty is here too.
"""
from __future__ import annotations

import math

import torch


def k15_loss(logp: torch.Tensor, logp_old: torch.Tensor, rewards: torch.Tensor, tau: float) -> torch.Tensor:
    """Mean over prompts and responses of (r_i − r̄ − τ·(log π_θ − log π_old))².

    `logp`, `logp_old`, `rewards`: [P, K] — the summed log-probability of each response under the
    policy being trained (with gradient) and under π_old (constant), and its reward; r̄ is the
    mean of each row."""
    if logp.shape != logp_old.shape or logp.shape != rewards.shape or logp.dim() != 2:
        raise ValueError(f"k15_loss: logp {tuple(logp.shape)}, logp_old {tuple(logp_old.shape)} and rewards "
                         f"{tuple(rewards.shape)} must all be [prompts, K]")
    return k15_terms(logp, logp_old, advantages(rewards), tau).mean()


def advantages(rewards: torch.Tensor) -> torch.Tensor:
    """r_i − r̄ per prompt: `rewards` [P, K] → [P, K] (K1.5's baseline: the mean of the K rewards)."""
    return rewards - rewards.mean(dim=1, keepdim=True)


def k15_terms(logp: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor, tau: float) -> torch.Tensor:
    """Each response's squared residual (adv − τ·(log π_θ − log π_old))², any shape: with the
    advantages computed per prompt first, the loss is a mean over responses, so it splits over
    micro-batches and ranks exactly."""
    return (adv - tau * (logp - logp_old.detach())).pow(2)


def budget_penalty(rewards: list[float], truncated: list[bool], penalty: float) -> list[float]:
    """Budget control: a response cut at its token budget gets `penalty` as its reward (K2)."""
    return [penalty if cut else r for r, cut in zip(rewards, truncated)]


def length_penalty(lengths: list[int], correct: list[bool]) -> list[float]:
    """K1.5's length reward for one prompt's K responses: λ_i = 0.5 − (len_i − min)/(max − min)
    (0 when all lengths are equal); λ_i for a correct response, min(0, λ_i) for a wrong one."""
    lo, hi = min(lengths), max(lengths)
    if hi == lo:
        return [0.0] * len(lengths)
    lam = [0.5 - (n - lo) / (hi - lo) for n in lengths]
    return [x if ok else min(0.0, x) for x, ok in zip(lam, correct)]


def temperature(step: int, steps: int, start: float, end: float, shape: str = "linear") -> float:
    """Sampling temperature at `step` of `steps`: `start` at step 0, `end` at the last step.
    Shapes: linear, cosine (slow–fast–slow), exponential (geometric from start to end), constant."""
    if shape == "constant" or steps <= 1:
        return start
    f = min(max(step / (steps - 1), 0.0), 1.0)
    if shape == "linear":
        return start + (end - start) * f
    if shape == "cosine":
        return end + (start - end) * 0.5 * (1 + math.cos(math.pi * f))
    if shape == "exponential":
        if start <= 0 or end <= 0:
            raise ValueError("temperature: the exponential shape needs positive start and end")
        return start * (end / start) ** f
    raise ValueError(f"temperature: unknown shape {shape!r} (linear, cosine, exponential, constant)")


def response_logprobs(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ over response tokens of log p(token): `logits` [B, T, V] from the model on `ids` [B, T];
    `mask` [B, T] marks the response tokens (position t is predicted by logits at t − 1)."""
    lp = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return (lp * mask[:, 1:].to(lp.dtype)).sum(dim=1)
