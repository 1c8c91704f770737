"""The word tokenizer's fast paths give what its general affix / infix path gives."""
from __future__ import annotations

import itertools

from k2core.text import words as text
from k2core.text.words import _split_chunk, _tokens, words

OPENINGS = ["", "(", "[", "{", '"', "'", '("', "(['"]
CORES = ["foo", "x1", "a_b", "Foo_Bar9", "cannot", "Cannot", "e", "s", "S", "12", "A1_b2_C3", "nt", "ll",
         "os.path", "3.14", "www.python.org", "e.g", "Foo.bar9", "a.b.C", "x.Y", "U.S", "self._x", "a..b"]
CLOSINGS = ["", ")", ",", ":", "):", ")):", ";", "!", "?", '"', "'", '",', ":)", ")!", "'s", "]:", "}),"]


def general(chunk: str) -> tuple[str, ...]:
    buf: list[str] = []
    _split_chunk(chunk, buf)
    return tuple(buf)


def test_wrapped_word_fast_path_equals_the_affix_loop():
    for o, c, e in itertools.product(OPENINGS, CORES, CLOSINGS):
        chunk = o + c + e
        assert _tokens(chunk) == general(chunk), chunk


def test_clock_fast_path_and_colon_before_letter():
    for chunk in ["12:30", "12:30:45", "1:2:3:4", "9:a", "a:9", "12:30:", "(12:30)"]:
        assert _tokens(chunk) == general(chunk), chunk
    assert _tokens("12:30:45") == ("12:30:45",)
    assert _tokens("(a_b):") == ("(", "a_b", "):")          # spaCy merges ")" ":" after peeling
    assert _tokens("cannot,") == ("can", "not", ",")


def test_suffix_search_near_the_end_equals_a_full_search():
    chunks = ["http://example.com/a/b.", "http://example.com/a/b...", "ABCDEFG.", "abcdefg.", "Abcdefg.",
              "https://x.org/y)", "word's", "words'", "1234567+", "path/to/file.py:", "a.b.c.d.e.",
              "x" * 50 + "....", "foo—", "10°", "5%"]
    for chunk in chunks:
        fast, full = text._has_suffix(chunk), text._SUFFIX.search(chunk)
        assert (fast and (fast.start(), fast.group())) == (full and (full.start(), full.group())) or \
            (fast is None and chunk[-1].isalnum()), chunk


def test_words_cache_is_transparent():
    s = "Don't stop (x_y): 12:30, e.g. os.path.join(a, b) cannot!"
    text._CHUNKS.clear()
    cold = words(s)
    assert words(s) == cold == [t for c in s.split() for t in general(c)]


def test_chunk_cache_tokenises_on_first_lookup_and_stays_bounded():
    cache = text.ChunkCache(max_size=3)
    chunks = ["(a)", "b,", "c", "(a)", "d.", "e-f", "b,"]
    assert [cache[c] for c in chunks] == [general(c) for c in chunks]
    assert len(cache) <= 3


def test_one_character_suffixes_are_what_the_suffix_regex_finds():
    for c in text._ONE_CHAR_SUFFIX:
        for before in ["ab", "AB", "12", "a.", "..", "a'", "x-", "%", "’"]:
            chunk = before + c
            m = text._SUFFIX.search(chunk)
            assert m is not None and m.start() == len(chunk) - 1, chunk
            assert text._has_suffix(chunk).group() == c
