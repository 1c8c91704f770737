"""Document quality filters for `curate` (K2_REFERENCE.md §3): small, composable, each naming its reason.

A filter is a callable ``filter(doc) -> reason | None``; a reason drops the document and is
recorded with it. ``Doc`` carries the text and caches its word tokens (a filter that rewrites the
text — C4's line cleaning — invalidates them). Defaults are the published thresholds:
Gopher quality and repetition (Rae et al. 2021, as datatrove implements them), C4 (Raffel et al.
2020), FineWeb (Penedo et al. 2024).
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import ClassVar

from pydantic import ConfigDict
from pydantic.dataclasses import dataclass as _pydantic_dataclass

import numpy as np

from k2core.text.words import STOP_WORDS, count_sentences, has_alpha, is_symbol, words


# filters are typed, validated configuration too: unknown or ill-typed thresholds fail at load
filter_config = _pydantic_dataclass(config=ConfigDict(extra="forbid"))


@dataclass
class Doc:
    text: str
    domain: str = "prose"
    _words: list[str] | None = field(default=None, repr=False)
    _counts: Counter | None = field(default=None, repr=False)

    @property
    def words(self) -> list[str]:
        if self._words is None:
            self._words = words(self.text)
        return self._words

    @property
    def counts(self) -> dict[str, int]:
        """Each distinct word with its count (statistics computed once per distinct word)."""
        if self._counts is None:
            self._counts = Counter(self.words)
        return self._counts

    def set_text(self, text: str) -> None:
        self.text, self._words, self._counts = text, None, None


# ---------------------------------------------------------------------------- cheap guards
@filter_config
class LengthFilter:
    min_chars: int = 100
    max_chars: int = 1_000_000     # judged before tokenising: a 50 MB document costs nothing
    name: ClassVar[str] = "length"

    def __call__(self, doc: Doc) -> str | None:
        n = len(doc.text)
        if n < self.min_chars:
            return "too_short"
        if n > self.max_chars:
            return "too_long"
        return None


_BAD_CHARS = re.compile("[\ufffd\x00-\x08\x0e-\x1f]")


@filter_config
class BinaryFilter:
    """Text that is mostly decoding debris (U+FFFD, control characters) is not language."""

    max_bad_char_fraction: float = 0.01
    name: ClassVar[str] = "binary"

    def __call__(self, doc: Doc) -> str | None:
        bad = len(_BAD_CHARS.findall(doc.text[:100_000]))
        return "binary_looking" if bad > self.max_bad_char_fraction * min(len(doc.text), 100_000) else None


# a wider list than Gopher's eight: the most frequent English function words
_ENGLISH = frozenset("""the of and to a in is that for it as was with be by on not he this are or his from at
which but have an they you were her she there one all we their has been had would will what if can
when so no said who more about up them some could him into its then two only do may these other than""".split())


_ASCII_LETTER = re.compile("[A-Za-z]")


@filter_config
class EnglishFilter:
    """English heuristic: Latin script, and common English function words among the words."""

    min_latin_fraction: float = 0.8      # of alphabetic characters
    min_function_word_fraction: float = 0.05
    sample_chars: int = 20_000
    name: ClassVar[str] = "english"

    def __call__(self, doc: Doc) -> str | None:
        sample = doc.text[: self.sample_chars]
        if sample.isascii():     # most text: its letters are A-Z / a-z, all Latin (no per-character loop)
            if not _ASCII_LETTER.search(sample):
                return "no_letters"
        else:
            letters = [c for c in sample if c.isalpha()]
            if not letters:
                return "no_letters"
            if sum(c < "\u0250" for c in letters) / len(letters) < self.min_latin_fraction:
                return "non_latin_script"
        toks = [w.lower() for w in (doc.words if len(doc.text) <= self.sample_chars else words(sample))
                if has_alpha(w)]
        if not toks or sum(t in _ENGLISH for t in toks) / len(toks) < self.min_function_word_fraction:
            return "not_english"
        return None


# ---------------------------------------------------------------------------- Gopher
def _lines(text: str) -> list[str]:
    """re.split(r"\n+", text), without the regex: empty strings only at the two ends."""
    if not text:
        return [""]
    lines = [ln for ln in text.split("\n") if ln]
    if text[0] == "\n":
        lines.insert(0, "")
    if text[-1] == "\n":
        lines.append("")
    return lines


def _paragraphs(text: str) -> list[str]:
    """re.split(r"\n{2,}", text.strip()), without the regex: str.split on pairs, then the odd
    newline of a run of three or more is the next part's first character and a run of four or
    more leaves empty parts between."""
    return [p[1:].lstrip("\n") if p[0] == "\n" else p for p in text.strip().split("\n\n") if p] or [""]


def _dup_stats(items: list[str]) -> tuple[int, int]:
    """Items that repeat an earlier one, and their characters (every occurrence after the first)."""
    distinct = set(items)
    return len(items) - len(distinct), sum(map(len, items)) - sum(map(len, distinct))


_MULT = np.uint64(0x9E3779B97F4A7C15)   # odd 64-bit multiplier for rolling n-gram keys


class _Grams:
    """A document's words as ids plus prefix sums of their lengths, for n-gram statistics."""

    def __init__(self, ws: list[str]):
        # a word's id is its string hash (cached on the str object, and the tokenizer hands out
        # the same objects for repeated chunks), 64 bits as the n-gram keys built from it
        self.ws = ws
        self.ids = np.fromiter(map(hash, ws), np.int64, len(ws)).view(np.uint64)
        self._cum: np.ndarray | None = None       # prefix sums of word lengths, built on first need
        self._code_cache: dict[int, np.ndarray] = {}
        self._last_keys: tuple[int, np.ndarray] = (1, self.ids)   # 1-gram keys are the ids
        self._repeats: tuple[int, np.ndarray] | None = None   # (n, positions repeating an earlier n-gram)

    def chars(self, start: np.ndarray | int, n: int):
        """Characters of the words of the n-gram(s) starting at `start`."""
        if isinstance(start, int):
            return sum(map(len, self.ws[start:start + n]))
        if self._cum is None:
            self._cum = np.zeros(len(self.ws) + 1, np.int64)
            np.cumsum(np.fromiter(map(len, self.ws), np.int64, len(self.ws)), out=self._cum[1:])
        return self._cum[start + n] - self._cum[start]

    def _keys(self, n: int) -> np.ndarray:
        """A 64-bit key per n-gram of word ids (wrapping polynomial hash; collisions ~ len²/2⁶⁴),
        extended from the last keys built when they are shorter (one step per extra word)."""
        k, keys = self._last_keys
        if k > n:
            k, keys = 1, self.ids
        with np.errstate(over="ignore"):
            for j in range(k, n):
                m = len(self.ids) - j
                keys = keys[:m] * _MULT + self.ids[j:j + m]
        self._last_keys = (n, keys)
        return keys

    def _codes(self, n: int) -> np.ndarray:
        """n-gram codes numbered by first appearance (hash-based: O(len), no sort)."""
        if n not in self._code_cache:
            import pandas as pd   # lazily: the config imports this module

            self._code_cache[n] = pd.factorize(self._keys(n))[0]
        return self._code_cache[n]

    def unique(self, n: int) -> bool:
        codes = self._codes(n)
        return len(codes) == 0 or int(codes.max()) == len(codes) - 1

    def top_chars(self, n: int) -> int:
        """Characters of the most frequent n-gram (joined by spaces) × its count; ties: the first."""
        codes = self._codes(n)
        counts = np.bincount(codes)
        best_code = int(counts.argmax())          # argmax takes the first: the earliest-appearing
        pos = int(np.argmax(codes == best_code))
        return int((self.chars(pos, n) + n - 1) * counts[best_code])

    def dup_chars(self, n: int, limit: float) -> float:
        """Characters in duplicated n-grams, each repeat skipped past (Gopher's rule).

        Counting every repeat without the skip is an upper bound: when that is within `limit`
        the exact pass is not needed. The exact pass visits only positions whose n-gram occurs
        more than once — the rest can never be a repeat — in order, tracking the skip."""
        if len(self.ids) < n:
            return 0
        if self._repeats is not None and self._repeats[0] < n:
            # an n-gram that repeats an earlier one starts where a shorter one does too: the
            # shorter n-grams' repeat positions, with n words each, bound the count from above
            pos = self._repeats[1]
            if self.chars(pos[pos <= len(self.ids) - n], n).sum() <= limit:
                return 0
        inv = self._codes(n)
        counts = np.bincount(inv)
        if len(counts) == len(inv):
            self._repeats = (n, np.zeros(0, np.int64))
            return 0
        seen_max = np.maximum.accumulate(inv)
        repeat = np.ones(len(inv), bool)          # a first appearance raises the running max
        repeat[0] = False
        repeat[1:] = inv[1:] <= seen_max[:-1]
        self._repeats = (n, np.nonzero(repeat)[0])
        if self.chars(self._repeats[1], n).sum() <= limit:
            return 0       # exact value is ≤ this bound ≤ limit: same decision
        pos = np.nonzero(counts[inv] > 1)[0]
        gram_chars = self.chars(pos, n).tolist()
        added = np.zeros(len(counts), bool).tolist()
        total, skip_until = 0, -1
        for p, k, c in zip(pos.tolist(), inv[pos].tolist(), gram_chars):
            if p < skip_until:
                continue                 # skipped after a repeat: never visited
            if added[k]:
                total += c
                if total > limit:
                    return total         # the decision is made
                skip_until = p + n
            else:
                added[k] = True
        return total


