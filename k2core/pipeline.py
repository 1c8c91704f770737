"""The composition root: the built-in stage list, the registry, stage selection and planning.

    ingest → curate → rephrase → tokenize → pretrain → tools → synthesize → sft → rl → evaluate   (later issues append theirs)

A stage's code is referenced as "module:attribute" and imported when the stage runs, so listing
and planning the pipeline (and a fully cached run) import no stage code. `plan` derives every
selected stage's version from its config section, its code and its inputs' versions — before
anything runs — and says why each stage that is not cached recomputes.
"""
from __future__ import annotations

from k2core.config import PipelineConfig
from k2core.errors import K2Error
from k2core.runs import load_run
from k2core.stage import PlannedStage, StageSpec, compute_version, resolve_ref
from k2core.store import Store
from schemas.suites import (curate_suite, evaluate_suite, ingest_suite, pretrain_suite, rephrase_suite, rl_suite, sft_suite, synthesize_suite,
                            tokenize_suite, tools_suite)

# ---------------------------------------------------------------------------- registry
_REGISTRY: dict[str, StageSpec] = {}
_ORDER: list[str] = []


def register(spec: StageSpec) -> StageSpec:
    """Append a stage to the pipeline; its inputs must be registered already."""
    if spec.name in _REGISTRY:
        raise K2Error(f"stage {spec.name} is registered already")
    for dep in spec.inputs:
        if dep not in _REGISTRY:
            raise K2Error(f"stage {spec.name}: input stage {dep} must be registered first")
    _ORDER.append(spec.name)
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)
    if name in _ORDER:
        _ORDER.remove(name)


def stages() -> list[StageSpec]:
    return [_REGISTRY[n] for n in _ORDER]


def get_stage(name: str) -> StageSpec:
    if name not in _REGISTRY:
        raise K2Error(f"unknown stage {name!r}; stages: {', '.join(_ORDER)}")
    return _REGISTRY[name]


# ---------------------------------------------------------------------------- the built-in stages
INGEST = register(StageSpec(
    name="ingest", section="ingest", inputs=(),
    run="k2core.data.ingest:run", suite=ingest_suite, fingerprint="k2core.data.ingest:fingerprint",
    code_version="1", modules=("k2core.data.ingest", "k2core.sources", "schemas.documents"),
    description="raw JSONL / Parquet / stdlib documents -> normalised Parquet shards + rejects",
))

CURATE = register(StageSpec(
    name="curate", section="curate", inputs=("ingest",),
    run="k2core.data.curate:run", suite=curate_suite, code_version="1", prepare="k2core.data.curate:prepare",
    modules=("k2core.data.curate", "k2core.text.filters", "k2core.text.words", "k2core.text.dedup",
             "schemas.documents"),
    description="quality filters (Gopher, C4, FineWeb, code), exact + MinHash dedup, domain tags",
))

REPHRASE = register(StageSpec(
    name="rephrase", section="rephrase", inputs=("curate",),
    run="k2core.data.rephrase:run", suite=rephrase_suite, code_version="1",
    gate_frame="k2core.data.rephrase:gate_frame", fingerprint="k2core.data.rephrase:fingerprint",
    modules=("k2core.data.rephrase", "k2core.text.chunks", "k2core.infer.fidelity", "k2core.infer.llm",
             "k2core.models"),
    description="knowledge / math documents rewritten chunk-wise by a teacher LLM, fidelity-verified",
))

TOKENIZE = register(StageSpec(
    name="tokenize", section="tokenize", inputs=("curate", "rephrase"),
    run="k2core.data.tokenize:run", suite=tokenize_suite, code_version="1",
    gate_frame="k2core.data.tokenize:gate_frame", modules=("k2core.data.tokenize", "k2core.text.special_tokens",
                                                           "k2core.text.chat_template"),
    description="byte-level BPE tokenizer (K2 chat tokens reserved) + packed token shards + validation shard",
))

PRETRAIN = register(StageSpec(
    name="pretrain", section="pretrain", inputs=("tokenize",),
    run="k2core.train.pretrain:run", suite=pretrain_suite, code_version="1",
    gate_frame="k2core.train.pretrain:gate_frame",
    modules=("k2core.train.pretrain", "k2core.train.loop", "k2core.train.probe", "k2core.model.k2",
             "k2core.model.config", "k2core.optim.muonclip", "k2core.optim.kernels"),
    description="K2 model + MuonClip: WSD schedule, resumable checkpoints, telemetry, HF-format model",
))

TOOLS = register(StageSpec(
    name="tools", section="tools", inputs=("pretrain",),
    run="k2core.agentic.tools:run", suite=tools_suite, code_version="1", fingerprint="k2core.agentic.tools:fingerprint",
    modules=("k2core.agentic.tools", "k2core.agentic.mcp", "k2core.agentic.domains.base",
             *(f"k2core.agentic.domains.{d}" for d in ("retail", "travel", "calendar", "bank"))),
    description="tool repository: real MCP servers harvested, catalogue files, synthetic tools from the teacher; "
                "validated, deduplicated",
))

SYNTHESIZE = register(StageSpec(
    name="synthesize", section="synthesize", inputs=("pretrain", "tools"),
    run="k2core.agentic.synthesize:run", suite=synthesize_suite, code_version="1",
    gate_frame="k2core.agentic.synthesize:gate_frame", fingerprint="k2core.agentic.synthesize:fingerprint",
    modules=("k2core.agentic.synthesize", "k2core.agentic.tasks", "k2core.agentic.blueprint", "k2core.agentic.rollout",
             "k2core.agentic.user", "k2core.agentic.judge", "k2core.agentic.simulator", "k2core.agentic.coding",
             "k2core.agentic.domains.base", "k2core.text.chat", "schemas.agentic",
             *(f"k2core.agentic.domains.{d}" for d in ("retail", "travel", "calendar", "bank"))),
    description="executable domains, verified tasks (τ²-shaped), blueprint + live trajectories, judged; "
                "only successes kept; train / heldout split",
))


