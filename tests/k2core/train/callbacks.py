"""Test-only training callbacks, loaded by the loop from K2_TRAIN_CALLBACKS (in every process)."""
from __future__ import annotations

import os

from k2core.train.loop import Callback


class CrashAfter(Callback):
    """Die like kill -9 right after `step` steps: no cleanup, no exception handling (a
    deterministic point to resume from)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, trainer, step: int, row) -> None:
        if step + 1 == self.step:
            os._exit(9)


def crash_after_6() -> CrashAfter:
    return CrashAfter(6)


def crash_after_2() -> CrashAfter:
    return CrashAfter(2)