@filter_config
class GopherRepetitionFilter:
    dup_line_frac: float = 0.3
    dup_para_frac: float = 0.3
    dup_line_char_frac: float = 0.2
    dup_para_char_frac: float = 0.2
    top_n_grams: tuple[tuple[int, float], ...] = ((2, 0.20), (3, 0.18), (4, 0.16))
    dup_n_grams: tuple[tuple[int, float], ...] = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))
    name: ClassVar[str] = "gopher_repetition"

    def __call__(self, doc: Doc) -> str | None:
        text = doc.text
        if not text:
            return "empty"
        paras = _paragraphs(text)
        d, c = _dup_stats(paras)
        if d / len(paras) > self.dup_para_frac:
            return "dup_para_frac"
        if c / len(text) > self.dup_para_char_frac:
            return "dup_para_char_frac"
        lines = _lines(text)
        d, c = _dup_stats(lines)
        if d / len(lines) > self.dup_line_frac:
            return "dup_line_frac"
        if c / len(text) > self.dup_line_char_frac:
            return "dup_line_char_frac"
        ws = doc.words
        if not ws:
            return None
        grams = _Grams(ws)
        for n, frac in self.top_n_grams:
            if len(ws) >= n and grams.top_chars(n) / len(text) > frac:
                return f"top_{n}_gram"
        for n, frac in self.dup_n_grams:
            chars = grams.dup_chars(n, frac * len(text))
            if chars / len(text) > frac:
                return f"duplicated_{n}_n_grams"
            if chars == 0 and n == min(k for k, _ in self.dup_n_grams) and grams.unique(n):
                break            # no repeated n-gram means no repeated longer one either
        return None


