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


def tools_suite(cfg: Any) -> dict[str, Any]:
    """The tool repository: ids unique, names well formed, known sources; enough tools, enough of
    them from real MCP servers, every schema valid (the stage rejects invalid ones, so none may
    remain)."""
    return {
        "name": "tools",
        "columns": ["tool_id", "name", "source", "parameters"],
        "expectations": [
            {"type": "ExpectTableRowCountToBeBetween", "min_value": max(1, cfg.min_tools)},
            {"type": "ExpectColumnValuesToBeUnique", "column": "tool_id"},
            {"type": "ExpectColumnValuesToMatchRegex", "column": "name", "regex": r"^[A-Za-z0-9_-]{1,64}$"},
            {"type": "ExpectColumnValuesToMatchRegex", "column": "source", "regex": r"^(?:mcp:.+|file:.+|synthetic)$"},
            {"type": "ExpectColumnValuesToNotBeNull", "column": "parameters"},
        ],
        "metric_checks": [
            {"metric": "ids_unique", "min": 1},
            {"metric": "schema_errors", "max": 0},
            {"metric": "mcp_shortfall", "min": 0, "max": 0},          # mcp_tools >= min_mcp_tools
            {"metric": "tools", "min": max(1, cfg.min_tools)},
        ],
    }


def synthesize_suite(cfg: Any) -> dict[str, Any]:
    """Kept trajectories: all successes, unique ids, known origins and splits; well formed (every
    call names a declared tool with valid arguments, every tool result answers a call, roles in
    order); no task in both splits; success rate within bounds."""
    return {
        "name": "synthesize",
        "columns": ["trajectory_id", "task_id", "origin", "split", "verdict"],
        "expectations": [
            {"type": "ExpectTableRowCountToBeBetween", "min_value": max(1, cfg.min_trajectories)},
            {"type": "ExpectColumnValuesToBeUnique", "column": "trajectory_id"},
            {"type": "ExpectColumnValuesToBeInSet", "column": "verdict", "value_set": ["success"]},
            {"type": "ExpectColumnValuesToBeInSet", "column": "origin", "value_set": ["blueprint", "live", "simulated"]},
            {"type": "ExpectColumnValuesToBeInSet", "column": "split", "value_set": ["train", "heldout"]},
        ],
        "metric_checks": [
            {"metric": "split_overlap", "max": 0},
            {"metric": "call_problems", "max": 0},
            {"metric": "schema_errors", "max": 0},
            {"metric": "success_rate_low", "max": 0},                  # success_rate >= min_success_rate
            {"metric": "success_rate_high", "max": 0},                 # success_rate <= max_success_rate
            {"metric": "trajectories", "min": max(1, cfg.min_trajectories)},
            {"metric": "trajectories_train", "min": 1,
             "hint": "no training trajectory: sft would have nothing to learn from"},
            {"metric": "trajectories_heldout", "min": 1,
             "hint": "no held-out trajectory: sft could not measure its held-out loss; raise "
                     "synthesize.tasks_per_domain or synthesize.heldout_fraction"},
            {"metric": "domains_synthesized", "min": 1 if cfg.domains else 0,
             "hint": "every domain in synthesize.domains was skipped: a domain's tasks need its k2-<domain> "
                     "MCP server in the tools stage; keep tools.builtin_servers=true (the default) or list "
                     "those servers in tools.mcp_servers"},
        ],
    }


def sft_suite(cfg: Any) -> dict[str, Any]:
    """Telemetry rows: finite, falling held-out loss; the before / after metrics computed; no
    held-out task among the training trajectories."""
    return {
        "name": "sft",
        "columns": ["step", "loss"],
        "expectations": [
            {"type": "ExpectTableRowCountToBeBetween", "min_value": 1},
            {"type": "ExpectColumnValuesToNotBeNull", "column": "loss"},
        ],
        "metric_checks": [
            {"metric": "final_val_loss"},
            {"metric": "val_loss_drop", "min": cfg.min_loss_drop},
            {"metric": "nan_steps", "max": 0},
            {"metric": "heldout_in_train", "max": 0},
            {"metric": "metrics_computed", "min": 1},
        ],
    }


def rl_suite(cfg: Any) -> dict[str, Any]:
    """Telemetry rows: a finite loss every step; held-out reward measured for the input model and
    after; no held-out prompt trained on; the reward gain gated only when `min_reward_gain` is set."""
    checks = [
        {"metric": "nan_steps", "max": 0},
        {"metric": "heldout_in_train", "max": 0},
        {"metric": "metrics_computed", "min": 1},
        {"metric": "after_heldout_reward"},
    ]
    if cfg.min_reward_gain is not None:
        checks.append({"metric": "reward_gain", "min": cfg.min_reward_gain})
    return {
        "name": "rl",
        "columns": ["step", "loss", "reward"],
        "expectations": [
            {"type": "ExpectTableRowCountToBeBetween", "min_value": 1},
            {"type": "ExpectColumnValuesToNotBeNull", "column": "loss"},
            {"type": "ExpectColumnValuesToNotBeNull", "column": "reward"},
        ],
        "metric_checks": checks,
    }


def evaluate_suite(cfg: Any) -> dict[str, Any]:
    """Scores: every model scored on every suite, each value a finite share in [0, 1]."""
    return {
        "name": "evaluate",
        "columns": ["model", "suite", "metric", "value"],
        "expectations": [
            {"type": "ExpectTableRowCountToBeBetween", "min_value": 1},
            {"type": "ExpectColumnValuesToNotBeNull", "column": "value"},
            {"type": "ExpectColumnValuesToBeBetween", "column": "value", "min_value": 0, "max_value": 1},
            {"type": "ExpectColumnValuesToBeInSet", "column": "suite", "value_set": list(cfg.suites)},
        ],
        "metric_checks": [
            {"metric": "suites_unscored", "max": 0, "hint": "a suite produced no score for a model (an empty "
                                                            "suite file, or no held-out task for agentic)"},
        ],
    }
