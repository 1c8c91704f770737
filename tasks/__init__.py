"""Prefect tasks: thin wrappers around k2core calls (retries, logging, UI artifacts)."""
