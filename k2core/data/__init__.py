"""The pre-training data stages: ingest, curate, rephrase, tokenize (the stage list is k2core/pipeline.py)."""
