"""Text primitives for curation: a fast word tokenizer, sentence counting, character classes.

The word tokenizer is one compiled regex that splits English the way spaCy's rule-based tokenizer
does in the cases the Gopher / C4 / FineWeb statistics depend on (punctuation split from words,
contractions "do|n't", "it|'s", abbreviations "e.g." and numbers "3.5" kept whole, hyphens split,
URLs and e-mail addresses whole) at a fraction of its cost. Where it differs from spaCy (mostly
code-like text) the curation benchmark lists the disagreements (docs/benchmarks.md).
"""
from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from itertools import chain

# ---------------------------------------------------------------------------- word tokenizer
# spaCy's English tokenizer, in its essentials: split on whitespace; from each chunk peel prefixes
# (opening punctuation, quotes, currency) and suffixes (closing punctuation, quotes, "'s", a period
# after a digit, a lowercase letter or two capitals); split infixes (hyphens between letters,
# ellipses, "a,b", "a/b", "1+2"); keep URLs, "e.g."-style abbreviations and common titles whole;
# split contractions (do|n't, I|'m). A chunk of letters only — most of prose — takes none of it.
_PUNCT = r"""…,:;!?¿¡()\[\]{}<>_#*&。？！，、；：～·"""
_QUOTES = r"""'"”“`‘´’‚„»«「」『』（）〔〕【】《》〈〉"""
_PREFIX = re.compile(rf"""^(?:\.\.+|[{_PUNCT}{_QUOTES}$£€¥§%=—–]|\+(?![0-9]))""")
_SUFFIX = re.compile(rf"""(?:\.\.+|[{_PUNCT}{_QUOTES}%°—–]|['’][sS]|(?<=[0-9])\+|"""
                     rf"""(?<=[0-9a-z%²\-+{_PUNCT}{_QUOTES}])\.|(?<=[A-Z][A-Z])\.)$""")
_INFIX = re.compile(r"""\.\.+|…|(?<=[0-9])[+\-*^](?=[0-9-])|(?<=[a-z'"”])\.(?=[A-Z'"“])|"""
                    r"""(?<=[^\W\d_]),(?=[^\W\d_])|(?<=[^\W_])(?:---|--|-|–|—|~)(?=[^\W\d_])|"""
                    r"""(?<=[^\W_])[:<>=/](?=[^\W\d_])""")
_INFIX_SPLIT = re.compile(f"({_INFIX.pattern})")   # split() keeps each infix as a piece
_URL = re.compile(r"^(?:(?:https?://|www\.)\S+|[\w.+-]+@[\w-]+(?:\.[\w-]+)+)$")
_WHOLE = re.compile(r"""^(?:(?:[^\W\d_]\.){1,}|"""
                    r"""(?:Mr|Mrs|Ms|Dr|Prof|St|Jr|Sr|vs|Inc|Ltd|Co|Corp|Jan|Feb|Mar|Apr|Jun|Jul|Aug|"""
                    r"""Sep|Sept|Oct|Nov|Dec)\.|-+|~+|\.{2,}|\):|\(:|:\)|:\(|:-\)|;\)|:D|and/or)$""")
# spaCy merges these when affix splitting leaves them adjacent (its special cases span tokens)
_MERGE = {(")", ":"): "):", ("(", ":"): "(:", ("[", ":"): "[:", (":", ")"): ":)", (":", "("): ":("}
_CONTRACTION = re.compile(r"^([^\W\d_]+?)(n['’]t|['’](?:m|re|ve|ll|d|M|RE|VE|LL|D))$")


# characters that are a whole suffix wherever they end a chunk: no lookbehind, no longer
# alternative (dot runs, "'s") can end in them
_ONE_CHAR_SUFFIX = frozenset(_PUNCT.replace("\\", "") + _QUOTES + "%°—–") - frozenset(".")
_ONE_CHAR = re.compile(r".", re.S)

# every _WHOLE form ends with one of these characters (or is "and/or" / ":D")
_WHOLE_LAST = frozenset(".-~:)(")


def _special(chunk: str) -> list[str] | None:
    if not chunk:
        return None
    if (chunk[-1] in _WHOLE_LAST or chunk in ("and/or", ":D")) and _WHOLE.match(chunk):
        return [chunk]
    if "'" in chunk or "’" in chunk:
        m = _CONTRACTION.match(chunk)
        if m:
            return [m.group(1), m.group(2)]
    if len(chunk) == 6 and chunk.lower() == "cannot":
        return [chunk[:3], chunk[3:]]
    return None


def _has_suffix(chunk: str):
    last = chunk[-1]
    if last.isalnum() and not (last in "sS" and chunk[-2:-1] in ("'", "’")):
        return None
    if last in _ONE_CHAR_SUFFIX:
        return _ONE_CHAR.match(chunk, len(chunk) - 1)
    # every suffix is at most 2 characters but a run of dots, so a long chunk (a URL, a path) is
    # searched from near its end; lookbehinds still see the characters before the start position
    if len(chunk) > 4 and not chunk.endswith(".."):
        return _SUFFIX.search(chunk, len(chunk) - 3)
    return _SUFFIX.search(chunk)


