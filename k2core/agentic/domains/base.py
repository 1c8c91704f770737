"""Executable domains in the shape of τ²-bench's toolkit (POSTTRAIN_REFERENCE.md §2).

A domain is code + a seeded database: a pydantic database model, a :class:`Toolkit` whose methods
marked ``@tool(READ | WRITE | GENERIC)`` are the agent's tools (signature + Google-style docstring
-> the OpenAI function schema, return annotation -> the return schema), a policy text, and a task
generator that proposes :class:`Blueprint` s — a user scenario and the gold action sequence — from
the database. One definition of each tool serves synthesis, RL, evaluation and the domain's MCP
server (``k2 mcp serve DOMAIN``).

    tk = RetailToolkit(db)                           # a copy of the database is the world
    tk.use_tool("cancel_pending_order", {"order_id": "#W1", "reason": "no longer needed"})
    tk.state_hash()                                  # sha256 of the canonical database JSON

A tool that refuses (policy, bad state, unknown id) raises :class:`ToolError`; its message is what
the agent sees as the tool result, as in τ²-bench.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import random
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, ClassVar, get_type_hints

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, create_model
from pydantic_core import to_jsonable_python

from k2core.errors import K2Error


class ToolError(Exception):
    """A tool refused the call; the message is the tool's answer."""


class ToolType(str, Enum):
    READ = "read"
    WRITE = "write"
    GENERIC = "generic"      # no database effect (transfer to a human, think)


def tool(kind: ToolType, mutates_state: bool | None = None) -> Callable:
    """Mark a toolkit method as a tool; WRITE tools mutate state unless told otherwise."""
    def mark(fn: Callable) -> Callable:
        fn.__k2_tool__ = (kind, kind is ToolType.WRITE if mutates_state is None else mutates_state)
        return fn
    return mark


def canonical_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


@dataclass
class ToolSpec:
    name: str
    kind: ToolType
    mutates_state: bool
    description: str
    parameters: dict[str, Any]          # JSON Schema, type object
    returns: dict[str, Any]             # JSON Schema of the result
    args_model: type[BaseModel]

    def openai(self) -> dict[str, Any]:
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}


def _docstring(fn: Callable) -> tuple[str, dict[str, str]]:
    from docstring_parser import parse as parse_doc

    doc = parse_doc(inspect.getdoc(fn) or "")
    desc = "\n\n".join(p for p in (doc.short_description, doc.long_description) if p)
    return desc, {p.arg_name: p.description or "" for p in doc.params}


def _strip_titles(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _strip_titles(v) for k, v in schema.items() if k != "title"}
    if isinstance(schema, list):
        return [_strip_titles(v) for v in schema]
    return schema


def build_spec(name: str, fn: Callable, kind: ToolType, mutates: bool) -> ToolSpec:
    hints = get_type_hints(fn)
    desc, params = _docstring(fn)
    fields: dict[str, Any] = {}
    for pname, p in inspect.signature(fn).parameters.items():
        if pname == "self":
            continue
        if pname not in hints:
            raise K2Error(f"tool {name}: parameter {pname} has no type annotation")
        from pydantic import Field

        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[pname] = (hints[pname], Field(default, description=params.get(pname) or None))
    model = create_model(f"{name}_args", __config__=ConfigDict(extra="forbid"), **fields)
    schema = _strip_titles(model.model_json_schema())
    schema.pop("additionalProperties", None)
    schema.setdefault("properties", {})
    schema.setdefault("required", [])
    ret = hints.get("return", Any)
    returns = _strip_titles(TypeAdapter(ret).json_schema()) if ret is not type(None) else {"type": "null"}
    return ToolSpec(name, kind, mutates, desc, schema, returns, model)


