"""Quality gates: a stage's Great Expectations suite plus metric checks, run before commit.

GX 1.x is imported lazily (~3 s on 2 cores) and kept off the network. A command that will gate
stages (`k2 run`) calls :func:`prewarm` first: a child process imports GX on another core while
this one imports Prefect and starts the stage, then validates every gate of the run — the same
`_run_expectations` on the same frame, sent over a pipe as Arrow IPC. Without it (or if the child
fails) the gate runs in process.
"""
from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class GateResult:
    check: str          # expectation type or "metric:<name>"
    column: str | None
    success: bool
    observed: str       # what was seen, e.g. "3 unexpected (0.15%): ['a', 'a']" or "0.93"
    expected: str       # the rule, e.g. "min_value=1"
    hint: str = ""      # on failure: the likely cause and the setting that fixes it


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
                 + (f" ({r.hint})" if r.hint else "") for r in self.failures]
        return f"gate '{self.suite}' failed: " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"suite": self.suite, "success": self.success, "results": [asdict(r) for r in self.results]}

    def table(self) -> list[dict[str, Any]]:
        return [{"check": r.check, "column": r.column or "", "success": r.success,
                 "observed": r.observed, "expected": r.expected, "hint": "" if r.success else r.hint}
                for r in self.results]


def _observed(result: dict[str, Any]) -> str:
    if "observed_value" in result:
        return repr(result["observed_value"])
    if "unexpected_count" in result:
        n = result["unexpected_count"]
        pct = result.get("unexpected_percent") or 0.0
        sample = result.get("partial_unexpected_list") or []
        return f"{n} unexpected ({pct:.3g}%)" + (f": {sample[:5]!r}" if n else "")
    return "n/a"


# ---------------------------------------------------------------------------- the gate process
class GateWorker:
    """Great Expectations in a child process (``python -m k2core.quality``): requests are a JSON
    header and the frame as Arrow IPC, length-prefixed on stdin; answers JSON on stdout."""

    def __init__(self) -> None:
        env = dict(os.environ, GX_ANALYTICS_ENABLED=os.environ.get("GX_ANALYTICS_ENABLED", "False"))
        self.proc = subprocess.Popen([sys.executable, "-m", "k2core.quality"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env)
        self.lock = threading.Lock()
        self.used = False

    def validate(self, name: str, specs: list[dict[str, Any]], frame: "pd.DataFrame") -> list[GateResult]:
        import pyarrow as pa

        sink = pa.BufferOutputStream()
        table = pa.Table.from_pandas(frame, preserve_index=False)
        with pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
        with self.lock:
            self.used = True
            _send(self.proc.stdin, json.dumps({"name": name, "specs": specs}).encode())
            _send(self.proc.stdin, sink.getvalue().to_pybytes())
            answer = json.loads(_recv(self.proc.stdout))
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return [GateResult(**r) for r in answer["results"]]

    def close(self) -> None:
        if self.proc.poll() is None and not self.used:      # nothing was gated (a cached run, a bad
            self.proc.kill()                                 # config): no need to wait for its import
            self.proc.wait()
        elif self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:       # still importing: nothing left to validate
                self.proc.kill()
                self.proc.wait()


def _send(stream, data: bytes) -> None:
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def _recv(stream) -> bytes:
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError("the gate process closed its pipe")
    (n,) = struct.unpack("<Q", head)
    return stream.read(n)


def _serve() -> None:
    """The child's loop: import GX once, then validate until stdin closes."""
    import pyarrow as pa

    import great_expectations  # noqa: F401  (the reason this process exists)

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr                 # nothing but answers on the pipe
    while True:
        try:
            head = json.loads(_recv(stdin))
        except EOFError:
            os._exit(0)      # nothing left to flush: skip tearing GX down (the parent waits for this)
        frame = pa.ipc.open_stream(_recv(stdin)).read_all().to_pandas()
        try:
            answer = {"results": [asdict(r) for r in _run_expectations(head["name"], head["specs"], frame)]}
        except Exception as e:              # noqa: BLE001 — reported to the parent, which raises it
            answer = {"error": f"{type(e).__name__}: {e}"}
        _send(stdout, json.dumps(answer).encode())


_worker: GateWorker | None = None


def prewarm() -> None:
    """Start this process's gate worker (once); later gates use it."""
    global _worker
    if _worker is None:
        import atexit

        _worker = GateWorker()
        atexit.register(_worker.close)


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
    rules = {k: v for k, v in spec.items() if k not in ("metric", "hint")}
    expected = ", ".join(f"{k} {v}" for k, v in rules.items())
    hint = spec.get("hint", "")
    value = metrics.get(name)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return GateResult(f"metric:{name}", None, False, f"missing ({value!r})", expected, hint)
    ok = math.isfinite(value)
    if "max" in rules and rules["max"] is not None:
        ok &= value <= rules["max"]
    if "min" in rules and rules["min"] is not None:
        ok &= value >= rules["min"]
    return GateResult(f"metric:{name}", None, bool(ok), f"{value:.6g}", expected, hint)


def run_gate(suite: dict[str, Any], frame: pd.DataFrame, metrics: dict[str, Any]) -> GateReport:
    """Validate `frame` against the suite's expectations and `metrics` against its metric checks."""
    global _worker
    results: list[GateResult] | None = [] if not suite.get("expectations") else None
    if results is None and _worker is not None and _worker.proc.poll() is None:
        try:
            results = _worker.validate(suite["name"], suite["expectations"], frame)
        except (OSError, EOFError, ValueError) as e:      # the child died: validate here instead
            print(f"k2: gate process failed ({type(e).__name__}: {e}); validating in process", file=sys.stderr)
            _worker = None
    if results is None:
        results = _run_expectations(suite["name"], suite["expectations"], frame)
    results += [_metric_check(spec, metrics) for spec in suite.get("metric_checks", [])]
    return GateReport(suite=suite["name"], success=all(r.success for r in results), results=results)


if __name__ == "__main__":
    _serve()
