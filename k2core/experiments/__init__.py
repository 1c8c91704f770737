"""The report's claims as runnable experiments: `qk_clip` (K2 §2.1) and `rephrase_vs_repeat` (§2.2)."""
from k2core.errors import K2Error


class ExperimentError(K2Error, ValueError):
    """An experiment cannot run as configured; the message says why."""
