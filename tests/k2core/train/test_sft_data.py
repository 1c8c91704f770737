"""SFT data: untrainable conversations dropped with reasons (never repaired or cut), whole
conversations packed into rows, assistant-only labels, and each packed conversation's loss equal to
its loss alone on a real K2 model."""
from __future__ import annotations

import json
import random

import torch
import torch.nn.functional as F

from k2core.agentic import blueprint as B
from k2core.agentic import tasks as T
from k2core.agentic.domains.bank import Bank
from k2core.data.tokenize import train_tokenizer
from k2core.text import chat
from k2core.text.special_tokens import PAD
from k2core.train.sft_data import encode, pack, screen
from tests.k2core.conftest import random_model, small_config


def conversations(n=6):
    db = Bank.make_db(0, 10)
    rng, out = random.Random(0), []
    while len(out) < n:
        v = T.verify(Bank, db, Bank.propose(db, rng))
        if v.ok:
            conv = B.build(Bank, db, T.to_task(Bank, v, f"b{len(out)}"), seed=len(out))
            out.append((conv["messages"], conv["tools"]))
    return out


def test_screen_names_each_reason():
    msgs, tools = conversations(1)[0]
    assert screen(msgs, tools) is None
    call = next(i for i, m in enumerate(msgs) if m.get("tool_calls"))
    bad_args = json.loads(json.dumps(msgs))
    bad_args[call]["tool_calls"][0]["function"]["arguments"] = "{oops"
    undeclared = json.loads(json.dumps(msgs))
    undeclared[call]["tool_calls"][0]["function"]["name"] = "launch_rocket"
    assert screen(bad_args, tools)[0] == "bad_arguments"
    assert screen(undeclared, tools)[0] == "undeclared_tool"
    assert screen(msgs + [{"role": "robot", "content": "x"}], tools)[0] == "unknown_role"
    assert screen(msgs[:2] + [{"role": "assistant", "content": "  "}], tools)[0] == "empty_assistant"
    assert screen(msgs[:2], tools)[0] == "no_assistant"
    assert screen(msgs[:call + 1] + [msgs[-2]], tools)[0] == "malformed"        # a call never answered


def test_pack_keeps_conversations_whole_and_their_losses():
    convs = conversations(6)
    texts = [chat.render(m, t) for m, t in convs]
    tok = train_tokenizer(texts * 3, vocab_size=600, min_frequency=1)
    lengths = [len(chat.encode(tok, m, t)[0]) for m, t in convs]
    seq_len = 2 * max(lengths) + 10
    long = ([{"role": "user", "content": "word " * (3 * seq_len)}, {"role": "assistant", "content": "ok"}], None)
    bad = (convs[1][0][:2], convs[1][1])
    kept, dropped = encode(tok, [*convs, long, bad], seq_len)
    assert [(d["index"], d["reason"]) for d in dropped] == [(6, "too_long"), (7, "no_assistant")]     # not cut
    assert len(kept) == 6
    p = pack(kept, seq_len, tok.token_to_id(PAD))
    assert len(p.input_ids) <= 4 and all(len(r) == seq_len for r in p.input_ids)          # packed, two or more a row
    for e in kept:
        r, off = p.placement[e.index]
        assert p.input_ids[r][off:off + len(e.ids)] == e.ids
        assert sum(x != -100 for x in p.labels[r][off:off + len(e.ids)]) == sum(e.mask) > 0
    model = random_model(small_config(vocab_size=tok.get_vocab_size(), max_position_embeddings=seq_len)).float().eval()
    with torch.no_grad():
        ids, labels, seg = (torch.tensor(x) for x in (p.input_ids, p.labels, p.segment_ids))
        logits = model(ids, segment_ids=seg).logits
        for e in kept:
            r, off = p.placement[e.index]
            n = len(e.ids)
            packed = F.cross_entropy(logits[r, off:off + n - 1], labels[r, off + 1:off + n], ignore_index=-100,
                                     reduction="sum")
            alone_logits = model(torch.tensor([e.ids])).logits[0]
            lab = torch.tensor([t if m else -100 for t, m in zip(e.ids, e.mask)])
            alone = F.cross_entropy(alone_logits[:-1], lab[1:], ignore_index=-100, reduction="sum")
            assert torch.allclose(packed, alone, rtol=1e-5, atol=1e-3), (e.index, packed, alone)


def test_shared_prefix_packing_gives_each_conversation_its_loss_alone():
    """Blueprint conversations of one domain open alike (tool declarations + system prompt): packed
    with share_prefix, a row holds that opening once and the rest of each conversation, and each
    conversation's trained tokens get the loss they get alone."""
    from k2core.text.special_tokens import IM_USER

    convs = conversations(6)
    tok = train_tokenizer([chat.render(m, t) for m, t in convs] * 3, vocab_size=600, min_frequency=1)
    kept, _ = encode(tok, convs, 4096)
    seq_len = 3 * max(len(e.ids) for e in kept)
    user = tok.token_to_id(IM_USER)
    plain = pack(kept, seq_len, tok.token_to_id(PAD))
    p = pack(kept, seq_len, tok.token_to_id(PAD), share_prefix=True, user_id=user)
    opening = kept[0].ids.index(user)
    assert all(e.ids[:opening] == kept[0].ids[:opening] for e in kept)          # the same system part
    assert set(p.prefix_lens) == {opening} and len(p.input_ids) < len(plain.input_ids)
    assert p.represented_tokens == sum(len(e.ids) for e in kept)
    assert sum(x != -1 for row in p.segment_ids for x in row) < p.represented_tokens
    assert sorted(x for row in p.labels for x in row if x != -100) == \
        sorted(t for e in kept for t, m in zip(e.ids, e.mask) if m)             # every trained token, once
    model = random_model(small_config(vocab_size=tok.get_vocab_size(), max_position_embeddings=seq_len)).float().eval()
    with torch.no_grad():
        ids, labels, seg = (torch.tensor(x) for x in (p.input_ids, p.labels, p.segment_ids))
        shared = model(ids, labels=labels, segment_ids=seg, prefix_lens=torch.tensor(p.prefix_lens)).loss
        total, count = 0.0, 0
        for e in kept:
            lab = torch.tensor([t if m else -100 for t, m in zip(e.ids, e.mask)])
            logits = model(torch.tensor([e.ids])).logits[0]
            total += F.cross_entropy(logits[:-1], lab[1:], ignore_index=-100, reduction="sum")
            count += int((lab[1:] != -100).sum())
    assert torch.allclose(shared, total / count, rtol=1e-5, atol=1e-5)
