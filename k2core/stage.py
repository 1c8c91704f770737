"""The stage contract: StageSpec, StageContext, versions, and execute = run -> gate -> commit.

A stage is a function of (input artifacts, its config section) -> one output artifact.
Its version is hash(stage name, stage code version, canonical config section, input versions,
source fingerprint); a committed artifact with that version is reused (a cache hit). Because a
version depends only on input *versions*, a whole pipeline's versions are known before anything
runs (k2core.pipeline.plan), which is how a fully cached run is recognised without starting any
work. This module imports no stage: the built-in stage list and the registry are k2core/pipeline.py.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import pandas as pd

from k2core.config import PipelineConfig
from k2core.errors import K2Error
from k2core.progress import Hook, Progress
from k2core.runs import now_iso
from k2core.store import Artifact, Store, StoreError


class StageFailed(K2Error):
    pass


class GateFailed(StageFailed):
    def __init__(self, stage: str, version: str, report: Any, location: str):
        self.report, self.location = report, location
        super().__init__(f"{stage}/{version}: {report.summary()} — output kept for inspection at {location}")


@dataclass
class StageContext:
    """What a stage's run function gets."""

    stage: str
    version: str
    cfg: Any                      # the stage's own config section
    pipeline: PipelineConfig
    workdir: Path                 # write outputs here; committed when the gate passes
    inputs: dict[str, Artifact]
    store: Store
    hooks: tuple[Hook, ...] = ()
    log: Callable[[str], None] = print

    def progress(self, total: float | None = None, desc: str = "", unit: str = "it",
                 unit_scale: bool = False) -> Progress:
        return Progress(total, desc or self.stage, unit, self.hooks, unit_scale=unit_scale)


def read_parquet_columns(workdir: Path, columns: list[str], subdir: str = "data") -> pd.DataFrame:
    """Default gate frame: the named columns of every Parquet file under workdir/subdir."""
    import pandas as pd
    import pyarrow.parquet as pq

    files = sorted((workdir / subdir).glob("*.parquet"))
    if not files:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in columns})
    return pd.concat([pq.read_table(f, columns=columns).to_pandas() for f in files], ignore_index=True)


Ref = Callable[..., Any] | str          # a callable, or "module:attribute" imported on first use


def resolve_ref(ref: Ref) -> Callable[..., Any]:
    if callable(ref):
        return ref
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class StageSpec:
    """One stage. `run`, `fingerprint` and `gate_frame` may be "module:attribute" references, so
    listing and planning the pipeline imports no stage code (nor torch)."""

    name: str
    section: str                                   # attribute of PipelineConfig
    inputs: tuple[str, ...]                        # upstream stage names
    run: Ref                                       # StageContext -> metrics
    suite: Callable[[Any], dict[str, Any]]         # section -> expectation suite
    code_version: str                              # bump on intentional behaviour changes
    modules: tuple[str, ...] = ()                  # sources hashed into the code version
    fingerprint: Ref | None = None                 # PipelineConfig -> raw-source identity
    gate_frame: Ref = read_parquet_columns         # (workdir, columns) -> the frame the suite checks
    prepare: Ref | None = None                     # PipelineConfig -> None: start slow resources (a
    #                                                cluster) early, when a run that computes this stage begins
    description: str = ""
    select_inputs: Ref | None = None               # PipelineConfig -> the inputs this config reads
    #                                                (a subset of `inputs`; default: all of them)

    def inputs_for(self, cfg: Any | None) -> tuple[str, ...]:
        """The upstream stages a run under `cfg` reads (in `inputs` order)."""
        if cfg is None or self.select_inputs is None:
            return self.inputs
        want = set(resolve_ref(self.select_inputs)(cfg))
        return tuple(d for d in self.inputs if d in want)

    def code_hash(self) -> str:
        """Declared version + a hash of the modules' source: edited code -> new version."""
        h = hashlib.sha256(self.code_version.encode())
        for mod in self.modules:
            spec = importlib.util.find_spec(mod)
            if spec is None or spec.origin is None:
                raise K2Error(f"stage {self.name}: module {mod} not found")
            h.update(Path(spec.origin).read_bytes())
        return f"{self.code_version}+{h.hexdigest()[:10]}"


