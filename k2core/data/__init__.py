"""Data stages: ingest (and, later, curation, rephrasing, tokenisation)."""
