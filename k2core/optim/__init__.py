"""Optimizers: MuonClip (Muon + AdamW + per-head QK-Clip for MLA) and its config section.

Names are imported on first use, so `k2core.optim.config` loads without torch."""
from __future__ import annotations

from k2core.lazy import lazy_exports

_EXPORTS = {"MuonClip": "muonclip", "MuonClipError": "muonclip", "StepStats": "muonclip",
            "newton_schulz": "muonclip", "route_parameters": "muonclip", "OptimConfig": "config"}
__all__ = list(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