@lru_cache(maxsize=1 << 18)
def _word_class(w: str) -> tuple[bool, bool]:
    """(every character punctuation / symbol, some character alphabetic) of a word token."""
    return is_symbol(w), has_alpha(w)


@filter_config
class GopherQualityFilter:
    min_doc_words: int = 50
    max_doc_words: int = 100_000
    min_avg_word_length: float = 3
    max_avg_word_length: float = 10
    max_symbol_word_ratio: float = 0.1
    max_bullet_lines_ratio: float = 0.9
    max_ellipsis_lines_ratio: float = 0.3
    min_alpha_words_ratio: float = 0.8
    min_stop_words: int = 2
    name: ClassVar[str] = "gopher_quality"

    def __call__(self, doc: Doc) -> str | None:
        text, counts = doc.text, doc.counts
        n_words = n_chars = n_alpha = 0          # one pass over the distinct words, classes cached
        for w, c in counts.items():
            symbol, alpha = _word_class(w)
            if not symbol:
                n_words += c
                n_chars += len(w) * c
            if alpha:
                n_alpha += c
        if n_words < self.min_doc_words:
            return "gopher_short_doc"
        if n_words > self.max_doc_words:
            return "gopher_long_doc"
        avg = n_chars / n_words
        if avg < self.min_avg_word_length:
            return "gopher_below_avg_threshold"
        if avg > self.max_avg_word_length:
            return "gopher_above_avg_threshold"
        n = len(doc.words)
        if text.count("#") / n > self.max_symbol_word_ratio:
            return "gopher_too_many_hashes"
        if (text.count("...") + text.count("…")) / n > self.max_symbol_word_ratio:
            return "gopher_too_many_ellipsis"
        lines = text.splitlines()
        if sum(s.lstrip().startswith(("•", "-")) for s in lines) / len(lines) > self.max_bullet_lines_ratio:
            return "gopher_too_many_bullets"
        if sum(s.rstrip().endswith(("...", "…")) for s in lines) / len(lines) > self.max_ellipsis_lines_ratio:
            return "gopher_too_many_end_ellipsis"
        if n_alpha / n < self.min_alpha_words_ratio:
            return "gopher_below_alpha_threshold"
        if len(STOP_WORDS.intersection(counts)) < self.min_stop_words:
            return "gopher_enough_stop_words"
        return None


