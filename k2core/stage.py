"""The stage contract: registry, versions, planning, and execute = run -> gate -> commit.

A stage is a function of (input artifacts, its config section) -> one output artifact.
Its version is hash(stage name, stage code version, canonical config section, input versions,
source fingerprint); a committed artifact with that version is reused (a cache hit). Because a
version depends only on input *versions*, a whole pipeline's versions are known before anything
runs (`plan`), which is how a fully cached run is recognised without starting any work.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from k2core.config import PipelineConfig
from k2core.progress import Hook, Progress
from k2core.store import Artifact, Store, StoreError


class K2Error(RuntimeError):
    """A failure to report to the user as one line (no traceback)."""


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
    import pyarrow.parquet as pq

    files = sorted((workdir / subdir).glob("*.parquet"))
    if not files:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in columns})
    return pd.concat([pq.read_table(f, columns=columns).to_pandas() for f in files], ignore_index=True)


@dataclass(frozen=True)
class StageSpec:
    name: str
    section: str                                   # attribute of PipelineConfig
    inputs: tuple[str, ...]                        # upstream stage names
    run: Callable[[StageContext], dict[str, Any]]  # returns metrics
    suite: Callable[[Any], dict[str, Any]]         # section -> expectation suite
    code_version: str                              # bump on intentional behaviour changes
    modules: tuple[str, ...] = ()                  # sources hashed into the code version
    fingerprint: Callable[[PipelineConfig], dict[str, Any]] | None = None  # raw-source identity
    gate_frame: Callable[[Path, list[str]], pd.DataFrame] = read_parquet_columns
    description: str = ""

    def code_hash(self) -> str:
        """Declared version + a hash of the modules' source: edited code -> new version."""
        h = hashlib.sha256(self.code_version.encode())
        for mod in self.modules:
            spec = importlib.util.find_spec(mod)
            if spec is None or spec.origin is None:
                raise K2Error(f"stage {self.name}: module {mod} not found")
            h.update(Path(spec.origin).read_bytes())
        return f"{self.code_version}+{h.hexdigest()[:10]}"


# ---------------------------------------------------------------------------- registry
_REGISTRY: dict[str, StageSpec] = {}
_ORDER: list[str] = []


def register(spec: StageSpec) -> StageSpec:
    for dep in spec.inputs:
        if dep not in _REGISTRY:
            raise ValueError(f"stage {spec.name}: input stage {dep} must be registered first")
    if spec.name not in _REGISTRY:
        _ORDER.append(spec.name)
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)
    if name in _ORDER:
        _ORDER.remove(name)


def _builtins() -> None:
    import k2core.stages  # noqa: F401  (registers the built-in stages)


def stages() -> list[StageSpec]:
    _builtins()
    return [_REGISTRY[n] for n in _ORDER]


def get_stage(name: str) -> StageSpec:
    _builtins()
    if name not in _REGISTRY:
        raise K2Error(f"unknown stage {name!r}; stages: {', '.join(_ORDER)}")
    return _REGISTRY[name]


def select_stages(expr: str | None) -> list[str]:
    """`None` -> all; `a,b` -> those; `a..b` -> the pipeline slice from a to b inclusive."""
    names = [s.name for s in stages()]
    if not expr:
        return names
    if ".." in expr:
        a, _, b = expr.partition("..")
        a, b = a.strip() or names[0], b.strip() or names[-1]
        for n in (a, b):
            get_stage(n)
        i, j = names.index(a), names.index(b)
        if i > j:
            raise K2Error(f"--stages {expr}: {a} comes after {b} in the pipeline")
        return names[i:j + 1]
    picked = [s.strip() for s in expr.split(",") if s.strip()]
    for n in picked:
        get_stage(n)
    return [n for n in names if n in picked]


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


def plan(cfg: PipelineConfig, store: Store, selected: list[str],
         pinned: dict[str, str] | None = None) -> list[PlannedStage]:
    """Versions and cache status of `selected` stages (and of their upstream, to derive inputs).

    `pinned` fixes upstream versions (a rerun against an earlier run's artifacts).
    """
    pinned = pinned or {}
    needed, todo = set(), list(selected)
    while todo:  # selected stages and their upstream, cut where a version is pinned
        n = todo.pop()
        if n not in needed:
            needed.add(n)
            todo.extend(d for d in get_stage(n).inputs if d not in pinned)
    versions: dict[str, str] = dict(pinned)
    out = []
    for spec in stages():
        if spec.name not in needed:
            continue
        section_model = getattr(cfg, spec.section)
        section = section_model.model_dump(mode="json")
        inputs = {dep: versions[dep] for dep in spec.inputs}
        source = spec.fingerprint(cfg) if spec.fingerprint else None
        code = spec.code_hash()
        version = compute_version(spec.name, code, section, inputs, source)
        versions[spec.name] = version
        if spec.name in selected:
            p = PlannedStage(spec, version, code, section, inputs, source)
            p.cached = store.has_artifact(spec.name, version)
            p.reason = "" if p.cached else why_recompute(p, store)
            out.append(p)
    return out


def why_recompute(p: PlannedStage, store: Store) -> str:
    """Compare with the newest committed artifact of the same stage: what changed?"""
    latest = None
    for stage, version in store.artifacts(p.name):
        m = store.artifact(stage, version).manifest
        if latest is None or m.get("created_at", "") > latest.get("created_at", ""):
            latest = m
    if latest is None:
        return "first run of this stage in the store"
    changes = []
    if latest.get("code_version") != p.code:
        changes.append("code changed")
    old_cfg = latest.get("config", {})
    keys = sorted(k for k in set(old_cfg) | set(p.section) if old_cfg.get(k) != p.section.get(k))
    if keys:
        changes.append("config changed: " + ", ".join(f"{p.spec.section}.{k}" for k in keys))
    old_inputs = {k: v.get("version") for k, v in latest.get("inputs", {}).items() if k != "source"}
    changed_inputs = sorted(k for k in p.inputs if old_inputs.get(k) != p.inputs[k])
    if changed_inputs:
        changes.append("new input: " + ", ".join(changed_inputs))
    if p.source is not None and latest.get("inputs", {}).get("source") != p.source:
        changes.append("source data changed")
    return "; ".join(changes) or "not in the store"


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


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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
        metrics = p.spec.run(ctx)
        run_s = time.monotonic() - t0
        from k2core.quality import run_gate  # lazy: Great Expectations is slow to import

        suite = p.spec.suite(section)
        report = run_gate(suite, p.spec.gate_frame(wd, suite.get("columns", [])), metrics)
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
