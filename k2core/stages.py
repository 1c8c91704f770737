"""The built-in stages, registered in pipeline order. Later issues append theirs."""
from k2core.data import curate, ingest
from k2core.stage import StageSpec, register
from schemas.suites import curate_suite, ingest_suite

INGEST = register(StageSpec(
    name="ingest", section="ingest", inputs=(),
    run=ingest.run, suite=ingest_suite, fingerprint=ingest.fingerprint,
    code_version="1", modules=("k2core.data.ingest", "k2core.data.sources", "schemas.documents"),
    description="raw JSONL / Parquet / stdlib documents -> normalised Parquet shards + rejects",
))

CURATE = register(StageSpec(
    name="curate", section="curate", inputs=("ingest",),
    run=curate.run, suite=curate_suite, code_version="1",
    modules=("k2core.data.curate", "k2core.data.filters", "k2core.data.text", "k2core.data.dedup",
             "schemas.documents"),
    description="quality filters (Gopher, C4, FineWeb, code), exact + MinHash dedup, domain tags",
))

from k2core.data import rephrase, tokenize  # noqa: E402
from k2core.train import pretrain  # noqa: E402
from schemas.suites import pretrain_suite, rephrase_suite, tokenize_suite  # noqa: E402

REPHRASE = register(StageSpec(
    name="rephrase", section="rephrase", inputs=("curate",),
    run=rephrase.run, suite=rephrase_suite, code_version="1", gate_frame=rephrase.gate_frame,
    fingerprint=rephrase.fingerprint,
    modules=("k2core.data.rephrase", "k2core.data.fidelity", "k2core.infer.llm"),
    description="knowledge / math documents rewritten chunk-wise by a teacher LLM, fidelity-verified",
))

TOKENIZE = register(StageSpec(
    name="tokenize", section="tokenize", inputs=("curate", "rephrase"),
    run=tokenize.run, suite=tokenize_suite, code_version="1", gate_frame=tokenize.gate_frame,
    modules=("k2core.data.tokenize",),
    description="byte-level BPE tokenizer (K2 chat tokens reserved) + packed token shards + validation shard",
))

PRETRAIN = register(StageSpec(
    name="pretrain", section="pretrain", inputs=("tokenize",),
    run=pretrain.run, suite=pretrain_suite, code_version="1", gate_frame=pretrain.gate_frame,
    modules=("k2core.train.pretrain", "k2core.model.k2", "k2core.model.config", "k2core.optim.muonclip",
             "k2core.optim.kernels"),
    description="K2 model + MuonClip: WSD schedule, resumable checkpoints, telemetry, HF-format model",
))
