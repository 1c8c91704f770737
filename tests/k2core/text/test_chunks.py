"""Chunking for chunk-wise rewriting."""
from k2core.text.chunks import split_chunks


def test_chunks_cut_at_paragraphs_then_sentences_and_keep_every_word():
    text = "\n\n".join(" ".join(f"Sentence {p}.{s} is here." for s in range(12)) for p in range(4))
    chunks = split_chunks(text, 200)
    assert all(len(c) <= 200 for c in chunks) and len(chunks) > 4
    assert " ".join(chunks).split() == text.split()
    assert all(c.rstrip().endswith(".") for c in chunks)                       # sentence boundaries
    assert split_chunks("x" * 450, 200) == ["x" * 200, "x" * 200, "x" * 50]    # no boundary: hard cuts
