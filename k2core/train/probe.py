"""The context probe: does the model use information placed far back in its context?

Each probe sequence is a window of held-out tokens (pre-training's validation text, or held-out
conversations for sft) with a random *key* (``key_len`` token ids) followed by a random *value*
(``value_len`` ids) written in early, and the same key again ``distance`` tokens or more later,
followed by the value once more. The model is scored teacher-forced on the repeated value:

    copy_accuracy      share of the repeated value's tokens the model predicts (argmax) — far: the
                       first occurrence ≥ ``distance`` tokens back; near: ``near_distance`` back
    control_accuracy   the same sequences with a *different* random value at the first occurrence:
                       nothing in the context tells the value, so this is what priors alone give
                       (chance: ~1 / vocab). A model that ignores its context scores the same on
                       both; one that copies scores far above the control.
    copy_gain_nats     mean loss on the first occurrence's value minus the loss on the repeated
                       one (the nats per token the context is worth)

Keys and values are drawn from the ordinary (non-special) vocabulary, fresh per sequence, so
nothing can be memorised. Built from a seed: the same sequences for every model it compares.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from k2core.errors import K2Error


@dataclass
class ProbeSet:
    far: torch.Tensor           # [N, L] ids, value repeated >= distance later
    control: torch.Tensor       # the same with another value at the first occurrence
    near: torch.Tensor          # the first occurrence near_distance before the repeat
    first: torch.Tensor         # [N, V] positions of the first value's tokens (far / control)
    repeat: torch.Tensor        # [N, V] positions of the repeated value's tokens
    near_first: torch.Tensor
    near_repeat: torch.Tensor
    values: torch.Tensor        # [N, V] the value ids


def build(stream: np.ndarray, cfg, vocab_size: int, n_special: int, what: str) -> ProbeSet:
    """Probe sequences over windows of `stream` (held-out token ids); `cfg` a ``config.ProbeConfig``.
    `what` names the data in errors."""
    L, K, V = cfg.length, cfg.key_len, cfg.value_len
    span = K + V
    if cfg.distance + 2 * span + 2 > L:
        raise K2Error(f"context probe: length {L} cannot hold two key/value spans {cfg.distance} tokens apart; "
                      f"raise probe.length or lower probe.distance")
    if len(stream) < L:
        raise K2Error(f"context probe: {what} has {len(stream)} tokens, fewer than one probe sequence "
                      f"({L}); lower probe.length or provide more held-out data")
    rng = np.random.default_rng(cfg.seed)
    n = cfg.sequences
    starts = rng.integers(0, len(stream) - L + 1, size=n)
    out = {k: [] for k in ("far", "control", "near", "first", "repeat", "near_first", "near_repeat", "values")}
    for s in starts:
        base = np.asarray(stream[s:s + L], dtype=np.int64).copy()
        key = rng.integers(n_special, vocab_size, size=K)
        value = rng.integers(n_special, vocab_size, size=V)
        other = rng.integers(n_special, vocab_size, size=V)
        p1 = int(rng.integers(1, L - cfg.distance - 2 * span))          # first key
        p2 = int(rng.integers(p1 + span + cfg.distance, L - span + 1))  # repeated key, >= distance after the first value
        q2 = p2                                                         # near: same repeat, first occurrence close
        q1 = q2 - cfg.near_distance - span
        far, control, near = base.copy(), base.copy(), base.copy()
        for arr, v1 in ((far, value), (control, other)):
            arr[p1:p1 + K], arr[p1 + K:p1 + span] = key, v1
            arr[p2:p2 + K], arr[p2 + K:p2 + span] = key, value
        near[q1:q1 + K], near[q1 + K:q1 + span] = key, value
        near[q2:q2 + K], near[q2 + K:q2 + span] = key, value
        out["far"].append(far), out["control"].append(control), out["near"].append(near)
        out["first"].append(np.arange(p1 + K, p1 + span)), out["repeat"].append(np.arange(p2 + K, p2 + span))
        out["near_first"].append(np.arange(q1 + K, q1 + span)), out["near_repeat"].append(np.arange(q2 + K, q2 + span))
        out["values"].append(value)
    return ProbeSet(**{k: torch.from_numpy(np.stack(v)) for k, v in out.items()})


LogitsFn = Callable[[torch.Tensor], torch.Tensor]     # ids [B, L] -> logits [B, L, vocab]


def _scores(logits_fn: LogitsFn, ids: torch.Tensor, positions: torch.Tensor, batch: int):
    """(argmax hits, -log p) at `positions` (each predicted from the token before it)."""
    hits, nll = [], []
    for i in range(0, len(ids), batch):
        x, pos = ids[i:i + batch], positions[i:i + batch]
        logits = logits_fn(x).float()
        dev = logits.device
        rows, pos = torch.arange(len(x), device=dev)[:, None], pos.to(dev)
        lp = torch.log_softmax(logits[rows, pos - 1], dim=-1)                 # [b, V, vocab]
        tgt = x.to(dev)[rows, pos]
        hits.append((lp.argmax(-1) == tgt).float().cpu())
        nll.append(-lp.gather(-1, tgt[..., None]).squeeze(-1).cpu())
    return torch.cat(hits), torch.cat(nll)


@torch.no_grad()
def run(logits_fn: LogitsFn, probe: ProbeSet, batch: int = 4) -> dict[str, float]:
    far_hit, far_nll = _scores(logits_fn, probe.far, probe.repeat, batch)
    _, first_nll = _scores(logits_fn, probe.far, probe.first, batch)
    ctl_hit, _ = _scores(logits_fn, probe.control, probe.repeat, batch)
    near_hit, _ = _scores(logits_fn, probe.near, probe.near_repeat, batch)
    return {"probe_copy_accuracy": round(float(far_hit.mean()), 4),
            "probe_control_accuracy": round(float(ctl_hit.mean()), 4),
            "probe_near_copy_accuracy": round(float(near_hit.mean()), 4),
            "probe_copy_gain_nats": round(float(first_nll.mean() - far_nll.mean()), 4),
            "probe_sequences": len(probe.far), "probe_length": int(probe.far.shape[1]),
            "probe_min_distance": int((probe.repeat[:, 0] - probe.first[:, -1]).min())}


def model_logits(model, device: torch.device) -> LogitsFn:
    """A K2 model as the probe's logits function (eval mode, no cache)."""
    def fn(ids: torch.Tensor) -> torch.Tensor:
        return model(ids.to(device)).logits
    return fn
