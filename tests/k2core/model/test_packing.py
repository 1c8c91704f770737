"""Packed sequences (segment_ids): several conversations in one row, attention confined to each and
positions restarting — each conversation's logits and loss are what they are alone, to fp32
tolerance (the SFT stage packs conversations this way)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from k2core.model import ModelConfig
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


def test_positions_continue_after_a_shared_prefix():
    seg = torch.tensor([[0, 0, 0, 1, 1, 2, 2, -1], [0, 0, 1, 1, 1, 1, 1, 1]])
    assert segment_positions(seg, torch.tensor([3, 0])).tolist() == [[0, 1, 2, 3, 4, 3, 4, 0],
                                                                    [0, 1, 0, 1, 2, 3, 4, 5]]


def test_conversations_sharing_a_prefix_compute_what_they_compute_alone():
    """One copy of a shared prefix (system prompt + tool declarations in SFT), then suffixes that
    each attend to it: every suffix's logits, the loss and the gradients equal those of the
    conversations (prefix + suffix) run one by one."""
    torch.manual_seed(0)
    model = random_model(small_config(vocab_size=128)).float().train()
    prefix = torch.randint(0, 128, (13,))
    suffixes = [torch.randint(0, 128, (n,)) for n in (6, 9, 4)]
    P = len(prefix)
    row = torch.cat([prefix, *suffixes, torch.zeros(3, dtype=torch.long)])[None]
    seg = torch.cat([torch.zeros(P, dtype=torch.long)] + [torch.full((len(x),), i + 1) for i, x in enumerate(suffixes)]
                    + [torch.full((3,), -1)])[None]
    labels = torch.full_like(row, -100)
    starts = (P + torch.cumsum(torch.tensor([0] + [len(x) for x in suffixes[:-1]]), 0)).tolist()
    for s, x in zip(starts, suffixes):
        labels[0, s + 1:s + len(x)] = x[1:]              # each suffix's tokens after its first are trained
    model.zero_grad()
    out = model(row, labels=labels, segment_ids=seg, prefix_lens=torch.tensor([P]), want_max_logits=True)
    out.loss.backward()
    shared_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    total, count = 0.0, 0
    for s, x in zip(starts, suffixes):
        conv = torch.cat([prefix, x])[None]
        lab = torch.full_like(conv, -100)
        lab[0, P + 1:] = x[1:]
        alone = model(conv, want_max_logits=True)
        torch.testing.assert_close(out.logits[0, s:s + len(x)], alone.logits[0, P:], atol=2e-5, rtol=1e-5)
        nll = F.cross_entropy(alone.logits[0, :-1].float(), lab[0, 1:], ignore_index=-100, reduction="sum")
        total, count = total + nll, count + len(x) - 1
    (total / count).backward()
    assert torch.allclose(out.loss, total / count, atol=1e-5)
    for n, g in shared_grads.items():
        torch.testing.assert_close(g, dict(model.named_parameters())[n].grad, atol=2e-5, rtol=1e-4, msg=n)


def test_compiled_model_is_not_recompiled_for_each_packing():
    """Under torch.compile (as the trainer runs on GPUs) a new batch with other segment boundaries
    reuses the compiled graphs: the per-span attention runs eagerly instead of being specialised on
    each batch's spans. (Counted with dynamo's frame counter; eager backend, so no C++ build; dense
    layers: CPU grouped_mm takes only bf16 under fake tensors.)"""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = random_model(ModelConfig.preset("tiny", num_hidden_layers=2, first_k_dense_replace=2,
                                            vocab_size=128)).float().train()
    counter = CompileCounter()
    net = torch.compile(model, backend=counter)
    frames = []
    for lengths in ([7, 11, 5, 9], [3, 29], [10, 10, 10, 2], [1, 4, 4, 4, 4, 4, 4, 7]):
        seg = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])[None]
        ids = torch.randint(0, 128, (1, 32))
        out = net(ids, labels=ids, segment_ids=seg, want_max_logits=True)
        out.loss.backward()
        frames.append(counter.frame_count)
    assert frames[1:] == [frames[0]] * 3, frames
    torch._dynamo.reset()


@pytest.mark.gpu
def test_packed_attention_on_cuda_matches_each_span_in_fp32():
    """CUDA path (one variable-length flash call over all spans, bf16): each span's output is its own
    causal attention computed in fp32 — nothing leaks across segments; QK-Clip's max logit is the
    largest within-span logit; gradients flow; the compiled model trains on packed rows."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from k2core.model.k2 import MLA, segment_spans

    torch.manual_seed(0)
    cfg = small_config(vocab_size=128)
    mla = MLA(cfg).cuda()
    lengths = [1, 37, 200, 5, 64, 1, 12]                     # 320 tokens per row
    seg = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)]).cuda()
    seg = torch.stack([seg, seg.flip(0)])
    B, N, T = 2, cfg.num_attention_heads, len(seg[0])
    q = torch.randn(B, N, T, cfg.qk_head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(B, N, T, cfg.qk_head_dim, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(B, N, T, cfg.v_head_dim, device="cuda", dtype=torch.bfloat16)
    out, max_logit = mla._packed(q, k, v, seg, True)
    ref = torch.zeros(B, N, T, cfg.v_head_dim, device="cuda")
    ref_max = torch.full((N,), float("-inf"), device="cuda")
    for b, a, e in segment_spans(seg):
        s = (q[b, :, a:e].float() @ k[b, :, a:e].float().transpose(-1, -2)) * mla.scale
        s = s.masked_fill(~torch.ones(e - a, e - a, dtype=torch.bool, device="cuda").tril(), float("-inf"))
        ref[b, :, a:e] = s.softmax(-1) @ v[b, :, a:e].float()
        ref_max = torch.maximum(ref_max, s.amax(dim=(-1, -2)))
    assert (out.float() - ref).abs().max().item() < 3e-2
    torch.testing.assert_close(max_logit.float(), ref_max, atol=0.05, rtol=0.01)
    out.float().sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    model = random_model(cfg).cuda().train()
    ids = torch.randint(0, 128, (B, T), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = torch.compile(model)(ids, labels=ids, segment_ids=seg, want_max_logits=True).loss
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
