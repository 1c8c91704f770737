"""Packed sequences (segment_ids): several conversations in one row, attention confined to each and
positions restarting — each conversation's logits and loss are what they are alone, to fp32
tolerance (the SFT stage packs conversations this way)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from k2core.model.k2 import segment_positions
from tests.k2core.conftest import random_model, small_config


def test_segment_positions_restart():
    seg = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 2], [5, 5, 5, 5, 5, 5, 5, 5, 5]])
    assert segment_positions(seg).tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3], list(range(9))]


def test_a_packed_conversation_computes_what_it_computes_alone():
    torch.manual_seed(0)
    model = random_model(small_config(vocab_size=128)).float().eval()
    lengths = [7, 11, 5, 9]
    convs = [torch.randint(0, 128, (n,)) for n in lengths]
    packed = torch.cat(convs)[None]
    seg = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])[None]
    labels = packed.clone()
    starts = torch.cumsum(torch.tensor([0] + lengths[:-1]), 0)
    labels[0, starts] = -100                      # nothing predicts the next conversation's first token
    with torch.no_grad():
        out = model(packed, segment_ids=seg)
        pack_losses = F.cross_entropy(out.logits[0, :-1].float(), labels[0, 1:], ignore_index=-100, reduction="none")
        for i, (c, s) in enumerate(zip(convs, starts.tolist())):
            alone = model(c[None]).logits[0]
            torch.testing.assert_close(out.logits[0, s:s + len(c)], alone, atol=2e-5, rtol=1e-5)
            alone_loss = F.cross_entropy(alone[:-1].float(), c[1:], reduction="sum")
            assert torch.allclose(pack_losses[s:s + len(c) - 1].sum(), alone_loss, atol=1e-4), i
        # without the segments the second conversation would see the first: the logits differ
        mixed = model(packed).logits[0, starts[1]:starts[1] + lengths[1]]
        assert (mixed - model(convs[1][None]).logits[0]).abs().max() > 1e-3
    # the mean loss over trained tokens equals the token-weighted mean of the conversations' losses
    with torch.no_grad():
        total = model(packed, labels=labels, segment_ids=seg).loss
    assert torch.allclose(total, pack_losses[labels[0, 1:] != -100].mean(), atol=1e-6)