# ---------------------------------------------------------------------------- C4 / FineWeb
_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")


@filter_config
class C4Filter:
    """C4's rules: drop lines (no terminal punctuation, < 3 words, javascript, policy notices,
    a word > 1000 characters) and whole documents (lorem ipsum, a curly bracket, < 5 sentences);
    the kept lines replace the text."""

    min_num_sentences: int = 5
    min_words_per_line: int = 3
    max_word_length: int = 1000
    remove_citations: bool = True
    name: ClassVar[str] = "c4"

    def __call__(self, doc: Doc) -> str | None:
        kept, sentences = [], 0
        for line in doc.text.splitlines():
            line = line.strip()
            ws = line.split()
            if any(len(w) > self.max_word_length for w in ws):
                continue
            if self.remove_citations:
                line = _CITATION.sub("", line)
            if not line.endswith((".", "?", "!", '"', "'")) or line.endswith("..."):
                continue
            if len(ws) < self.min_words_per_line:
                continue
            low = line.lower()
            if "lorem ipsum" in low:
                return "lorem_ipsum"
            if "javascript" in low:
                continue
            if "{" in line:
                return "curly_bracket"
            if any(p in low for p in _POLICY):
                continue
            sentences += count_sentences(words(line))
            kept.append(line)
        if sentences < self.min_num_sentences:
            return "too_few_sentences"
        doc.set_text("\n".join(kept).strip())
        return None


