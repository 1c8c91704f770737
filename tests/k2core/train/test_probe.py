"""The context probe: a model that ignores its context scores as its control does (chance); a
model that copies from far back scores on the repeat and not on the control."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from k2core.config import ProbeConfig
from k2core.errors import K2Error
from k2core.train import probe as P

V = 512


def _stream(n=6000):
    return np.random.default_rng(1).integers(20, V, size=n)


def _bigram(ids):            # logits from the current token alone: blind to the context
    g = torch.Generator().manual_seed(0)
    table = torch.randn(V, V, generator=g)
    return table[ids]


def _copier(ids):            # an induction head: the token that followed the last earlier occurrence of
    B, L = ids.shape         # the current two tokens
    out = torch.full((B, L, V), -10.0)
    for b in range(B):
        last: dict[tuple[int, int], int] = {}
        for t in range(1, L):
            cur = (int(ids[b, t - 1]), int(ids[b, t]))
            if cur in last:
                out[b, t, int(ids[b, last[cur] + 1])] = 10.0
            last[cur] = t
    return out


def test_probe_places_the_repeat_far_back():
    cfg = ProbeConfig(sequences=6, length=1400, distance=1000)
    p = P.build(_stream(), cfg, V, 20, "test data")
    assert p.far.shape == (6, 1400)
    assert int((p.repeat[:, 0] - p.first[:, -1]).min()) >= 1000
    assert torch.equal(p.far.gather(1, p.repeat), p.values) and torch.equal(p.far.gather(1, p.first), p.values)
    assert not torch.equal(p.control.gather(1, p.first), p.values)          # the control's first value differs
    assert torch.equal(p.near.gather(1, p.near_repeat), p.values)


def test_a_model_blind_to_context_scores_at_chance_and_a_copier_far_above():
    cfg = ProbeConfig(sequences=8, length=1300, distance=1000, key_len=2, value_len=4)
    p = P.build(_stream(), cfg, V, 20, "test data")
    blind = P.run(_bigram, p)
    assert blind["probe_copy_accuracy"] == pytest.approx(blind["probe_control_accuracy"], abs=0.1)
    assert blind["probe_copy_accuracy"] <= 0.1 and abs(blind["probe_copy_gain_nats"]) < 0.5
    copier = P.run(_copier, p)
    assert copier["probe_copy_accuracy"] >= 0.9 and copier["probe_near_copy_accuracy"] >= 0.9
    assert copier["probe_control_accuracy"] <= 0.2 and copier["probe_copy_gain_nats"] > 5


def test_probe_errors_name_the_setting():
    with pytest.raises(K2Error, match="probe.length"):
        P.build(_stream(500), ProbeConfig(length=1536), V, 20, "the validation split")
    with pytest.raises(K2Error, match="probe.distance"):
        P.build(_stream(), ProbeConfig(length=600, distance=1024), V, 20, "x")
