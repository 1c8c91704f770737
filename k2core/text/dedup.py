"""Exact and fuzzy (MinHash-LSH) deduplication across the whole corpus (K2_REFERENCE.md §3).

Per document (in the Dask workers): an exact key — a 64-bit hash of the text lowercased, stripped
of punctuation, whitespace collapsed — and `bands` LSH band keys from a MinHash signature of word
n-gram shingles (`bands × rows` hash functions). On the driver: documents sharing an exact key or
any band key are joined (union-find), the connected components are the duplicate clusters, and
each cluster keeps its smallest document id — the same choice whatever the sharding.
Signatures use only stable hashes (CRC-32 of words, fixed multipliers), so any worker on any
machine computes the same keys.
"""
from __future__ import annotations

import hashlib
import re
import zlib
from dataclasses import dataclass

import numpy as np

_WORD = re.compile(r"\w+")
_MERSENNE = np.uint64((1 << 61) - 1)
_MIX = np.uint64(0x9E3779B97F4A7C15)


class _CrcCache(dict):
    """word -> zlib.crc32 of its UTF-8 bytes, computed once per distinct word (words repeat: a hit
    stays in C); emptied at `max_size` entries."""

    max_size = 1 << 20

    def __missing__(self, word: str) -> int:
        if len(self) >= self.max_size:
            self.clear()
        h = self[word] = zlib.crc32(word.encode())
        return h


_CRC = _CrcCache()


@dataclass(frozen=True)
class MinHasher:
    ngram: int = 5
    bands: int = 14
    rows: int = 8
    seed: int = 1

    def __post_init__(self):
        rng = np.random.default_rng(self.seed)
        n = self.bands * self.rows
        object.__setattr__(self, "_a", rng.integers(1, 1 << 61, n, dtype=np.uint64) | np.uint64(1))
        object.__setattr__(self, "_b", rng.integers(0, 1 << 61, n, dtype=np.uint64))

    def words(self, text: str) -> list[str]:
        return _WORD.findall(text.lower())

    def shingles(self, text: str) -> np.ndarray:
        """One 64-bit hash per word n-gram (a shorter text is one shingle)."""
        ws = self.words(text)
        if not ws:
            return np.zeros(1, np.uint64)
        h = np.fromiter(map(_CRC.__getitem__, ws), np.uint64, len(ws))
        n = min(self.ngram, len(ws))
        m = len(ws) - n + 1
        keys = h[:m].copy()
        with np.errstate(over="ignore"):
            for k in range(1, n):
                keys = keys * _MIX + h[k:k + m]
        return np.unique(keys)

    def signature(self, text: str) -> np.ndarray:
        sh = self.shingles(text)
        with np.errstate(over="ignore"):
            hashed = (sh[:, None] * self._a[None, :] + self._b[None, :]) % _MERSENNE
        return hashed.min(axis=0)

    def band_keys(self, text: str) -> np.ndarray:
        """`bands` 64-bit keys; two documents collide in a band iff its `rows` minima all agree."""
        sig = self.signature(text).reshape(self.bands, self.rows)
        keys = np.zeros(self.bands, np.uint64)
        with np.errstate(over="ignore"):
            for r in range(self.rows):
                keys = keys * _MIX + sig[:, r]
            keys += np.arange(self.bands, dtype=np.uint64) * _MERSENNE   # keys of different bands never meet
        return keys


_PUNCT_WS = re.compile(r"[\W_]+")


def exact_key(text: str) -> int:
    norm = _PUNCT_WS.sub(" ", text.lower()).strip()
    return int.from_bytes(hashlib.blake2b(norm.encode(), digest_size=8).digest(), "little")


def clusters(ids: list[str], exact: np.ndarray, bands: np.ndarray | None) -> dict[int, tuple[int, str]]:
    """Duplicates to drop: {row: (kept row, "exact_duplicate" | "near_duplicate")}.

    `exact` [N] uint64, `bands` [N, B] uint64 (or None: exact only). Rows sharing a key are
    joined; each component keeps its smallest id."""
    n = len(ids)
    parent = np.arange(n)

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def join_equal(keys: np.ndarray) -> list[tuple[int, int]]:
        order = np.argsort(keys, kind="stable")
        same = np.nonzero(keys[order][1:] == keys[order][:-1])[0]
        return list(zip(order[same].tolist(), order[same + 1].tolist()))

    exact_pairs = join_equal(exact)
    near_pairs = [p for b in range(bands.shape[1]) for p in join_equal(bands[:, b])] if bands is not None else []
    for a, b in exact_pairs + near_pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    comps: dict[int, list[int]] = {}
    for i in range(n):
        comps.setdefault(find(i), []).append(i)
    exact_set = {i for pair in exact_pairs for i in pair}
    out: dict[int, tuple[int, str]] = {}
    for members in comps.values():
        if len(members) == 1:
            continue
        keep = min(members, key=lambda i: ids[i])
        for i in members:
            if i != keep:
                same_text = i in exact_set and exact[i] == exact[keep]
                out[i] = (keep, "exact_duplicate" if same_text else "near_duplicate")
    return out
