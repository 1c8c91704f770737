"""Which model: a :class:`~k2core.config.ModelRef` resolved to a checkpoint directory, a committed
artifact's ``model/`` folder or an OpenAI-compatible server, with the identity that goes into a
stage's version (a new model, a new version).

    ref = ModelRef(artifact="pretrain")                   # the newest committed pretrain model
    m = resolve_model(ref, store)                         # ResolvedModel, or None when there is none
    m.describe(), m.identity, m.local_checkpoint(store)   # "native:pretrain/…", {...}, a local directory

Stages pass a ``default`` for a ref that names nothing: the rephrase stage's teacher is
:func:`raw_text_teacher` — the newest pretrain model whose tokens had no rephrase teacher behind them,
so a nightly rerun settles into cache hits instead of each model teaching the next.
The LLM behind a resolved model is opened by :func:`k2core.infer.llm.open_model`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from k2core.config import ModelRef
from k2core.errors import K2Error
from k2core.store import Store

Default = Callable[[Store], "tuple[str, str] | None"]   # store -> (stage, version) of a model artifact


@dataclass(frozen=True)
class ResolvedModel:
    engine: str                       # native | vllm | openai
    identity: dict[str, Any]          # hashed into versions
    checkpoint: str | None = None     # a local checkpoint directory (checkpoint refs)
    artifact: tuple[str, str] | None = None   # (stage, version) whose model/ holds the checkpoint
    base_url: str | None = None
    model: str | None = None

    def describe(self) -> str:
        if self.engine == "openai":
            return f"openai:{self.model} at {self.base_url}"
        if self.artifact is not None:
            return f"{self.engine}:{self.artifact[0]}/{self.artifact[1]}"
        return f"{self.engine}:{self.checkpoint}"

    def local_checkpoint(self, store: Store) -> str:
        """A local directory with the checkpoint's files (an artifact's are fetched and
        sha256-checked from any store)."""
        if self.artifact is None:
            if self.checkpoint is None:
                raise K2Error(f"{self.describe()} is a server, not a checkpoint")
            return self.checkpoint
        return str(model_dir(store.artifact(*self.artifact)))


def model_dir(art) -> Path:
    """A committed artifact's ``model/`` folder as a local directory (every file fetched)."""
    paths = [art.path(f) for f in art.files("model/")]
    if not any(p.endswith("model/config.json") for p in art.files("model/")):
        raise K2Error(f"{art.stage}/{art.version} has no model/config.json")
    return Path(paths[0]).parent


def named_model(ref: ModelRef, store: Store, where: str) -> "ResolvedModel | None":
    """The model `ref` names explicitly (a server, a checkpoint or an artifact); None when it names
    none (the stage then uses its input's model, which is in its version already)."""
    if ref.engine != "openai" and not ref.checkpoint and not ref.artifact:
        return None
    return resolve_model(ref, store, where=where)


def artifact_model(art, engine: str = "native") -> "ResolvedModel | None":
    """A committed artifact's model (its ``model/`` folder), or None when it has none."""
    if art is None or "model/config.json" not in art.files("model/"):
        return None
    return ResolvedModel(engine, {"engine": engine, "artifact": f"{art.stage}/{art.version}"},
                         artifact=(art.stage, art.version))


def resolve_model(ref: ModelRef, store: Store, default: Default | None = None,
                  where: str = "model") -> ResolvedModel | None:
    """`ref` as a :class:`ResolvedModel`; None when it names no model and `default` finds none.

    A checkpoint must hold config.json; an artifact ``STAGE`` is that stage's newest committed
    artifact with a model, ``STAGE/VERSION`` that one (an error when it is not committed). Errors
    name the setting as `where` (the ref's place in the config, e.g. ``rephrase.teacher``)."""
    if ref.engine == "openai":
        return ResolvedModel("openai", {"engine": "openai", "base_url": ref.base_url, "model": ref.model},
                             base_url=ref.base_url, model=ref.model)
    if ref.checkpoint:
        path = Path(ref.checkpoint).expanduser().resolve()
        if not (path / "config.json").exists():
            raise K2Error(f"{where}.checkpoint = {ref.checkpoint}: no config.json there")
        return ResolvedModel(ref.engine, {"engine": ref.engine, "checkpoint": str(path),
                                          "mtime": int((path / "config.json").stat().st_mtime)}, checkpoint=str(path))
    if ref.artifact:
        stage, _, version = ref.artifact.partition("/")
        if version:
            if not store.has_artifact(stage, version) or not _has_model(store, stage, version):
                raise K2Error(f"{where}.artifact = {ref.artifact}: no committed {stage}/{version} with a model/ "
                              f"in {store.uri}")
            found: tuple[str, str] | None = (stage, version)
        else:
            art = store.newest(stage, lambda a: "model/config.json" in a.files("model/"))
            found = (stage, art.version) if art is not None else None
            if found is None:
                raise K2Error(f"{where}.artifact = {stage}: no committed {stage} artifact with a model/ in {store.uri}")
    else:
        found = default(store) if default is not None else None
    if found is None:
        return None
    return ResolvedModel(ref.engine, {"engine": ref.engine, "artifact": f"{found[0]}/{found[1]}"}, artifact=found)


def _has_model(store: Store, stage: str, version: str) -> bool:
    return "model/config.json" in store.artifact(stage, version).files("model/")


# ---------------------------------------------------------------------------- the teacher rule
def raw_text_teacher(store: Store) -> tuple[str, str] | None:
    """The newest pretrain model trained on raw text, with its tokenizer; None if there is none.

    Teachers are models whose tokens had no rephrase teacher behind them: otherwise every retrain
    would make a new teacher, whose rephrasings make a new model, and reruns would never settle."""
    art = store.newest("pretrain", lambda a: _trained_on_raw_text(store, a.manifest))
    if art is None or "model/tokenizer.json" not in art.files("model/"):
        return None
    return ("pretrain", art.version)


def _trained_on_raw_text(store: Store, manifest: dict[str, Any]) -> bool:
    tok = manifest.get("inputs", {}).get("tokenize", {}).get("version")
    if tok is None or not store.has_artifact("tokenize", tok):
        return False
    reph = store.artifact("tokenize", tok).manifest.get("inputs", {}).get("rephrase", {}).get("version")
    if reph is None:                      # tokenized before the rephrase stage existed
        return True
    return store.has_artifact("rephrase", reph) and store.artifact("rephrase", reph).metrics.get("teacher") == "none"
