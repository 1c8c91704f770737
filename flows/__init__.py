"""Prefect flows: one per stage, and `k2_pipeline` chaining them. Also the `k2` CLI (flows.cli)."""
