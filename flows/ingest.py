"""The `ingest` stage flow: raw documents -> normalised Parquet shards + rejects."""
from flows.stage import stage_flow

ingest = stage_flow("ingest")