@filter_config
class FineWebFilter:
    line_punct_thr: float = 0.12
    short_line_thr: float = 0.67
    short_line_length: int = 30
    char_duplicates_ratio: float = 0.01
    new_line_ratio: float = 0.3
    name: ClassVar[str] = "fineweb"

    def __call__(self, doc: Doc) -> str | None:
        lines = [ln for ln in doc.text.split("\n") if ln.strip()]
        if not lines:
            return "empty"
        if sum(ln.endswith((".", "!", "?", '"', "'", "…")) for ln in lines) / len(lines) < self.line_punct_thr:
            return "line_punct_ratio"
        if sum(len(ln) <= self.short_line_length for ln in lines) / len(lines) > self.short_line_thr:
            return "short_line_ratio"
        if _dup_stats(lines)[1] / max(1, len(doc.text.replace("\n", ""))) > self.char_duplicates_ratio:
            return "char_dup_ratio"
        if doc.text.count("\n") / max(1, len(doc.words)) > self.new_line_ratio:
            return "list_ratio"
        return None


# ---------------------------------------------------------------------------- code
_GENERATED = re.compile(r"auto-?generated|do not edit|generated by", re.I)


_NOT_ASCII_ALNUM = bytes(b for b in range(128) if not chr(b).isalnum())


def _alnum_count(text: str) -> int:
    """sum(c.isalnum() for c in text): for ASCII text, the bytes left after deleting the others (in C)."""
    if text.isascii():
        return len(text.encode("ascii").translate(None, _NOT_ASCII_ALNUM))
    return sum(map(str.isalnum, text))


@filter_config
class CodeFilter:
    """Code judged as code (in the spirit of The Stack / StarCoder's filters)."""

    max_line_length: int = 1000
    max_mean_line_length: float = 100
    min_alnum_fraction: float = 0.25
    max_generated_marker_chars: int = 500     # a generated-file marker in the first N characters
    name: ClassVar[str] = "code"

    def __call__(self, doc: Doc) -> str | None:
        lines = doc.text.splitlines() or [""]
        if max(map(len, lines)) > self.max_line_length:
            return "long_line"
        if sum(map(len, lines)) / len(lines) > self.max_mean_line_length:
            return "long_mean_line"
        if _alnum_count(doc.text) / max(1, len(doc.text)) < self.min_alnum_fraction:
            return "low_alnum"
        if _GENERATED.search(doc.text[: self.max_generated_marker_chars]):
            return "autogenerated"
        return None


# ---------------------------------------------------------------------------- domains
_CODE_LINE = re.compile(r"^\s*(def |class |import |from \S+ import|return\b|(if|elif|for|while|with|except) .*:$|"
                        r"(else|try|finally|except):$|#|//|/\*|\*/|#include|function\b|var |let |const |"
                        r"public |private |@\w+|\}|\{$|.*;\s*$|[\w.\[\]]+\s*[-+*/|&]?=\s*\S|"
                        r"[\w.]+\(.*\)$|raise\b|pass$|yield\b|assert\b)")
# a math marker; the leading lookahead names the first character every alternative needs, so the
# scan skips other positions without trying the alternation (same matches, ~35% less time)
_MATH = re.compile(r"(?=[\\$=+\-*/^tlpeid])(?:"
                   r"\\(frac|sum|int|alpha|beta|sqrt|begin\{equation|mathbb|cdot|leq|geq)|\$[^$\n]+\$|"
                   r"\b(theorem|lemma|proof|equation|integral|derivative|polynomial)\b|[=+\-*/^]\s*\d)", re.I)

DOMAINS = ("prose", "code", "math")


def tag_domain(text: str, source: str = "") -> str:
    """prose (knowledge), code or math, from the source's extension and the text itself."""
    lines = [ln for ln in text[:20_000].splitlines() if ln.strip()]
    code_share = sum(bool(_CODE_LINE.match(ln)) for ln in lines) / len(lines) if lines else 0.0
    # a source file's extension lowers the bar (docstrings taken from .py files are prose)
    is_code_file = source.split(":")[0].endswith((".py", ".c", ".h", ".js", ".ts", ".java", ".go", ".rs",
                                                  ".cpp", ".sh"))
    if code_share > (0.1 if is_code_file else 0.3):
        return "code"
    sample = text[:20_000]
    if len(_MATH.findall(sample)) / max(1, len(sample.split())) > 0.05:
        return "math"
    return "prose"
