"""BFCL (the Berkeley Function Calling Leaderboard) read from bfcl-eval's own data files and scored
with its AST rules — our own implementation of them (bfcl-eval's checker module imports ~150
packages, a CUDA torch among them: POSTTRAIN_REFERENCE.md §5).

Data: ``bfcl_eval/data/BFCL_v4_<category>.json`` (JSON Lines despite the suffix) — ``{"id",
"question": [[messages]], "function": [{name, description, parameters}]}``; the answers in
``possible_answer/`` — ``{"id", "ground_truth": [{func: {param: [acceptable values]}}]}``.

The rules (Python categories), as bfcl-eval's ``ast_checker`` applies them:
- dispatch by category: a name containing ``parallel`` → the calls match the answers in any order
  (same count, each answer greedily matched to a distinct call); ``multiple`` → exactly one call,
  checked against the one answer; otherwise (simple) exactly one call. ``irrelevance``: correct
  iff no call; ``relevance``: correct iff at least one call.
- per call: the function name matches; every ``required`` parameter is present; a parameter not in
  the schema *or* not in the answer fails; the type is checked (an int for a float parameter is
  converted; a tuple becomes a list; a value of the answer's type where that differs from the
  schema's is a "variable" and compared as is); strings compared after removing spaces and
  ``,./-_*^``, lowercasing and ``'`` → ``"``; lists element-wise so; dicts key by key; the value must
  be one of the acceptable ones; a parameter of the answer left out must have ``""`` among its
  acceptable values.

The prompt side: the question's functions become OpenAI tools (Gorilla types mapped: dict →
object, float → number, tuple → array, any → string; names kept whole, dots included), rendered
with K2's chat template; the model's calls are parsed with k2's parser into
``[{name: {argument: value}}]`` — the decoded form bfcl-eval's checker takes.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from k2core.errors import K2Error

CATEGORIES = ("simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance")
GORILLA_TO_JSON = {"dict": "object", "float": "number", "tuple": "array", "any": "string", "bool": "boolean",
                   "list": "array", "double": "number", "byte": "integer", "short": "integer", "long": "integer",
                   "char": "string"}                   # bfcl-eval's GORILLA_TO_OPENAPI, Python's share
PY_TYPES = {"string": str, "integer": int, "float": float, "boolean": bool, "array": list, "tuple": list,
            "dict": dict, "any": str}
NESTED = ("array", "tuple")
_PUNCT = re.compile(r"[ ,./\-_*^]")


def data_dir() -> Path:
    """bfcl-eval's shipped data (installed for its data only: `pip install --no-deps bfcl-eval`)."""
    import importlib.util

    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or not spec.submodule_search_locations:
        raise K2Error("the BFCL suite reads bfcl-eval's data files: pip install --no-deps bfcl-eval==2026.3.23 "
                      "(make venv does), or set the suite's path to a directory of BFCL_v4_<category>.json files")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _jsonl(path: Path) -> tuple[list[dict], list[str]]:
    rows, bad = [], []
    for i, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            bad.append(f"{path.name}:{i + 1}: {e.msg}")
    return rows, bad


@dataclass
class Question:
    id: str
    category: str
    messages: list[dict]                  # the first turn's messages
    functions: list[dict]                 # Gorilla-typed, as in the file
    answer: list[dict] | None             # ground truth; None for (ir)relevance


@dataclass
class Loaded:
    questions: list[Question]
    bad_rows: list[str] = field(default_factory=list)


