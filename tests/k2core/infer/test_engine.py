"""The native engine: greedy equality with transformers, batching, sampling, stops, errors."""
from __future__ import annotations

import pytest
import torch

from k2core.infer import Engine, SamplingParams
from k2core.model.checkpoint import load_checkpoint
from tests.k2core.conftest import random_model, small_config

GREEDY = SamplingParams(max_tokens=24, temperature=0)


@pytest.fixture(scope="module")
def engine():
    return Engine(random_model(small_config(), seed=3))


def prompts(n=4, length=12, seed=0):
    return torch.randint(2, 4096, (n, length), generator=torch.Generator().manual_seed(seed)).tolist()


def test_greedy_equals_transformers_generate(tmp_path, small_ckpt):
    transformers = pytest.importorskip("transformers")
    _, path = small_ckpt
    hf = transformers.DeepseekV3ForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = torch.tensor(prompts())
    ref = hf.generate(ids, max_new_tokens=30, do_sample=False, eos_token_id=None, pad_token_id=0)[:, 12:]
    ours = Engine(load_checkpoint(path)).generate(ids.tolist(), SamplingParams(max_tokens=30, temperature=0))
    assert [g.token_ids for g in ours] == ref.tolist()
    assert all(g.finish_reason == "length" for g in ours)


def test_batched_prompts_of_different_lengths_equal_one_by_one(engine):
    ps = [p[:n] for p, n in zip(prompts(), [3, 12, 7, 1])]
    batched = engine.generate(ps, GREEDY)
    alone = [engine.generate([p], GREEDY)[0] for p in ps]
    assert [g.token_ids for g in batched] == [g.token_ids for g in alone]


def test_cached_decoding_equals_full_recompute(engine):
    p = prompts(1)[0]
    out = engine.generate([p], SamplingParams(max_tokens=10, temperature=0))[0].token_ids
    seq = list(p)
    for _ in range(10):   # no cache: rerun the whole sequence each step
        with torch.no_grad():
            seq.append(int(engine.model(torch.tensor([seq])).logits[0, -1].argmax()))
    assert out == seq[len(p):]


def test_sampling_is_seeded(engine):
    ps = prompts(2)
    params = dict(max_tokens=20, temperature=0.9, top_p=0.9, top_k=40)
    a = engine.generate(ps, SamplingParams(seed=5, **params))
    b = engine.generate(ps, SamplingParams(seed=5, **params))
    c = engine.generate(ps, SamplingParams(seed=6, **params))
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert [g.token_ids for g in a] != [g.token_ids for g in c]
    top1 = engine.generate(ps, SamplingParams(max_tokens=20, temperature=0.7, top_k=1, seed=1))
    assert [g.token_ids for g in top1] == [g.token_ids for g in engine.generate(ps, SamplingParams(max_tokens=20, temperature=0))]


def test_top_p_keeps_the_smallest_nucleus():
    from k2core.infer.engine import sample

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    gen = torch.Generator().manual_seed(0)
    seen = {int(sample(logits, SamplingParams(top_p=0.75), gen)) for _ in range(300)}
    assert seen == {0, 1}        # 0.5 + 0.3 reaches 0.75; 2 and 3 are never drawn
    seen = {int(sample(logits, SamplingParams(top_k=3), gen)) for _ in range(300)}
    assert seen == {0, 1, 2}


def test_stop_tokens_end_a_row_and_are_kept(engine):
    p = prompts(1)[0]
    free = engine.generate([p], GREEDY)[0].token_ids
    stop = free[5]
    first = free.index(stop)
    g = engine.generate([p], SamplingParams(max_tokens=24, temperature=0, stop_token_ids=[stop]))[0]
    assert g.token_ids == free[: first + 1] and g.finish_reason == "stop"


def test_bad_requests_are_refused_with_reasons(engine):
    with pytest.raises(ValueError, match=r"prompt 1 has token ids outside the vocabulary \[0, 4096\): \[5000\]"):
        engine.generate([[1, 2], [5000]], GREEDY)
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        engine.generate([[]], GREEDY)
    with pytest.raises(ValueError, match="exceeds max_position_embeddings"):
        engine.generate([[1] * 1000], SamplingParams(max_tokens=100))
    with pytest.raises(ValueError, match="top_p must be in"):
        SamplingParams(top_p=0)


def test_length_buckets_group_similar_prompts_and_keep_every_index():
    from k2core.infer.engine import length_buckets

    lengths = [1000, 120, 980, 130, 990, 125, 2000]
    batches = length_buckets(lengths, max_batch=8, max_padding=0.15)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert [sorted(b) for b in batches] == [[6], [0, 2, 4], [1, 3, 5]]       # longest first, similar together
    for b in batches:                                                        # padding within the bound
        assert max(lengths[i] for i in b) * len(b) <= 1.15 * sum(lengths[i] for i in b)
    assert length_buckets([5] * 10, max_batch=4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
