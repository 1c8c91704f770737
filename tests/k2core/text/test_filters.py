"""Curation filters: reasons on crafted documents, and decisions equal to datatrove's on real text."""
from __future__ import annotations

import pytest

from k2core.text.filters import (BinaryFilter, C4Filter, CodeFilter, Doc, EnglishFilter, FineWebFilter,
                                 GopherQualityFilter, GopherRepetitionFilter, LengthFilter, tag_domain)
from k2core.text.words import count_sentences, words

PROSE = ("The history of the printing press is one of the most important stories of the modern world. "
         "It changed how people learned to read and write, and it made books cheaper than they had been "
         "for centuries. Scholars have argued that the press was a cause of the scientific revolution. "
         "Others say that it was only one of many changes that came together at that time in Europe. "
         "Either way, the press spread quickly, and by the year 1500 there were presses in most cities.\n")


def test_tokenizer_splits_like_spacy_on_the_cases_gopher_counts():
    assert words("Don't stop-believing, e.g. U.S.A. isn't 3.5% (really)... http://x.com/a?b=1 I'm done!") == [
        "Do", "n't", "stop", "-", "believing", ",", "e.g.", "U.S.A.", "is", "n't", "3.5", "%", "(", "really",
        ")", "...", "http://x.com/a?b=1", "I", "'m", "done", "!"]
    assert words("os.pipe( x**2") == ["os.pipe", "(", "x**2"]
    assert count_sentences(words('"Hello," she said. "Bye!" 3 p.m. today')) == 3


def test_english_filter_ascii_shortcut_decides_as_the_per_character_rule():
    """ASCII text skips the per-character Latin count; the decision is the general rule's."""
    def general(text: str, f=EnglishFilter()) -> str | None:
        letters = [c for c in text[:f.sample_chars] if c.isalpha()]
        if not letters:
            return "no_letters"
        if sum(c < "\u0250" for c in letters) / len(letters) < f.min_latin_fraction:
            return "non_latin_script"
        return f(Doc(text + "\u00e9"))      # one non-ASCII letter: the general path decides the rest
    texts = [PROSE, "1234 5678 9 -- 42 ** 7 " * 20, "def f(x):\n    return x + 1\n" * 30, "x" * 120,
             "Der Buchdruck veraenderte die Welt, weil Buecher billiger wurden. " * 5]
    for text in texts:
        assert text.isascii()
        assert EnglishFilter()(Doc(text)) == general(text), text[:40]
    assert EnglishFilter()(Doc("1234 5678 9 -- 42 ** 7 " * 20)) == "no_letters"


def test_alnum_count_equals_the_per_character_count():
    import random

    from k2core.text.filters import _alnum_count

    rng = random.Random(0)
    texts = ["", "abc 123 _-!", "\x00\x7f zZ09\t\n", "".join(map(chr, range(128))), "héllo wörld ١٢٣ 漢字",
             "".join(chr(rng.randrange(0, 0x3000)) for _ in range(5000)),
             "".join(chr(rng.randrange(0, 128)) for _ in range(5000))]
    for text in texts:
        assert _alnum_count(text) == sum(c.isalnum() for c in text), text[:20]


def test_math_marker_count_equals_the_pattern_without_its_lookahead():
    """The lookahead in front of the math-marker pattern only skips positions faster: the same
    matches on math, prose, code and shell text, in any case."""
    import re

    from k2core.text.filters import _MATH

    plain = re.compile(r"\\(frac|sum|int|alpha|beta|sqrt|begin\{equation|mathbb|cdot|leq|geq)|\$[^$\n]+\$|"
                       r"\b(theorem|lemma|proof|equation|integral|derivative|polynomial)\b|[=+\-*/^]\s*\d", re.I)
    texts = [PROSE, "THEOREM 2. Let $x^2 = 4$; by the Lemma, \\frac{a}{b} \\LEQ 3 and y -1 = 2*3 ^ 4.",
             "Proof. The integral of the polynomial p(x) = 3x + 1 is a Derivative-free equation.",
             "x=1; y+= 2 ** 3; echo $HOME $PATH $ 5$; a/b/ 9 - theorems lemmas prooF",
             "def f(x):\n    return x ** 2 - 1  # $cost$ = 7\n" * 20, "Ünïcödé $α=β$ ∫ equation ² = 2"]
    for text in texts:
        assert _MATH.findall(text) == plain.findall(text), text[:30]
    assert len(_MATH.findall(texts[1])) >= 5


def test_each_filter_names_its_reason():
    assert LengthFilter(min_chars=10)(Doc("short")) == "too_short"
    assert LengthFilter(max_chars=100)(Doc("x" * 101)) == "too_long"
    assert BinaryFilter()(Doc("\ufffd\x01" * 50 + PROSE)) == "binary_looking"
    assert EnglishFilter()(Doc("Это обычный русский текст о печатном станке и его истории. " * 5)) == "non_latin_script"
    assert EnglishFilter()(Doc("Der Buchdruck veränderte die Welt, weil Bücher billiger wurden. " * 5)) == "not_english"
    assert EnglishFilter()(Doc(PROSE)) is None
    assert GopherRepetitionFilter()(Doc("same line here\n" * 20)) == "dup_line_frac"
    assert GopherQualityFilter()(Doc("too few words here.")) == "gopher_short_doc"
    assert GopherQualityFilter()(Doc(PROSE)) is None
    assert GopherQualityFilter()(Doc("#tag " * 60 + PROSE)) == "gopher_too_many_hashes"
    assert C4Filter()(Doc("lorem ipsum dolor sit amet, consectetur.\n" + PROSE)) == "lorem_ipsum"
    assert C4Filter()(Doc("just one line without an end")) == "too_few_sentences"
    d = Doc("Enable JavaScript to view this page.\nShort line.\n" + PROSE)
    assert C4Filter()(d) is None and "JavaScript" not in d.text and "Short line" not in d.text  # lines cleaned
    assert FineWebFilter()(Doc("\n".join(["a list item"] * 5 + ["another item"] * 5))) == "line_punct_ratio"
    assert CodeFilter()(Doc("x = 1\n" + "y" * 2000)) == "long_line"
    assert CodeFilter()(Doc("# Auto-generated file. Do not edit.\nx = 1\n")) == "autogenerated"