def load(categories: Iterable[str] = CATEGORIES, root: str | Path | None = None, limit: int | None = None) -> Loaded:
    """Questions (and answers) of `categories` from bfcl-eval's data files (or `root`)."""
    base = Path(root) if root else data_dir()
    out = Loaded([])
    for cat in categories:
        path = base / f"BFCL_v4_{cat}.json"
        if not path.exists():
            raise K2Error(f"BFCL category {cat!r}: no file {path} (expected JSON Lines of "
                          '{"id", "question": [[messages]], "function": [...]})')
        rows, bad = _jsonl(path)
        out.bad_rows += bad
        answers: dict[str, list] = {}
        if "relevance" not in cat:
            apath = base / "possible_answer" / f"BFCL_v4_{cat}.json"
            if not apath.exists():
                raise K2Error(f"BFCL category {cat!r}: no answers at {apath}")
            arows, abad = _jsonl(apath)
            out.bad_rows += abad
            answers = {a["id"]: a["ground_truth"] for a in arows if "id" in a and "ground_truth" in a}
        for r in rows[:limit]:
            try:
                q = Question(r["id"], cat, list(r["question"][0]), list(r["function"]),
                             None if "relevance" in cat else answers[r["id"]])
            except (KeyError, IndexError, TypeError) as e:
                out.bad_rows.append(f"{path.name}: {r.get('id', '?')}: missing {e}")
                continue
            out.questions.append(q)
    return out


# ---------------------------------------------------------------------------- prompts
def to_json_schema(schema: Any) -> Any:
    """Gorilla's parameter types as JSON Schema (recursively)."""
    if isinstance(schema, dict):
        out = {k: to_json_schema(v) for k, v in schema.items()}
        if isinstance(schema.get("type"), str):
            out["type"] = GORILLA_TO_JSON.get(schema["type"], schema["type"])
        return out
    if isinstance(schema, list):
        return [to_json_schema(v) for v in schema]
    return schema


def tools_of(q: Question) -> list[dict]:
    return [{"type": "function", "function": {"name": f["name"], "description": f.get("description", ""),
                                              "parameters": to_json_schema(f.get("parameters") or {})}}
            for f in q.functions]


def decoded_calls(tool_calls: list[dict] | None) -> list[dict] | str:
    """OpenAI tool calls as BFCL's decoded output ``[{name: {arg: value}}]``; a reason string when
    an argument string is not a JSON object."""
    out = []
    for c in tool_calls or []:
        try:
            args = json.loads(c["function"]["arguments"] or "{}")
        except json.JSONDecodeError as e:
            return f"arguments of {c['function']['name']} are not JSON: {e.msg}"
        if not isinstance(args, dict):
            return f"arguments of {c['function']['name']} are not an object"
        out.append({c["function"]["name"]: args})
    return out


# ---------------------------------------------------------------------------- the AST rules
def _std(s: str) -> str:
    return _PUNCT.sub("", s).lower().replace("'", '"')


def _answer_type(acceptable: list):
    return next((type(a) for a in acceptable if a != ""), None)


def _type_ok(value, acceptable: list, want, nested) -> tuple[bool, bool]:
    """(valid, is_variable) — bfcl's type check, one level of nesting."""
    atype = _answer_type(acceptable)
    variable = atype is not None and atype != want
    if type(value) is want:
        if nested is None:
            return True, variable
        for item in acceptable:
            if not isinstance(item, list) or all(_type_ok(v, item, nested, None)[0] for v in value):
                return True, variable     # (bfcl: a non-list acceptable item passes the nested check)
        return False, variable            # the outer type fits, no acceptable list types the items
    if atype is not None and type(value) is atype:
        return True, True
    return False, variable


def _dict_ok(value: dict, acceptable: list) -> bool:
    for ans in acceptable:
        if ans == "":
            continue
        ok = all(k in ans and ((_std(v) if isinstance(v, str) else v) in
                               [_std(a) if isinstance(a, str) else a for a in ans[k]])
                 for k, v in value.items())
        ok = ok and all(k in value or "" in vals for k, vals in ans.items())
        if ok:
            return True
    return False


def _list_dict_ok(value: list, acceptable: list) -> bool:
    return any(len(value) == len(ans) and all(_dict_ok(v, [a]) for v, a in zip(value, ans)) for ans in acceptable)


def _list_ok(value: list, acceptable: list) -> bool:
    got = [_std(v) if isinstance(v, str) else v for v in value]
    return got in [[_std(a) if isinstance(a, str) else a for a in ans] for ans in acceptable if isinstance(ans, list)]


