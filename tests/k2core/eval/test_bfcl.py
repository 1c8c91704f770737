"""The BFCL scorer: bfcl-eval's data files read, its AST rules matched (checked against bfcl-eval's
own checker on every question of the five categories, right and wrong outputs)."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from k2core.errors import K2Error
from k2core.eval import bfcl

WEATHER = {"name": "weather.get", "description": "Weather.", "parameters": {
    "type": "dict", "required": ["city"], "properties": {
        "city": {"type": "string"}, "days": {"type": "integer"}, "temp": {"type": "float"},
        "tags": {"type": "array", "items": {"type": "string"}}, "opts": {"type": "dict", "properties": {}}}}}


def q(cat="simple_python", answer=None, functions=(WEATHER,)):
    return bfcl.Question("t", cat, [{"role": "user", "content": "?"}], list(functions), answer)


ANS = [{"weather.get": {"city": ["New York", "NYC"], "days": [3, ""], "temp": [20.0], "tags": [["a", "b"]]}}]


@pytest.mark.parametrize("call,ok,why", [
    ({"weather.get": {"city": "new york", "temp": 20.0, "tags": ["a", "b"]}}, True, ""),    # case, optional days
    ({"weather.get": {"city": "N.Y-C ", "temp": 20, "tags": ["A", "B"]}}, True, ""),          # punctuation; int -> float
    ({"weather.get": {"city": "Boston", "temp": 20.0, "tags": ["a", "b"]}}, False, "value_error:string"),
    ({"weather.get": {"temp": 20.0, "tags": ["a", "b"]}}, False, "missing_required"),
    ({"weather.get": {"city": "NYC", "tags": ["a", "b"]}}, False, "missing_optional"),        # temp has no ""
    ({"weather.get": {"city": "NYC", "temp": 20.0, "tags": ["b", "a"]}}, False, "value_error:list"),
    ({"weather.get": {"city": "NYC", "temp": 20.0, "tags": ["a", "b"], "x": 1}}, False, "unexpected_param"),
    ({"weather.get": {"city": "NYC", "temp": 20.0, "days": 3.0, "tags": ["a", "b"]}}, False, "type_error"),
    ({"weather_get": {"city": "NYC", "temp": 20.0, "tags": ["a", "b"]}}, False, "wrong_func_name"),
])
def test_the_rules_of_one_call(call, ok, why):
    got = bfcl.check(q(answer=ANS), [call])
    assert (got is None) == ok and (ok or got.startswith(why)), got


def test_counts_parallel_order_and_irrelevance():
    one = {"weather.get": {"city": "NYC", "temp": 20.0, "tags": ["a", "b"]}}
    two = {"weather.get": {"city": "Paris", "temp": 1.5, "tags": ["a", "b"]}}
    ans2 = [ANS[0], {"weather.get": {"city": ["Paris"], "temp": [1.5], "tags": [["a", "b"]]}}]
    assert bfcl.check(q(answer=ANS), [one, one]).startswith("wrong_count")           # simple: exactly one call
    assert bfcl.check(q("multiple", ANS), [one]) is None
    assert bfcl.check(q("parallel", ans2), [two, one]) is None                        # any order
    assert bfcl.check(q("parallel", ans2), [one, one]).startswith("cannot_find_match")  # each call used once
    assert bfcl.check(q("irrelevance"), []) is None and bfcl.check(q("irrelevance"), [one]) is not None
    assert bfcl.check(q(answer=ANS), "arguments of f are not JSON").startswith("undecodable")


def test_gorilla_types_become_json_schema_and_calls_decode():
    [tool] = bfcl.tools_of(q())
    params = tool["function"]["parameters"]
    assert tool["function"]["name"] == "weather.get" and params["type"] == "object"
    assert params["properties"]["temp"]["type"] == "number" and params["properties"]["opts"]["type"] == "object"
    calls = [{"function": {"name": "weather.get", "arguments": '{"city": "NYC"}'}}]
    assert bfcl.decoded_calls(calls) == [{"weather.get": {"city": "NYC"}}]
    assert "not JSON" in bfcl.decoded_calls([{"function": {"name": "f", "arguments": "{oops"}}])


def test_equals_bfcl_evals_own_checker_on_every_question():
    ref = bfcl.reference_checker()
    loaded = bfcl.load()
    assert Counter(x.category for x in loaded.questions) == {"simple_python": 400, "multiple": 200, "parallel": 200,
                                                             "parallel_multiple": 200, "irrelevance": 240}
    verdicts, disagree = Counter(), []
    for question in loaded.questions:
        for tag, out in bfcl.variants(question):
            ours = bfcl.check(question, out) is None
            verdicts[ours] += 1
            if ours != ref(question, out):
                disagree.append((question.id, tag))
    assert not disagree, disagree[:10]
    assert verdicts[True] > 4000 and verdicts[False] > 8000          # both verdicts well represented


def test_scores_per_category_and_names_bad_files(tmp_path):
    loaded = bfcl.load(["simple_python", "irrelevance"], limit=10)
    outputs = {x.id: bfcl.variants(x)[0][1] for x in loaded.questions}           # gold / no call
    outputs.pop(loaded.questions[0].id)
    s = bfcl.score(loaded.questions, outputs)
    assert s["n"] == {"simple_python": 10, "irrelevance": 10} and s["accuracy"]["irrelevance"] == 1.0
    assert s["accuracy"]["simple_python"] <= 0.9 and s["failures"]["no_output"] == 1
    with pytest.raises(K2Error, match="BFCL_v4_nope.json"):
        bfcl.load(["nope"])
    (tmp_path / "possible_answer").mkdir()
    (tmp_path / "BFCL_v4_simple_python.json").write_text(json.dumps({"id": "a", "question": [[]], "function": []})
                                                           + "\n{broken\n" + json.dumps({"id": "b"}) + "\n")
    (tmp_path / "possible_answer" / "BFCL_v4_simple_python.json").write_text(
        json.dumps({"id": "a", "ground_truth": [{"f": {}}]}) + "\n")
    got = bfcl.load(["simple_python"], root=tmp_path)
    assert [x.id for x in got.questions] == ["a"] and len(got.bad_rows) == 2
