"""Expectation suites: each stage's quality gate, as Great Expectations expectation specs.

A spec is ``{"type": <GE expectation class name>, **kwargs}``; k2core.quality turns it into the
GE object at gate time (GE is imported lazily: it costs seconds). Metric checks cover what data
expectations do not (rates, losses).
"""
from __future__ import annotations

from typing import Any


def ingest_suite(cfg: Any) -> dict[str, Any]:
    return {
        "name": "ingest",
        "columns": ["id", "n_chars", "source"],
        "expectations": [
            {"type": "ExpectTableRowCountToBeBetween", "min_value": 1},
            {"type": "ExpectColumnValuesToNotBeNull", "column": "id"},
            {"type": "ExpectColumnValuesToBeUnique", "column": "id"},
            {"type": "ExpectColumnValuesToMatchRegex", "column": "id", "regex": "^[0-9a-f]{32}$"},
            {"type": "ExpectColumnValuesToBeBetween", "column": "n_chars", "min_value": 1},
            {"type": "ExpectColumnValuesToNotBeNull", "column": "source"},
        ],
        "metric_checks": [
            {"metric": "reject_fraction", "max": cfg.max_reject_fraction},
        ],
    }


def curate_suite(cfg: Any) -> dict[str, Any]:
    return {
        "name": "curate",
        "columns": ["id", "n_chars", "domain", "exact_key"],
        "expectations": [
            {"type": "ExpectTableRowCountToBeBetween", "min_value": max(1, cfg.min_docs_out)},
            {"type": "ExpectColumnValuesToNotBeNull", "column": "id"},
            {"type": "ExpectColumnValuesToBeUnique", "column": "id"},
            {"type": "ExpectColumnValuesToBeUnique", "column": "exact_key"},      # no exact duplicate left
            {"type": "ExpectColumnValuesToBeBetween", "column": "n_chars", "min_value": 1,
             "max_value": cfg.length.max_chars},
            {"type": "ExpectColumnValuesToBeInSet", "column": "domain", "value_set": ["prose", "code", "math"]},
        ],
        "metric_checks": [
            {"metric": "drop_fraction", "max": cfg.max_drop_fraction},
            {"metric": "docs_out", "min": cfg.min_docs_out},
        ],
    }


def rephrase_suite(cfg: Any) -> dict[str, Any]:
    """Accepted rephrasings: well-formed (text, provenance, style); acceptance rate above the floor."""
    return {
        "name": "rephrase",
        "columns": ["text", "source_id", "style", "domain", "accepted"],
        "expectations": [
            {"type": "ExpectColumnValuesToNotBeNull", "column": "text"},
            {"type": "ExpectColumnValueLengthsToBeBetween", "column": "text", "min_value": 1},
            {"type": "ExpectColumnValuesToNotBeNull", "column": "source_id"},
            {"type": "ExpectColumnValuesToBeInSet", "column": "style", "value_set": [*cfg.styles, cfg.math_style]},
            {"type": "ExpectColumnValuesToBeInSet", "column": "accepted", "value_set": [True]},
        ],
        "metric_checks": [
            {"metric": "accept_rate_shortfall", "min": 0, "max": 0},   # accept_rate >= min_accept_rate
        ],
    }


def tokenize_suite(cfg: Any) -> dict[str, Any]:
    """Per-shard table: no empty shard, ids inside the vocabulary; token accounting exact."""
    return {
        "name": "tokenize",
        "columns": ["file", "split", "rows", "tokens", "max_id"],
        "expectations": [
            {"type": "ExpectTableRowCountToBeBetween", "min_value": 1},
            {"type": "ExpectColumnValuesToBeBetween", "column": "rows", "min_value": 1},
            {"type": "ExpectColumnValuesToBeBetween", "column": "max_id", "min_value": 0,
             "max_value": cfg.vocab_size - 1},
            {"type": "ExpectColumnValuesToBeInSet", "column": "split", "value_set": ["train", "val"]},
        ],
        "metric_checks": [
            {"metric": "id_headroom", "min": 0},            # max id < the trained vocabulary
            {"metric": "token_count_error", "min": 0, "max": 0},
            {"metric": "train_rows", "min": 1},
        ],
    }


def pretrain_suite(cfg: Any) -> dict[str, Any]:
    """Telemetry rows: losses finite; the model learned (held-out loss fell by the margin)."""
    return {
        "name": "pretrain",
        "columns": ["step", "loss"],
        "expectations": [
            {"type": "ExpectTableRowCountToBeBetween", "min_value": 1},
            {"type": "ExpectColumnValuesToNotBeNull", "column": "loss"},
        ],
        "metric_checks": [
            {"metric": "final_val_loss"},                    # present and finite
            {"metric": "val_loss_drop", "min": cfg.min_loss_drop},
            {"metric": "nan_steps", "max": 0},
        ],
    }
