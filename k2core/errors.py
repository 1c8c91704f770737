"""The one root of every expected failure: a `K2Error` reaches the user as one line, no traceback.

Subsystems subclass it (`StoreError`, `SandboxError`, `CheckpointError`, …) next to their code;
configuration mistakes are `ConfigError`, also a `ValueError`, and exit with status 2 (usage)
instead of 1 (a run that failed).
"""
from __future__ import annotations


class K2Error(Exception):
    """A failure to report to the user as one line (no traceback)."""


class ConfigError(K2Error, ValueError):
    """A configuration that cannot be used; the message names field, value and what is allowed."""
