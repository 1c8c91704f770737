"""Progress reporting for long work: a terminal bar plus hooks (the Prefect task adds one)."""
from __future__ import annotations

import os
import sys
import time
from typing import Callable

Hook = Callable[[float, float | None, str], None]   # (done, total, description)


class Progress:
    """A tqdm bar on a terminal (or with K2_PROGRESS=1) and throttled calls to `hooks`."""

    def __init__(self, total: float | None = None, desc: str = "", unit: str = "it",
                 hooks: tuple[Hook, ...] = (), every_s: float = 2.0, unit_scale: bool = False):
        self.total, self.desc, self.done = total, desc, 0.0
        self._hooks, self._every, self._last = hooks, every_s, 0.0
        self._bar = None
        if os.environ.get("K2_PROGRESS", "auto") == "1" or \
                (os.environ.get("K2_PROGRESS", "auto") == "auto" and sys.stderr.isatty()):
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=unit_scale,
                             dynamic_ncols=True, leave=False)

    def update(self, n: float = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        now = time.monotonic()
        if self._hooks and now - self._last >= self._every:
            self._last = now
            for hook in self._hooks:
                hook(self.done, self.total, self.desc)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        for hook in self._hooks:
            hook(self.total if self.total is not None else self.done, self.total, self.desc)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