def check_call(func: dict | None, call: dict, answer: dict) -> str | None:
    """One call against one answer ``{name: {param: [acceptable]}}``: None when correct, else why."""
    name, acceptable = next(iter(answer.items()))
    if func is None:
        return f"no description of {name!r} among the question's functions"
    params = (func.get("parameters") or {}).get("properties", {})
    required = (func.get("parameters") or {}).get("required", [])
    if func["name"] not in call:
        return f"wrong_func_name: {func['name']!r} not called"
    got = call[func["name"]]
    for p in required:
        if p not in got:
            return f"missing_required: {p!r}"
    for p, value in got.items():
        if p not in params or p not in acceptable:
            return f"unexpected_param: {p!r}"
        ptype = params[p].get("type")
        if ptype not in PY_TYPES:
            return f"unknown type {ptype!r} of {p!r}"
        want = PY_TYPES[ptype]
        nested = PY_TYPES.get(params[p].get("items", {}).get("type")) if ptype in NESTED else None
        if ptype == "tuple" and isinstance(value, tuple):
            value = list(value)
        if ptype == "float" and type(value) is int:
            value = float(value)
        ok, variable = _type_ok(value, acceptable[p], want, nested)
        if not ok:
            return f"type_error: {p!r} expected {ptype}, got {type(value).__name__}"
        if not variable:
            if want is dict:
                if not _dict_ok(value, acceptable[p]):
                    return f"value_error:dict: {p!r} = {value!r}"
                continue
            if want is list and nested is dict:
                if not _list_dict_ok(value, acceptable[p]):
                    return f"value_error:list_dict: {p!r} = {value!r}"
                continue
            if want is str:
                if _std(value) not in [_std(a) for a in acceptable[p] if isinstance(a, str)]:
                    return f"value_error:string: {p!r} = {value!r}, expected one of {acceptable[p]}"
                continue
            if want is list:
                if not _list_ok(value, acceptable[p]):
                    return f"value_error:list: {p!r} = {value!r}, expected one of {acceptable[p]}"
                continue
        if value not in acceptable[p]:
            return f"value_error: {p!r} = {value!r}, expected one of {acceptable[p]}"
    for p, vals in acceptable.items():
        if p not in got and "" not in vals:
            return f"missing_optional: {p!r} not given and not optional"
    return None


def _describe(functions: list[dict], name: str) -> dict | None:
    return next((f for f in functions if f["name"] == name), None)


def check(q: Question, output: list[dict] | str | None) -> str | None:
    """A question's decoded output against its answer: None when correct, else the reason."""
    calls = output if isinstance(output, list) else []
    if "irrelevance" in q.category:
        return None if not calls else f"called {[next(iter(c)) for c in calls]} where no function fits"
    if "relevance" in q.category:
        return None if calls else "no call where one was expected"
    if isinstance(output, str):
        return f"undecodable: {output}"
    if not all(isinstance(c, dict) and len(c) == 1 and isinstance(next(iter(c.values())), dict) for c in calls):
        return "malformed: each call must be {function_name: {argument: value}}"
    answers = q.answer or []
    if "parallel" in q.category:
        if len(calls) != len(answers):
            return f"wrong_count: {len(calls)} calls, expected {len(answers)}"
        used: set[int] = set()
        for i, ans in enumerate(answers):
            func = _describe(q.functions, next(iter(ans)))
            hit = next((j for j, c in enumerate(calls) if j not in used and check_call(func, c, ans) is None), None)
            if hit is None:
                return f"cannot_find_match: no call matches expected call {i} ({next(iter(ans))})"
            used.add(hit)
        return None
    if len(calls) != 1 or len(answers) != 1:
        return f"wrong_count: {len(calls)} calls, expected 1"
    return check_call(_describe(q.functions, next(iter(answers[0]))), calls[0], answers[0])