# ---------------------------------------------------------------------------- versions
def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def compute_version(name: str, code: str, section: dict[str, Any], inputs: dict[str, str],
                    source: dict[str, Any] | None) -> str:
    payload = canonical({"stage": name, "code": code, "config": section, "inputs": inputs, "source": source})
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


@dataclass
class PlannedStage:
    spec: StageSpec
    version: str
    code: str
    section: dict[str, Any]
    inputs: dict[str, str]                  # input stage -> version
    source: dict[str, Any] | None
    cached: bool = False
    reason: str = ""                        # why it (re)computes

    @property
    def name(self) -> str:
        return self.spec.name

    def to_record(self) -> dict[str, Any]:
        """JSON-safe form, handed to a stage flow so it does not plan again."""
        return {"stage": self.name, "version": self.version, "code": self.code, "section": self.section,
                "inputs": self.inputs, "source": self.source, "cached": self.cached, "reason": self.reason}

    @classmethod
    def from_record(cls, spec: StageSpec, d: dict[str, Any]) -> "PlannedStage":
        if d.get("stage") != spec.name:
            raise K2Error(f"a plan of stage {d.get('stage')!r} was handed to stage {spec.name}")
        return cls(spec, d["version"], d["code"], d["section"], dict(d["inputs"]), d["source"],
                   bool(d.get("cached")), d.get("reason", ""))


# ---------------------------------------------------------------------------- execute
@dataclass
class StageOutcome:
    stage: str
    version: str
    status: str                      # cache_hit | computed
    reason: str
    seconds: float
    location: str
    metrics: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] | None = None
    manifest: dict[str, Any] = field(default_factory=dict)


def execute(p: PlannedStage, cfg: PipelineConfig, store: Store, *, force: bool = False,
            run_id: str | None = None, flow_run_id: str | None = None,
            hooks: tuple[Hook, ...] = (), log: Callable[[str], None] = print) -> StageOutcome:
    """Reuse the committed artifact, or run the stage, gate its output and commit it.

    Raises GateFailed (output kept aside under rejected/) or StageFailed; either way nothing
    becomes visible under artifacts/.
    """
    t0 = time.monotonic()
    if not force and store.has_artifact(p.name, p.version):
        art = store.artifact(p.name, p.version)
        return StageOutcome(p.name, p.version, "cache_hit", "", time.monotonic() - t0, art.location,
                            art.metrics, art.manifest.get("quality"), art.manifest)
    inputs = {}
    for dep, version in p.inputs.items():
        try:
            inputs[dep] = store.artifact(dep, version)
        except StoreError:
            raise StageFailed(f"{p.name} needs {dep}/{version}, which is not committed in {store.uri}; "
                              f"run the stages up to {dep} first") from None
    reason = "forced (--force)" if force else p.reason
    started = now_iso()
    with store.workdir(p.name, p.version) as wd:
        section = getattr(cfg, p.spec.section)
        ctx = StageContext(p.name, p.version, section, cfg, wd, inputs, store, hooks, log)
        metrics = resolve_ref(p.spec.run)(ctx)
        run_s = time.monotonic() - t0
        from k2core.quality import run_gate  # lazy: Great Expectations is slow to import

        suite = p.spec.suite(section)
        report = run_gate(suite, resolve_ref(p.spec.gate_frame)(wd, suite.get("columns", [])), metrics)
        manifest = {
            "code_version": p.code,
            "config": p.section,
            "inputs": {**{d: {"stage": d, "version": v} for d, v in p.inputs.items()},
                       **({"source": p.source} if p.source is not None else {})},
            "created_at": now_iso(), "started_at": started,
            "timings": {"run_s": round(run_s, 3), "total_s": round(time.monotonic() - t0, 3)},
            "metrics": metrics, "quality": report.to_dict(),
            "run_id": run_id, "flow_run_id": flow_run_id, "forced": force,
        }
        if not report.success:
            location = store.reject(p.name, p.version, wd, manifest)
            raise GateFailed(p.name, p.version, report, location)
        art = store.commit(p.name, p.version, wd, manifest, replace=force)
    return StageOutcome(p.name, p.version, "computed", reason, time.monotonic() - t0, art.location,
                        metrics, report.to_dict(), art.manifest)
