"""Fidelity verification: the real all-MiniLM-L6-v2 embedder (offline), number and entity
preservation, length bounds — each failure named by its reason."""
from __future__ import annotations

import pytest

from k2core.config import FidelityConfig
from k2core.infer.fidelity import Verifier, entities, numbers
from tests.k2core.infer.test_llm import checkpoint  # noqa: F401 — a tiny checkpoint with a tokenizer (fixture)

SRC = ("In 1969, Neil Armstrong and Buzz Aldrin landed on the Moon with Apollo 11. About 3.5% of the "
       "1,200 engineers at NASA had worked on the lunar module. The landing site was the Sea of Tranquility.")
PARAPHRASE = ("Apollo 11 put Neil Armstrong and Buzz Aldrin on the Moon in 1969. Roughly 3.5% of NASA's "
              "1,200 engineers had built the lunar module, and they touched down in the Sea of Tranquility.")


def test_numbers_and_entities_are_extracted():
    assert numbers(SRC) == {"1969", "11", "3.5%", "1200"}
    assert numbers("x1 v2.0 -4 +7 1,000,000") == {"-4", "7", "1000000"}
    ents = entities(SRC)
    assert {"Neil Armstrong", "Buzz Aldrin", "Moon", "Apollo", "NASA", "Sea", "Tranquility"} <= ents
    assert "In" not in ents and "About" not in ents and "The" not in ents     # sentence-initial words
    assert {"os.path.join", "read_rows", "DataFrame"} <= entities("Call os.path.join, then read_rows on a DataFrame.")


@pytest.fixture(scope="module")
def verifier():
    return Verifier(FidelityConfig())


def test_a_faithful_paraphrase_passes_and_unrelated_text_does_not(verifier):
    ok, unrelated = verifier.check([SRC, SRC], [PARAPHRASE, "Stock prices in Tokyo fell for a third day as "
                                                "investors sold shares of exporters in 2024."])
    assert ok.ok and ok.similarity > 0.8 and ok.number_recall == 1.0 and ok.entity_recall == 1.0, ok
    assert not unrelated.ok and unrelated.similarity < 0.3
    assert {"low_similarity", "numbers_lost", "entities_lost"} <= set(unrelated.reasons)


def test_each_lost_fact_is_named(verifier):
    dropped_number = PARAPHRASE.replace("3.5%", "a few percent")
    dropped_names = PARAPHRASE.replace("Neil Armstrong and Buzz Aldrin", "two astronauts").replace(
        "NASA's", "the agency's").replace("the Sea of Tranquility", "a flat plain")
    a, b, empty, short, long = verifier.check([SRC] * 5, [dropped_number, dropped_names, "  ", "Moon 1969.",
                                                          PARAPHRASE * 4])
    assert a.reasons == ["numbers_lost"] and a.missing_numbers == ["3.5%"]
    assert "entities_lost" in b.reasons and {"Buzz Aldrin", "NASA", "Neil Armstrong"} <= set(b.missing_entities)
    assert empty.reasons[0] == "empty" and empty.similarity is None
    assert "too_short" in short.reasons and "too_long" in long.reasons
    with pytest.raises(ValueError, match="2 sources but 1 rewrites"):
        verifier.check([SRC, SRC], [SRC])


def test_judge_replies_are_read_by_their_first_word():
    from k2core.infer.fidelity import judge_answer

    assert [judge_answer(t) for t in [" Yes, it does.", "no", "\n\nNO - the year changed", "maybe", "", "yesterday"]] \
        == ["yes", "no", "no", "unclear", "unclear", "unclear"]


def test_an_llm_judge_adds_its_verdict_to_each_pair(checkpoint):
    """A real (random, tiny) native model as the judge: whatever it answers is parsed and counted."""
    from k2core.infer.llm import NativeLLM

    src = ["The bridge was built in 1820 by Thomas Telford."]
    new = ["Thomas Telford built the bridge in 1820."]
    judge = NativeLLM(checkpoint, device="cpu")
    off = Verifier(FidelityConfig(), judge=judge).check(src, new)[0]
    assert off.judge is None and "judge_unclear" not in off.reasons           # judge = off: not asked
    on = Verifier(FidelityConfig(judge="teacher"), judge=judge).check(src, new)[0]
    assert on.judge in ("yes", "no", "unclear")
    assert ("judge_rejected" in on.reasons) == (on.judge == "no")
    assert ("judge_unclear" in on.reasons) == (on.judge == "unclear")
