"""Quality gates: a stage's Great Expectations suite plus metric checks, run before commit.

GE 1.x is imported lazily (it takes seconds) and kept off the network.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd


@dataclass
class GateResult:
    check: str          # expectation type or "metric:<name>"
    column: str | None
    success: bool
    observed: str       # what was seen, e.g. "3 unexpected (0.15%): ['a', 'a']" or "0.93"
    expected: str       # the rule, e.g. "min_value=1"


@dataclass
class GateReport:
    suite: str
    success: bool
    results: list[GateResult] = field(default_factory=list)

    @property
    def failures(self) -> list[GateResult]:
        return [r for r in self.results if not r.success]

    def summary(self) -> str:
        if self.success:
            return f"gate '{self.suite}' passed ({len(self.results)} checks)"
        parts = [f"{r.check}{f'({r.column})' if r.column else ''}: observed {r.observed}, expected {r.expected}"
                 for r in self.failures]
        return f"gate '{self.suite}' failed: " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"suite": self.suite, "success": self.success, "results": [asdict(r) for r in self.results]}

    def table(self) -> list[dict[str, Any]]:
        return [{"check": r.check, "column": r.column or "", "success": r.success,
                 "observed": r.observed, "expected": r.expected} for r in self.results]


def _observed(result: dict[str, Any]) -> str:
    if "observed_value" in result:
        return repr(result["observed_value"])
    if "unexpected_count" in result:
        n = result["unexpected_count"]
        pct = result.get("unexpected_percent") or 0.0
        sample = result.get("partial_unexpected_list") or []
        return f"{n} unexpected ({pct:.3g}%)" + (f": {sample[:5]!r}" if n else "")
    return "n/a"


def _run_expectations(name: str, specs: list[dict[str, Any]], frame: pd.DataFrame) -> list[GateResult]:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx

    ctx = gx.get_context(mode="ephemeral")
    try:
        ctx.variables.progress_bars = {"globally": False}
    except Exception:  # older 1.x releases lack the switch; the bars only cost output
        pass
    batch_def = ctx.data_sources.add_pandas("k2").add_dataframe_asset(name) \
        .add_batch_definition_whole_dataframe("output")
    suite = gx.ExpectationSuite(name=name)
    for spec in specs:
        kwargs = {k: v for k, v in spec.items() if k != "type"}
        suite.add_expectation(getattr(gx.expectations, spec["type"])(**kwargs))
    suite = ctx.suites.add(suite)
    validation = ctx.validation_definitions.add(
        gx.ValidationDefinition(name=f"{name}-gate", data=batch_def, suite=suite))
    res = validation.run(batch_parameters={"dataframe": frame}, result_format="SUMMARY")
    out = []
    for r in res.results:
        kw = {k: v for k, v in r.expectation_config.kwargs.items() if k not in ("batch_id", "column")}
        out.append(GateResult(check=r.expectation_config.type, column=r.expectation_config.kwargs.get("column"),
                              success=bool(r.success), observed=_observed(r.result or {}),
                              expected=", ".join(f"{k}={v}" for k, v in kw.items()) or "-"))
    return out


def _metric_check(spec: dict[str, Any], metrics: dict[str, Any]) -> GateResult:
    name = spec["metric"]
    rules = {k: v for k, v in spec.items() if k != "metric"}
    expected = ", ".join(f"{k} {v}" for k, v in rules.items())
    value = metrics.get(name)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return GateResult(f"metric:{name}", None, False, f"missing ({value!r})", expected)
    ok = math.isfinite(value)
    if "max" in rules and rules["max"] is not None:
        ok &= value <= rules["max"]
    if "min" in rules and rules["min"] is not None:
        ok &= value >= rules["min"]
    return GateResult(f"metric:{name}", None, bool(ok), f"{value:.6g}", expected)


def run_gate(suite: dict[str, Any], frame: pd.DataFrame, metrics: dict[str, Any]) -> GateReport:
    """Validate `frame` against the suite's expectations and `metrics` against its metric checks."""
    results = _run_expectations(suite["name"], suite.get("expectations", []), frame) \
        if suite.get("expectations") else []
    results += [_metric_check(spec, metrics) for spec in suite.get("metric_checks", [])]
    return GateReport(suite=suite["name"], success=all(r.success for r in results), results=results)