def test_domains():
    assert tag_domain(PROSE) == "prose"
    assert tag_domain("import os\n\ndef f(x):\n    return x + 1\n\nclass A:\n    pass\n") == "code"
    assert tag_domain("We prove the theorem: $x^2 + y^2 = z^2$ and \\frac{a}{b} = 2 for the integral.") == "math"


def test_thresholds_are_typed_config():
    from k2core.config import ConfigError, load_config

    cfg = load_config(overrides=["curate.gopher_quality.min_doc_words=30"])
    assert cfg.curate.gopher_quality.min_doc_words == 30 and cfg.curate.gopher_quality.max_doc_words == 100_000
    with pytest.raises(ConfigError, match="curate.gopher_quality.bogus"):
        load_config(overrides=["curate.gopher_quality.bogus=1"])


def test_decisions_equal_datatrove_on_real_text():
    """Gopher repetition, Gopher quality and C4 against datatrove 0.10 on stdlib docstrings + sources."""
    pytest.importorskip("datatrove")
    pytest.importorskip("spacy")
    import ast

    from datatrove.data import Document
    from datatrove.pipeline.filters import C4QualityFilter
    from datatrove.pipeline.filters import GopherQualityFilter as DQ
    from datatrove.pipeline.filters import GopherRepetitionFilter as DR

    from k2core.sources import stdlib_root

    texts = []
    for p in sorted(stdlib_root().glob("[a-h]*.py"))[:40]:
        src = p.read_text()
        texts.append(src)
        texts += [ast.get_docstring(n) for n in ast.walk(ast.parse(src))
                  if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Module)) and ast.get_docstring(n)
                  and len(ast.get_docstring(n)) > 300]
    pairs = [(GopherRepetitionFilter(), DR()), (GopherQualityFilter(), DQ()), (C4Filter(), C4QualityFilter())]
    for ours, theirs in pairs:
        agree = sum((ours(Doc(t)) is None) == (theirs.filter(Document(text=t, id="x")) is True) for t in texts)
        assert agree / len(texts) >= 0.98, (ours.name, agree, len(texts))


def _ref_dup_chars(ws: list[str], n: int) -> int:
    """Gopher's duplicated n-gram characters as its reference code counts them (skip past a repeat)."""
    seen, total, i = set(), 0, 0
    while i < len(ws) - n + 1:
        gram = "".join(ws[i:i + n])
        if gram in seen:
            total += len(gram)
            i += n
        else:
            seen.add(gram)
            i += 1
    return total


def _ref_repetition(ws: list[str], length: int, f: GopherRepetitionFilter) -> str | None:
    from collections import Counter

    for n, frac in f.top_n_grams:
        grams = Counter(tuple(ws[i:i + n]) for i in range(len(ws) - n + 1))
        if grams:
            top, count = grams.most_common(1)[0]
            if (sum(map(len, top)) + n - 1) * count / length > frac:
                return f"top_{n}_gram"
    for n, frac in f.dup_n_grams:
        if _ref_dup_chars(ws, n) / length > frac:
            return f"duplicated_{n}_n_grams"
    return None


def test_n_gram_statistics_equal_the_reference_counts():
    """The hashed n-gram codes, the bounds that skip exact passes and the exact pass itself decide as
    a plain implementation does, on word streams from small vocabularies (many repeats) to large
    ones (few), at limits around the exact count."""
    import random

    from k2core.text.filters import _Grams

    rng = random.Random(0)
    f = GopherRepetitionFilter(dup_line_frac=1, dup_para_frac=1, dup_line_char_frac=1, dup_para_char_frac=1)
    reasons = set()
    for trial in range(300):
        vocab = [f"w{i}" + "x" * rng.randrange(4) for i in range(rng.choice([3, 8, 30, 200, 2000]))]
        ws = [rng.choice(vocab) for _ in range(rng.randrange(1, 400))]
        if trial % 3 == 0:                                   # a copied passage
            a = rng.randrange(len(ws))
            ws += ws[a:a + rng.randrange(5, 40)]
        text = " ".join(ws)
        grams = _Grams(ws)
        for n in (5, 6, 7, 10):      # shorter n first, as the filter asks: their repeats bound longer ones
            ref = _ref_dup_chars(ws, n)
            for limit in (0, ref - 1, ref, ref + 1, 2 * ref + 5):
                assert (grams.dup_chars(n, limit) > limit) == (ref > limit), (trial, n, limit, ref)
        got = f(Doc(text))
        assert got == _ref_repetition(ws, len(text), f), (trial, got)
        reasons.add(got)
    assert len(reasons) >= 4, reasons      # the streams reach several different decisions


def test_n_gram_keys_do_not_depend_on_the_order_they_are_built_in():
    import numpy as np

    from k2core.text.filters import _MULT, _Grams

    ws = [f"w{i % 37}" for i in range(0, 3000, 7)]
    grams = _Grams(ws)
    for n in [2, 3, 4, 5, 7, 6, 10, 2, 9]:
        m = len(ws) - n + 1
        ref = grams.ids[:m].copy()
        with np.errstate(over="ignore"):
            for k in range(1, n):
                ref = ref * _MULT + grams.ids[k:k + m]
        assert np.array_equal(grams._keys(n), ref), n
