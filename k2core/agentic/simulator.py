"""The tool simulator: the teacher as a world model for tools with no backend (synthetic and
catalogue tools). Each conversation carries a JSON state; a call sends the tool's schema, the
state and the arguments (prompt ``prompts/tool_simulator.txt``) and expects
``{"result": ..., "state": ...}``. A seeded share of calls is asked to fail realistically
(``failure_rate``) or to hit an edge case (``edge_rate``). Every answer is validated against the
tool's return schema; an answer that does not parse or validate becomes an error result and is
recorded on the episode (``simulator_invalid``). All pending calls of a round go out as one batch.
"""
from __future__ import annotations

import json
import random
import string
from pathlib import Path
from typing import Any

PROMPT = Path(__file__).parent / "prompts" / "tool_simulator.txt"
MODES = {"normal": "Answer as the real tool would.",
         "failure": "This call fails: answer with a realistic error as the result.",
         "edge": "This call hits an edge case (empty result, boundary value): answer accordingly."}


class ToolSimulator:
    def __init__(self, llm, params, failure_rate: float = 0.1, edge_rate: float = 0.1, seed: int = 0,
                 prompt_file: str | None = None):
        self.llm, self.params = llm, params
        self.failure_rate, self.edge_rate = failure_rate, edge_rate
        self.rng = random.Random(seed)
        self.template = string.Template(Path(prompt_file or PROMPT).read_text())
        self.calls = self.valid = 0

    def _mode(self) -> str:
        x = self.rng.random()
        return "failure" if x < self.failure_rate else "edge" if x < self.failure_rate + self.edge_rate else "normal"

    def answer(self, pending: list[tuple[Any, dict[str, Any], dict[str, Any], dict[str, Any]]]) -> None:
        """Fill each pending (episode, tool message, function schema, arguments) in one batch."""
        import jsonschema

        from k2core.agentic.tools import first_json_object

        prompts, modes = [], []
        for e, _, fn, args in pending:
            mode = self._mode()
            modes.append(mode)
            state = e.sim_state
            prompts.append(self.template.safe_substitute(
                name=fn["name"], description=fn.get("description", ""), parameters=json.dumps(fn.get("parameters", {})),
                returns=json.dumps(fn.get("returns") or {}), state=json.dumps(state), mode=MODES[mode],
                arguments=json.dumps(args)))
        fit = [self.llm.fits(p, self.params.max_tokens) for p in prompts]
        outs = iter(self.llm.generate([p for p, ok in zip(prompts, fit) if ok], self.params, progress=False)
                    if any(fit) else [])
        for (e, msg, fn, _), mode, ok in zip(pending, modes, fit):
            self.calls += 1
            if not ok:
                msg["content"] = e.error("simulator_invalid", f"Error: {fn['name']} failed (the call exceeds the "
                                                              "simulator's context)")
                continue
            out = next(outs)
            try:
                obj = first_json_object(out.text[out.text.index("{"):] if "{" in out.text else out.text)
                if not isinstance(obj, dict) or "result" not in obj:
                    raise ValueError("no result field")
                if mode != "failure" and fn.get("returns"):
                    jsonschema.validate(obj["result"], fn["returns"])
            except (ValueError, jsonschema.ValidationError) as err:
                why = getattr(err, "message", None) or str(err)
                msg["content"] = e.error("simulator_invalid", f"Error: {fn['name']} failed ({why[:120]})")
                continue
            self.valid += 1
            if isinstance(obj.get("state"), dict):
                e.sim_state = obj["state"]
            msg["content"] = json.dumps(obj["result"], ensure_ascii=False, sort_keys=True)