SFT = register(StageSpec(
    name="sft", section="sft", inputs=("pretrain", "synthesize"),
    run="k2core.train.sft:run", suite=sft_suite, code_version="1", gate_frame="k2core.train.pretrain:gate_frame",
    modules=("k2core.train.sft", "k2core.train.sft_data", "k2core.train.loop", "k2core.train.probe", "k2core.eval.agentic",
             "k2core.model.k2", "k2core.text.chat", "k2core.optim.muonclip"),
    description="the pretrain model fine-tuned on synthesized trajectories (K2 chat format, assistant-only loss, "
                "packed conversations, MuonClip); held-out tool use before / after",
))

RL = register(StageSpec(
    name="rl", section="rl", inputs=("sft", "synthesize"),
    run="k2core.rl.train:run", suite=rl_suite, code_version="1", gate_frame="k2core.train.pretrain:gate_frame",
    modules=("k2core.rl.train", "k2core.rl.gym", "k2core.rl.loss", "k2core.train.loop", "k2core.infer.engine",
             "k2core.model.k2", "k2core.text.chat", "k2core.optim.muonclip", "k2core.agentic.coding",
             "k2core.agentic.rollout", "k2core.agentic.tasks", "k2core.eval.agentic"),   # the tools environment
    description="the sft model trained on the verifiable-rewards gym (K1.5 loss, MuonClip, PTX, budgets, "
                "temperature decay); held-out reward before / after",
))

def evaluate_inputs(cfg: PipelineConfig) -> list[str]:
    """evaluate reads the models it scores, and synthesize only for the agentic suite."""
    return [*cfg.evaluate.models, *(["synthesize"] if "agentic" in cfg.evaluate.suites else [])]


EVALUATE = register(StageSpec(
    name="evaluate", section="evaluate", inputs=("pretrain", "sft", "rl", "synthesize"),
    run="k2core.eval.stage:run", suite=evaluate_suite, code_version="1", gate_frame="k2core.eval.stage:gate_frame",
    select_inputs=evaluate_inputs,
    modules=("k2core.eval.stage", "k2core.eval.suites", "k2core.eval.bfcl", "k2core.eval.humaneval",
             "k2core.eval.livecodebench", "k2core.eval.answers", "k2core.eval.agentic", "k2core.eval.metrics",
             "k2core.eval.files", "k2core.eval.swe", "k2core.rl.gym", "k2core.agentic.rollout", "k2core.text.chat", "k2core.infer.engine",
             "k2core.sandbox"),
    description="benchmark suites in their native formats (HumanEval, LiveCodeBench, BFCL, agentic pass^k, "
                "AIME-style math, GPQA-style MCQ, the gym's held-out seeds, SWE-style repositories) on the run's models",
))

# ---------------------------------------------------------------------------- selection and planning
def select_stages(expr: str | None) -> list[str]:
    """`None` -> all; `a,b` -> those; `a..b` -> the pipeline slice from a to b inclusive."""
    names = list(_ORDER)
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
            todo.extend(d for d in get_stage(n).inputs_for(cfg) if d not in pinned)
    versions: dict[str, str] = dict(pinned)
    out = []
    for spec in stages():
        if spec.name not in needed:
            continue
        section = getattr(cfg, spec.section).model_dump(mode="json")
        inputs = {dep: versions[dep] for dep in spec.inputs_for(cfg)}
        source = resolve_ref(spec.fingerprint)(cfg) if spec.fingerprint else None
        code = spec.code_hash()
        version = compute_version(spec.name, code, section, inputs, source)
        versions[spec.name] = version
        if spec.name in selected:
            p = PlannedStage(spec, version, code, section, inputs, source)
            p.cached = store.has_artifact(spec.name, version)
            p.reason = "" if p.cached else why_recompute(p, store)
            out.append(p)
    return out


def prepare(cfg: PipelineConfig, planned: list[PlannedStage], force: bool = False) -> None:
    """Let every stage that will compute start its slow resources now (curate: its Dask cluster
    boots on the other cores while ingest runs)."""
    for p in planned:
        if p.spec.prepare is not None and (force or not p.cached):
            resolve_ref(p.spec.prepare)(cfg)


def why_recompute(p: PlannedStage, store: Store) -> str:
    """Compare with the newest committed artifact of the same stage: what changed?"""
    newest = store.newest(p.name)
    if newest is None:
        return "first run of this stage in the store"
    latest = newest.manifest
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


def upstream_of(store: Store, stage: str, run_id: str, cfg: PipelineConfig | None = None) -> dict[str, str]:
    """The versions of `stage`'s inputs (those `cfg` reads) that an earlier run used (to rerun the
    stage against them)."""
    record = load_run(store, run_id)
    out = {}
    for dep in get_stage(stage).inputs_for(cfg):
        try:
            version = record.stage(dep).version
        except KeyError:
            raise K2Error(f"run {run_id} has no {dep} stage to take {stage}'s input from") from None
        if not version or not store.has_artifact(dep, version):
            raise K2Error(f"run {run_id}'s {dep}/{version} is not committed in {store.uri}")
        out[dep] = version
    return out
