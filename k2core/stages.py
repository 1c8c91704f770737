"""The built-in stages, registered in pipeline order. Later issues append theirs."""
from k2core.data import ingest
from k2core.stage import StageSpec, register
from schemas.suites import ingest_suite

INGEST = register(StageSpec(
    name="ingest", section="ingest", inputs=(),
    run=ingest.run, suite=ingest_suite, fingerprint=ingest.fingerprint,
    code_version="1", modules=("k2core.data.ingest", "k2core.data.sources", "schemas.documents"),
    description="raw JSONL / Parquet / stdlib documents -> normalised Parquet shards + rejects",
))
