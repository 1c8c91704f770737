"""The shared training loop: resumable checkpoints (sha256-checked, pruned, a corrupt one skipped),
callbacks from K2_TRAIN_CALLBACKS, one train step against the same step written out by hand."""
from __future__ import annotations

import pytest
import torch

from k2core.train.loop import TrainingFailed, env_callbacks, load_resume, save_resume


def test_corrupt_checkpoint_falls_back_to_the_previous_one(tmp_path):
    save_resume(tmp_path, 4, {"step": 4}, keep=3)
    newest = save_resume(tmp_path, 8, {"step": 8}, keep=3)
    newest.write_bytes(newest.read_bytes()[:10])                     # truncated
    logs = []
    state, path = load_resume(tmp_path, logs.append)
    assert state["step"] == 4 and path.name == "step-0000004.pt"
    assert str(newest) in logs[0] and "sha256" in logs[0]
    save_resume(tmp_path, 12, {"step": 12}, keep=1)                  # keep prunes older ones
    assert sorted(p.name for p in tmp_path.glob("step-*.pt")) == ["step-0000012.pt"]


def test_callbacks_load_from_the_environment_and_a_bad_one_is_named(monkeypatch):
    from tests.k2core.train.callbacks import CrashAfter

    monkeypatch.setenv("K2_TRAIN_CALLBACKS", "tests.k2core.train.callbacks:crash_after_6")
    [cb] = env_callbacks()
    assert isinstance(cb, CrashAfter) and cb.step == 6
    monkeypatch.setenv("K2_TRAIN_CALLBACKS", "tests.k2core.train.callbacks:nothing_here")
    with pytest.raises(TrainingFailed, match="K2_TRAIN_CALLBACKS: cannot load 'tests.k2core.train.callbacks:nothing_here'"):
        env_callbacks()


def test_train_step_equals_the_step_written_out(tmp_path):
    """Two micro-batches through train_step == forward/backward each (loss / 2), clip, MuonClip with
    the max logits' elementwise max, routing-bias update — bit for bit on CPU."""
    from k2core.optim.config import OptimConfig
    from k2core.train.loop import autocast, build_model, train_step
    from k2core.config import PretrainConfig

    cfg = PretrainConfig(preset="tiny", model={"vocab_size": 64}, seed=3)
    device = torch.device("cpu")
    a, b = build_model(cfg, None, device), build_model(cfg, None, device)
    opt_a, opt_b = OptimConfig(lr=0.01, qk_clip_tau=0.08).build(a), OptimConfig(lr=0.01, qk_clip_tau=0.08).build(b)
    g = torch.Generator().manual_seed(0)
    xs = [torch.randint(0, 64, (2, 16), generator=g) for _ in range(2)]
    r = train_step(a, opt_a, [{"input_ids": x, "labels": x} for x in xs], amp=autocast(device), grad_clip=0.5,
                   device=device, grad_accum=2)
    losses, S = [], None
    for x in xs:
        out = b(x, labels=x, want_max_logits=True)
        (out.loss / 2).backward()
        losses.append(out.loss.detach())
        S = out.max_logits if S is None else torch.maximum(S, out.max_logits)
    gnorm = torch.nn.utils.clip_grad_norm_(b.parameters(), 0.5)
    stats = opt_b.step(max_logits=S)
    b.update_routing_bias()
    assert r.loss == float(losses[0] + losses[1]) / 2 and r.grad_norm == float(gnorm)
    assert r.stats.clipped_heads == stats.clipped_heads > 0               # tau 0.08: QK-Clip acted
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


def test_masked_micro_batches_give_the_global_token_mean():
    """Micro-batches holding different numbers of labelled tokens (SFT's assistant-only loss):
    the step's loss and gradient are the per-token mean over the whole batch, as one forward over
    all rows gives — not the mean of the micro-batches' means."""
    from k2core.config import PretrainConfig
    from k2core.train.loop import autocast, build_model, forward_backward, token_weights

    cfg = PretrainConfig(preset="tiny", model={"vocab_size": 64, "seq_aux_loss_alpha": 0.0}, seed=3)
    device = torch.device("cpu")
    a, b = build_model(cfg, None, device), build_model(cfg, None, device)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 64, (2, 16), generator=g)
    y = x.clone()
    y[0, :13] = -100                     # row 0: 3 labelled (predicted) tokens, row 1: 15
    micro = [{"input_ids": x[:1], "labels": y[:1]}, {"input_ids": x[1:], "labels": y[1:]}]
    w = token_weights(micro, 1, device)
    assert [float(v) for v in w] == pytest.approx([2 * 3 / 18, 2 * 15 / 18])
    for p in b.parameters():
        p.requires_grad_(True)
    whole = b(x, labels=y).loss
    whole.backward()
    got = sum(forward_backward(a, m, autocast(device), 2, wi)[0] for m, wi in zip(micro, w)) / 2
    assert abs(float(got) - float(whole.detach())) < 1e-6
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=name)
    assert [float(v) for v in token_weights([{"input_ids": x, "labels": x}] * 3, 1, device)] == [1.0, 1.0, 1.0]
