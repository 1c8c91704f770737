"""K1.5's objective through the shared loop: split over micro-batches of unequal sizes it gives the
loss and gradient of k15_loss on the whole batch, and MuonClip steps on it raise the log-probability
of the better response relative to the worse (π_old reset each iteration, as K1.5 does)."""
from __future__ import annotations

import pytest
import torch

from k2core.rl.loss import advantages, k15_loss, response_logprobs
from k2core.rl.train import K15Objective


def _model():
    from k2core.config import PretrainConfig
    from k2core.train.loop import build_model

    return build_model(PretrainConfig(preset="tiny", model={"vocab_size": 64}, seed=2), None, torch.device("cpu"))


def _responses(g):
    """2 prompts x K = 3 responses: prompt tokens then 4 response tokens, right-padded to 12."""
    ids = torch.randint(1, 64, (6, 12), generator=g)
    mask = torch.zeros(6, 12, dtype=torch.long)
    for i, (p, n) in enumerate([(5, 4), (5, 3), (5, 4), (6, 4), (6, 2), (6, 4)]):
        mask[i, p:p + n] = 1
    return ids, mask


def test_k15_objective_split_over_micro_batches_equals_the_whole_batch():
    from k2core.train.loop import autocast, forward_backward, token_weights

    g = torch.Generator().manual_seed(0)
    ids, mask = _responses(g)
    rewards = torch.tensor([[1.0, 0.0, 0.5], [0.0, 0.0, 1.0]])
    a, b = _model(), _model()
    with torch.no_grad():
        old = response_logprobs(a(ids).logits, ids, mask) - 0.05          # pi_old a little off the current policy
    whole = k15_loss(response_logprobs(b(ids).logits, ids, mask).view(2, 3), old.view(2, 3), rewards, tau=0.3)
    whole.backward()
    adv = advantages(rewards).flatten()
    obj = K15Objective(tau=0.3)
    micro = [{"input_ids": ids[s], "response_mask": mask[s], "logp_old": old[s], "advantage": adv[s]}
             for s in (slice(0, 5), slice(5, 6))]                          # 5 + 1 responses
    w = token_weights(micro, 1, torch.device("cpu"), obj)
    assert [float(x) for x in w] == pytest.approx([10 / 6, 2 / 6])
    got = sum(forward_backward(a, m, autocast(torch.device("cpu")), 2, wi, obj)[0] for m, wi in zip(micro, w)) / 2
    assert float(got) == pytest.approx(float(whole.detach()), rel=1e-5)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-7, msg=name)


def test_k15_steps_prefer_the_rewarded_response():
    from k2core.optim.config import OptimConfig
    from k2core.train.loop import autocast, train_step

    g = torch.Generator().manual_seed(1)
    ids, mask = _responses(g)
    rewards = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    model = _model()
    opt = OptimConfig(lr=0.02).build(model)
    obj = K15Objective(tau=0.5)

    def gap():
        with torch.no_grad():
            lp = response_logprobs(model(ids).logits, ids, mask).view(2, 3)
        return float((lp[0, 0] - lp[0, 1:].mean()) + (lp[1, 1] - lp[1, [0, 2]].mean())), lp.flatten()

    start, _ = gap()
    for _ in range(8):
        _, old = gap()                                                      # pi_old = the policy of this iteration
        batch = {"input_ids": ids, "response_mask": mask, "logp_old": old, "advantage": advantages(rewards).flatten()}
        r = train_step(model, opt, [batch], amp=autocast(torch.device("cpu")), grad_clip=1.0,
                       device=torch.device("cpu"), objective=obj)
        assert r.loss >= 0
    end, _ = gap()
    assert end > start + 1.0, (start, end)


def test_ptx_adds_the_language_model_loss():
    g = torch.Generator().manual_seed(2)
    ids, mask = _responses(g)
    ptx = torch.randint(0, 64, (2, 10), generator=g)
    model = _model()
    with torch.no_grad():
        old = response_logprobs(model(ids).logits, ids, mask)
        batch = {"input_ids": ids, "response_mask": mask, "logp_old": old, "advantage": torch.zeros(6), "ptx_ids": ptx}
        rl, _ = K15Objective(tau=0.3).loss(model, batch)
        both, _ = K15Objective(tau=0.3, ptx_weight=0.25).loss(model, batch)
        lm = model(ptx, labels=ptx).loss
    assert float(rl) == pytest.approx(0.0, abs=1e-10)                     # no advantage, pi = pi_old
    assert float(both) == pytest.approx(0.25 * float(lm), rel=1e-6)
