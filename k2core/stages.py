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