def _split_chunk(chunk: str, out: list[str]) -> None:
    begin, colon = len(out), ":" in chunk
    special = _special(chunk)
    if special:
        out.extend(special)
        return
    suffixes: list[str] = []
    while chunk:                       # peel one prefix, else one suffix, until neither matches
        # every prefix starts with, and every suffix ends with, a non-alphanumeric character except
        # "'s": test one character before running a regex over the chunk
        m = None if chunk[0].isalnum() else _PREFIX.match(chunk)
        if m and (m.end() < len(chunk) or not _has_suffix(chunk)):
            out.append(m.group())
            chunk = chunk[m.end():]
        else:
            m = _has_suffix(chunk)
            if not (m and m.start() > 0):
                break
            suffixes.append(m.group())
            chunk = chunk[: m.start()]
        special = _special(chunk)
        if special:
            out.extend(special)
            chunk = ""
    if chunk and ("://" in chunk or "www." in chunk or "@" in chunk) and _URL.match(chunk):     # URLs are matched after the affixes are peeled, as in spaCy
        out.append(chunk)
        chunk = ""
    if chunk:   # infixes: the pieces between them and the infixes themselves (none is empty)
        out.extend(filter(None, _INFIX_SPLIT.split(chunk)))
    out.extend(reversed(suffixes))
    if colon:
        _merge(out, begin)       # every merged pair has a ":"


class ChunkCache(dict):
    """chunk -> its tokens, tokenised on first lookup: text repeats its chunks.

    A lookup that hits stays in C (``dict.__getitem__``); a miss calls ``__missing__``. Emptied
    when it reaches ``max_size`` entries (the tuples already handed out stay valid)."""

    def __init__(self, max_size: int = 1 << 20):
        super().__init__()
        self.max_size = max_size

    def __missing__(self, chunk: str) -> tuple[str, ...]:
        if len(self) >= self.max_size:
            self.clear()
        toks = self[chunk] = _tokens(chunk)
        return toks


_CHUNKS = ChunkCache()


# Fast paths with the same result as _split_chunk (tests/k2core/data/test_text.py checks them
# against it): an ASCII word (letters, digits, inner underscores; dotted parts allowed where a
# lowercase letter or digit follows the dot — "os.path", "3.14", "www.python.org" — which no
# infix rule splits) wrapped in opening brackets / quotes and closing brackets / quotes /
# , ; : ! ? — each wrapper character is one token, as the affix loop peels them — and clock
# times / ratios like 12:30:45 (":" splits only before a letter).
_TAIL = r"(?:[A-Za-z0-9_]*[A-Za-z0-9])?"      # the rest of a word: inner underscores, alphanumeric end
_WRAPPED = re.compile(rf"""([(\[{{"']*)([A-Za-z0-9]{_TAIL}(?:\.[a-z0-9]{_TAIL})*)([)\]}}"',;:!?]*)""")
_CLOCK = re.compile(r"[0-9]+(?::[0-9]+)+")


def _merge(out: list[str], begin: int = 0) -> None:
    i = begin
    while i < len(out) - 1:
        pair = _MERGE.get((out[i], out[i + 1]))
        if pair:
            out[i:i + 2] = [pair]
        i += 1


def _tokens(chunk: str) -> tuple[str, ...]:
    if chunk.isalnum() and chunk not in ("cannot", "Cannot"):
        return (chunk,)          # letters and digits only: no affix, infix or special applies
    m = _WRAPPED.fullmatch(chunk)
    if m is not None and m.group(2).lower() != "cannot":
        opening, core, closing = m.groups()
        if not opening and not closing:
            return (chunk,)
        out = [*opening, core, *closing]
        if ":" in closing:
            _merge(out)
        return tuple(out)
    if _CLOCK.fullmatch(chunk):
        return (chunk,)
    buf: list[str] = []
    _split_chunk(chunk, buf)
    return tuple(buf)


def words(text: str) -> list[str]:
    """Word tokens (punctuation tokens included, whitespace dropped), spaCy-style.

    Each distinct whitespace chunk is tokenised once and cached: text repeats its chunks."""
    return list(chain.from_iterable(map(_CHUNKS.__getitem__, text.split())))


STOP_WORDS = frozenset(["the", "be", "to", "of", "and", "that", "have", "with"])   # Gopher (Rae et al. 2021)

# spaCy's Sentencizer ends a sentence after one of these, at the next non-punctuation token
SENTENCE_END = frozenset("!.?։؟۔܀܁܂߹।॥၊။።፧፨᙮᜵᜶᠃᠉᥄᥅᪨᪩᪪᪫᭚᭛᭞᭟᰻᰼᱾᱿‼‽⁇⁈⁉⸮⸼꓿꘎꘏꛳꛷꡶꡷꣎꣏꤯꧈꧉꩝꩞꩟꫰꫱꯫﹒﹖﹗！．？｡。")


@lru_cache(maxsize=1 << 16)
def is_symbol(tok: str) -> bool:
    """Every character punctuation or a symbol (Unicode P* / S*): '.', '--', '$', '»'."""
    return all(unicodedata.category(c)[0] in "PS" for c in tok)


@lru_cache(maxsize=1 << 16)
def is_punct(tok: str) -> bool:
    return all(unicodedata.category(c)[0] == "P" for c in tok)


@lru_cache(maxsize=1 << 18)
def has_alpha(tok: str) -> bool:
    return any(c.isalpha() for c in tok)


def count_sentences(toks: list[str]) -> int:
    """Sentences in a tokenised line, by spaCy's Sentencizer rule."""
    if not toks:
        return 0
    n, seen_end = 1, False
    for t in toks:
        end = t in SENTENCE_END
        if seen_end and not end and not is_punct(t):
            n += 1
            seen_end = False
        elif end:
            seen_end = True
    return n
