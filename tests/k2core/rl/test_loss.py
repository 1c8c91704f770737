"""K1.5's loss against a hand-computed example, its gradient, budget and length penalties, and the
temperature schedule."""
from __future__ import annotations

import math

import pytest
import torch

from k2core.rl.loss import budget_penalty, k15_loss, length_penalty, response_logprobs, temperature


def test_k15_loss_hand_computed():
    # one prompt, K = 3: rewards 1, 0, 0 -> mean 1/3, advantages 2/3, -1/3, -1/3
    # log-ratios 0.2, -0.1, 0.0 and tau = 0.5 -> residuals 2/3 - 0.1, -1/3 + 0.05, -1/3
    logp = torch.tensor([[-1.0, -2.1, -3.0]], requires_grad=True)
    old = torch.tensor([[-1.2, -2.0, -3.0]])
    r = torch.tensor([[1.0, 0.0, 0.0]])
    want = ((2 / 3 - 0.1) ** 2 + (-1 / 3 + 0.05) ** 2 + (1 / 3) ** 2) / 3
    loss = k15_loss(logp, old, r, tau=0.5)
    assert loss.item() == pytest.approx(want, rel=1e-6)
    loss.backward()
    # dL/dlogp_i = -2 tau (residual_i) / 3
    res = torch.tensor([2 / 3 - 0.1, -1 / 3 + 0.05, -1 / 3])
    torch.testing.assert_close(logp.grad[0], -2 * 0.5 * res / 3)
    # the better-than-average response's log-probability is pushed up, the others down
    assert logp.grad[0, 0] < 0 < logp.grad[0, 1]


def test_k15_loss_is_zero_at_the_fixed_point_and_checks_shapes():
    r = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    old = torch.zeros(2, 2)
    logp = old + (r - r.mean(1, keepdim=True)) / 0.1      # log-ratio = advantage / tau
    assert k15_loss(logp, old, r, tau=0.1).item() == pytest.approx(0.0, abs=1e-10)
    with pytest.raises(ValueError, match=r"\[prompts, K\]"):
        k15_loss(torch.zeros(4), torch.zeros(4), torch.zeros(4), 0.1)


def test_budget_and_length_penalties():
    assert budget_penalty([1.0, 0.5, 0.0], [False, True, True], -0.5) == [1.0, -0.5, -0.5]
    # lengths 10, 20, 30: lambda 0.5, 0, -0.5; the wrong short answer earns nothing, the long wrong one loses
    assert length_penalty([10, 20, 30], [True, False, False]) == [0.5, 0.0, -0.5]
    assert length_penalty([10, 30], [False, True]) == [0.0, -0.5]
    assert length_penalty([7, 7], [True, False]) == [0.0, 0.0]


def test_temperature_schedules():
    assert temperature(0, 11, 1.2, 0.6) == pytest.approx(1.2)
    assert temperature(10, 11, 1.2, 0.6) == pytest.approx(0.6)
    assert temperature(5, 11, 1.2, 0.6) == pytest.approx(0.9)
    assert temperature(5, 11, 1.2, 0.6, "cosine") == pytest.approx(0.9)
    assert temperature(2, 11, 1.2, 0.6, "cosine") > temperature(2, 11, 1.2, 0.6)     # slow start
    assert temperature(5, 11, 1.0, 0.25, "exponential") == pytest.approx(0.5)
    assert temperature(3, 11, 0.7, 0.1, "constant") == 0.7
    with pytest.raises(ValueError, match="unknown shape 'zigzag'"):
        temperature(1, 4, 1.0, 0.5, "zigzag")


def test_response_logprobs_sums_the_masked_tokens():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    ids = torch.randint(0, 7, (2, 5))
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]])
    lp = torch.log_softmax(logits, -1)
    want = [sum(lp[b, t - 1, ids[b, t]].item() for t in range(1, 5) if mask[b, t]) for b in range(2)]
    got = response_logprobs(logits, ids, mask)
    assert got.tolist() == pytest.approx(want, rel=1e-6)
    assert math.isfinite(got.sum().item())