def score(questions: list[Question], outputs: dict[str, list[dict] | str | None]) -> dict[str, Any]:
    """Accuracy per category (and overall, unweighted mean of the categories, as BFCL reports);
    a question without an output counts as wrong ("no_output")."""
    per: dict[str, list[int]] = {}
    reasons: dict[str, int] = {}
    results = []
    for q in questions:
        why = check(q, outputs[q.id]) if q.id in outputs else "no_output"
        per.setdefault(q.category, []).append(why is None)
        if why is not None:
            key = why.split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
        results.append({"id": q.id, "category": q.category, "correct": why is None, "reason": why or ""})
    acc = {c: round(sum(v) / len(v), 4) for c, v in per.items()}
    return {"suite": "bfcl", "accuracy": acc, "overall": round(sum(acc.values()) / len(acc), 4) if acc else None,
            "n": {c: len(v) for c, v in per.items()}, "failures": dict(sorted(reasons.items())), "results": results}


# ---------------------------------------------------------------------------- the reference
def reference_checker():
    """bfcl-eval's own ``ast_checker`` function, for parity checks only (tests, bench/evaluate.py).
    Its module imports the model registry (~150 packages); the checker uses it only to rename
    dotted functions for some providers, so that import is replaced by an empty registry entry."""
    import importlib
    import sys
    import types

    name = "bfcl_eval.constants.model_config"
    if name not in sys.modules:
        stub = types.ModuleType(name)

        class _Cfg:
            underscore_to_dot = False

        stub.MODEL_CONFIG_MAPPING = {"k2": _Cfg()}
        sys.modules[name] = stub
    mod = importlib.import_module("bfcl_eval.eval_checker.ast_eval.ast_checker")
    from bfcl_eval.constants.enums import Language

    def check(q: Question, output: list[dict]) -> bool:
        if "relevance" in q.category:   # bfcl-eval: (ir)relevance is decided by the decoded output alone
            has = isinstance(output, list) and len(output) > 0
            return has if q.category.endswith("relevance") and "irrelevance" not in q.category else not has
        return bool(mod.ast_checker(q.functions, output, q.answer, Language.PYTHON, q.category, "k2")["valid"])
    return check


def variants(q: Question) -> list[tuple[str, list[dict]]]:
    """Decoded outputs built from a question's answer, right and wrong in the ways BFCL's rules
    tell apart (for checking a scorer against bfcl-eval's: tests, bench/evaluate.py)."""
    def first(vals):
        return next((v for v in vals if v != ""), None)

    def gold(ans, keep_optional=True):
        name, params = next(iter(ans.items()))
        return {name: {p: first(v) for p, v in params.items() if first(v) is not None and (keep_optional or "" not in v)}}

    if q.answer is None:
        f = q.functions[0]
        props = (f.get("parameters") or {}).get("properties", {})
        return [("no_call", []), ("a_call", [{f["name"]: {p: 1 for p in list(props)[:1]}}])]
    calls = [gold(a) for a in q.answer]
    out = [("gold", calls), ("required_only", [gold(a, False) for a in q.answer]), ("none", []),
           ("extra_call", calls + calls[:1]), ("reversed", calls[::-1]), ("wrong_name", [{"no_such_fn": {}}] + calls[1:])]
    name, args = next(iter(calls[0].items()))
    for p, v in list(args.items())[:3]:
        def put(value, tag):
            out.append((f"{tag}:{p}", [{name: {**args, p: value}}] + calls[1:]))
        if isinstance(v, str):
            put(v.upper() + " ", "string_case")
            put(v + "zz", "string_wrong")
        elif isinstance(v, bool):
            put(not v, "bool_flip")
        elif isinstance(v, float):
            put(int(v) if v == int(v) else v + 1, "float_as_int")
            put(str(v), "number_as_string")
        elif isinstance(v, int):
            put(v + 1, "int_wrong")
            put(float(v), "int_as_float")
        elif isinstance(v, list):
            put(v[::-1], "list_reversed")
            put(tuple(v), "list_as_tuple")
        elif isinstance(v, dict):
            put({**v, "zz": 1}, "dict_extra_key")
        out.append((f"drop:{p}", [{name: {k: x for k, x in args.items() if k != p}}] + calls[1:]))
    out.append(("unexpected_param", [{name: {**args, "zz_unexpected": 1}}] + calls[1:]))
    return out