class Toolkit:
    """The tools of one domain over one database (the toolkit owns it; pass a copy)."""

    db_model: ClassVar[type[BaseModel]]
    _specs: ClassVar[dict[str, ToolSpec]]

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        cls._specs = {}
        for name, fn in inspect.getmembers(cls, inspect.isfunction):
            mark = getattr(fn, "__k2_tool__", None)
            if mark is not None:
                cls._specs[name] = build_spec(name, fn, *mark)

    def __init__(self, db: BaseModel):
        self.db = db

    @classmethod
    def specs(cls) -> dict[str, ToolSpec]:
        return cls._specs

    @classmethod
    def openai_tools(cls) -> list[dict[str, Any]]:
        return [s.openai() for s in cls._specs.values()]

    def use_tool(self, name: str, arguments: dict[str, Any] | None = None) -> Any:
        """Validate `arguments` against the tool's signature and call it; the result as JSON-able
        data. Unknown tools and bad arguments raise ToolError (what the agent is told), as a
        refusal does."""
        arguments = arguments or {}
        spec = self._specs.get(name)
        if spec is None:
            raise ToolError(f"Error: unknown tool {name!r}")
        try:
            args = spec.args_model.model_validate(arguments)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(map(str, err["loc"])) or "arguments"
            raise ToolError(f"Error: invalid arguments for {name}: {where}: {err['msg']}") from None
        result = getattr(self, name)(**{k: getattr(args, k) for k in spec.args_model.model_fields})
        return to_jsonable_python(result)

    def state_hash(self) -> str:
        return canonical_hash(self.db.model_dump(mode="json"))


def leaves(obj: Any) -> list[str]:
    """Every scalar in a JSON-able value as text (floats also with two decimals: money)."""
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in leaves(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in leaves(v)]
    return [str(obj), f"{obj:.2f}"] if isinstance(obj, float) else [str(obj)]


def result_text(result: Any) -> str:
    """A tool result as the text an agent reads (JSON for structures)."""
    return result if isinstance(result, str) else json.dumps(result, ensure_ascii=False, sort_keys=True)


# ---------------------------------------------------------------------------- tasks
@dataclass
class Action:
    name: str
    arguments: dict[str, Any]
    requestor: str = "assistant"


@dataclass
class Blueprint:
    """A proposed task: the user's scenario and what a correct agent does, before verification.

    ``known_info`` is what the user can tell (key -> value, e.g. name, zip); ``reason`` is why they
    call; ``communicate`` are facts the agent must state to the user (found by the gold actions);
    ``kind`` names the template (one call, multi-step, policy refusal...)."""

    kind: str
    reason: str
    known_info: dict[str, str]
    actions: list[Action]
    task_instructions: str = ""
    unknown_info: str = ""
    communicate: list[str] = field(default_factory=list)
    persona: str = ""
    checkpoints: list[str] = field(default_factory=list)
    difficulty: int = 1


class Domain:
    """One executable domain: database generator, toolkit, policy, blueprint generator."""

    name: ClassVar[str]
    toolkit: ClassVar[type[Toolkit]]
    policy: ClassVar[str]
    description: ClassVar[str]

    @classmethod
    def make_db(cls, seed: int, size: int) -> BaseModel:
        raise NotImplementedError

    @classmethod
    def propose(cls, db: BaseModel, rng: random.Random) -> Blueprint:
        """One task proposal from the database; it may be wrong (the verifier rejects it)."""
        raise NotImplementedError

    @classmethod
    def fresh(cls, db: BaseModel) -> Toolkit:
        return cls.toolkit(db.model_copy(deep=True))

    @classmethod
    def load_db(cls, data: dict[str, Any]) -> BaseModel:
        return cls.toolkit.db_model.model_validate(data)


PERSONAS = ["a busy parent who writes briefly", "a retired teacher who is polite and precise",
            "a student who writes casually", "a small-business owner in a hurry",
            "a traveller on a phone with patchy signal", "a detail-oriented engineer"]
FIRST = ["Ava", "Liam", "Noah", "Mia", "Omar", "Yuki", "Sofia", "Ivan", "Chen", "Lena", "Ravi", "Zoe",
         "Mateo", "Aisha", "Jonas", "Elif", "Kai", "Nora", "Tariq", "Ines"]
LAST = ["Garcia", "Kim", "Smith", "Okafor", "Rossi", "Nguyen", "Muller", "Silva", "Patel", "Johansson",
        "Haddad", "Tanaka", "Moreau", "Kowalski", "Ali", "Brown"]
CITIES = ["Austin", "Boston", "Denver", "Seattle", "Chicago", "Miami", "Portland", "Atlanta"]
