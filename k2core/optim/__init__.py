"""Optimizers: MuonClip (Muon + AdamW + per-head QK-Clip for MLA)."""
from k2core.optim.muonclip import MuonClip, MuonClipError, StepStats, newton_schulz, route_parameters

__all__ = ["MuonClip", "MuonClipError", "StepStats", "newton_schulz", "route_parameters"]
