"""Exact and MinHash-LSH dedup: planted near-duplicates found, unrelated documents left alone."""
from __future__ import annotations

import random

import numpy as np

from k2core.text.dedup import MinHasher, clusters, exact_key


def shingle_jaccard(a: str, b: str, n: int = 5) -> float:
    sa = set(zip(*[a.split()[i:] for i in range(n)]))
    sb = set(zip(*[b.split()[i:] for i in range(n)]))
    return len(sa & sb) / len(sa | sb)


def planted(n_base=300, n_dup=100, seed=0):
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(3000)]
    base = [" ".join(rng.choice(vocab) for _ in range(rng.randint(150, 400))) for _ in range(n_base)]
    dups = []
    for i in range(n_dup):
        w, target = base[i].split(), rng.uniform(0.82, 0.98)
        while shingle_jaccard(base[i], " ".join(w)) >= target:
            w[rng.randrange(len(w))] = rng.choice(vocab)
        dups.append(" ".join(w))
    return base, dups


def test_planted_near_duplicates_are_found_without_false_positives():
    base, dups = planted()
    texts = base + dups
    ids = [f"{i:05d}" for i in range(len(texts))]
    mh = MinHasher()
    drop = clusters(ids, np.array([exact_key(t) for t in texts], np.uint64),
                    np.stack([mh.band_keys(t) for t in texts]))
    found = sum((300 + i) in drop for i in range(100))
    assert found >= 95
    assert all(drop[300 + i] == (i, "near_duplicate") for i in range(100) if 300 + i in drop)  # smaller id kept
    assert not any(100 <= r < 300 for r in drop)                                  # unrelated docs untouched


def test_exact_duplicates_up_to_case_and_punctuation_and_a_deterministic_keeper():
    texts = ["Hello, World! The same text.", "hello world the same text", "something else entirely here"]
    ids = ["b", "a", "c"]
    drop = clusters(ids, np.array([exact_key(t) for t in texts], np.uint64), None)
    assert drop == {0: (1, "exact_duplicate")}          # keeps id "a", whichever row it is in


def test_signatures_are_stable_across_processes():
    import subprocess
    import sys

    code = ("from k2core.text.dedup import MinHasher; "
            "print(MinHasher().band_keys('the quick brown fox jumps over the lazy dog again').tolist())")
    a = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONHASHSEED": "1"})
    b = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONHASHSEED": "2"})
    assert a.stdout == b.stdout and a.stdout.strip()


def test_shingles_equal_the_crc32_of_each_word_n_gram():
    """The cached word hashes give the shingles of the plain definition: CRC-32 of each word's
    UTF-8 bytes, rolled over word 5-grams, deduplicated."""
    import zlib

    import numpy as np

    from k2core.text.dedup import _MIX, MinHasher

    mh = MinHasher()
    text = "Ünïcode words and the same words again, and again: the words of a test text. " * 40
    ws = mh.words(text)
    h = np.array([zlib.crc32(w.encode("utf-8")) for w in ws], np.uint64)
    m = len(ws) - mh.ngram + 1
    keys = h[:m].copy()
    with np.errstate(over="ignore"):
        for k in range(1, mh.ngram):
            keys = keys * _MIX + h[k:k + m]
    assert np.array_equal(mh.shingles(text), np.unique(keys))
    assert np.array_equal(mh.shingles(text), mh.shingles(text))      # the second call hits the cache

