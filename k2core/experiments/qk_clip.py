"""QK-Clip experiment (K2 §2.1, Figure 2 in miniature): plain Muon vs MuonClip on the same model,
data and seed at an aggressive learning rate; max attention logit and loss per step, plots, report.

``run(cfg, out_dir)`` writes ``metrics.parquet`` (one row per arm and step), ``max_logit.png``,
``loss.png``, ``summary.json`` and ``report.md``; it returns the summary. Nothing is canned: if
plain Muon's logits never pass τ at the chosen size, the report says so.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch

from k2core.config import QKClipExperimentConfig
from k2core.experiments import ExperimentError
from k2core.progress import Progress
from k2core.train.loop import autocast, build_model, evaluate, train_step

ARMS = (("muon", "Muon (no clip)"), ("muonclip", "MuonClip"))


# ---------------------------------------------------------------------------- data
def load_bytes(source: str, max_mb: float) -> torch.Tensor:
    """Byte-level token ids of a text corpus: this Python's stdlib sources, a file or a directory."""
    from k2core.sources import stdlib_root

    limit = int(max_mb * (1 << 20))
    if source == "stdlib":
        files = sorted(stdlib_root().rglob("*.py"))
    else:
        path = Path(source)
        if path.is_file():
            files = [path]
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
        else:
            raise ExperimentError(f"data = {source!r}: not 'stdlib', a file or a directory")
    chunks, size = [], 0
    for f in files:
        try:
            b = f.read_bytes()
        except OSError:
            continue
        chunks.append(b)
        size += len(b)
        if size >= limit:
            break
    data = b"".join(chunks)[:limit]
    if len(data) < 1 << 16:
        raise ExperimentError(f"data = {source!r}: only {len(data)} bytes of text; need at least 64 KiB")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


def batches(data: torch.Tensor, n: int, batch: int, seq: int, seed: int):
    """`n` random windows of seq + 1 bytes, the same sequence for every arm."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        ix = torch.randint(0, len(data) - seq - 1, (batch,), generator=g)
        yield torch.stack([data[i:i + seq + 1] for i in ix.tolist()])


# ---------------------------------------------------------------------------- training
class Arm:
    """One model + optimizer of the comparison, stepped on the shared batches."""

    def __init__(self, cfg: QKClipExperimentConfig, clip: bool, val: torch.Tensor, device: torch.device):
        from k2core.optim.config import OptimConfig

        self.cfg, self.name = cfg, "muonclip" if clip else "muon"
        self.model = build_model(cfg, None, device)
        if self.model.config.vocab_size < 256:
            raise ExperimentError(f"model.vocab_size = {self.model.config.vocab_size}: byte tokens need at least 256")
        self.opt = OptimConfig(lr=cfg.lr, weight_decay=cfg.weight_decay,
                               qk_clip_tau=cfg.tau if clip else None).build(self.model)
        self.amp, self.device = autocast(device), device
        self.val = [{"input_ids": t, "labels": t}
                    for t in (b.to(device) for b in batches(val, 4, cfg.batch, cfg.seq, cfg.seed + 1))]
        self.rows: list[dict[str, Any]] = []
        self.diverged = False
        self.seconds = 0.0

    def step(self, step: int, ids: torch.Tensor) -> None:
        cfg, t0 = self.cfg, time.perf_counter()
        r = train_step(self.model, self.opt, [{"input_ids": ids, "labels": ids}], amp=self.amp,
                       grad_clip=cfg.grad_clip, device=self.device, check_finite=False)   # divergence is data here
        stats, S = r.stats, r.stats.max_logit
        row = {"arm": self.name, "step": step, "loss": r.loss,
               "max_logit": float(S.max()), "max_logit_per_layer": S.amax(dim=1).tolist(),
               "clipped_heads": stats.clipped_heads,
               "clipped_mask": (S > cfg.tau).flatten().tolist() if self.name == "muonclip" else [],
               "min_gamma": stats.min_gamma, "grad_norm": r.grad_norm, "val_loss": None}
        if step % cfg.eval_every == 0 or step == cfg.steps - 1:
            row["val_loss"] = evaluate(self.model, self.val, self.amp)
        self.seconds += time.perf_counter() - t0
        row["seconds"] = self.seconds
        self.rows.append(row)
        self.diverged = not math.isfinite(row["loss"])


# ---------------------------------------------------------------------------- report
def summarise(cfg: QKClipExperimentConfig, rows: list[dict[str, Any]], device: str, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {"config": cfg.model_dump(mode="json"), "device": device, "seconds": round(seconds, 1),
                           "arms": {}}
    for arm, _ in ARMS:
        rs = [r for r in rows if r["arm"] == arm]
        if not rs:
            continue
        tail = rs[-max(1, len(rs) // 10):]
        vals = [r["val_loss"] for r in rs if r["val_loss"] is not None]
        first_above = next((r["step"] for r in rs if r["max_logit"] > cfg.tau), None)
        a = {"steps": len(rs), "final_loss": sum(r["loss"] for r in tail) / len(tail),
             "final_val_loss": vals[-1] if vals else None, "peak_max_logit": max(r["max_logit"] for r in rs),
             "final_max_logit": rs[-1]["max_logit"], "steps_above_tau": sum(r["max_logit"] > cfg.tau for r in rs),
             "first_step_above_tau": first_above, "diverged": not math.isfinite(rs[-1]["loss"])}
        if arm == "muonclip":
            masks = [r["clipped_mask"] for r in rs if r["clipped_mask"]]
            ever = [any(col) for col in zip(*masks)] if masks else []
            a["clip_events"] = sum(r["clipped_heads"] for r in rs)
            a["heads_clipped_at_least_once"] = f"{sum(ever)}/{len(ever)}" if ever else "0"
            a["smallest_gamma"] = min(r["min_gamma"] for r in rs)
        out["arms"][arm] = a
    m, c = out["arms"].get("muon"), out["arms"].get("muonclip")
    if m and c:
        out["explosion_shown"] = m["peak_max_logit"] > cfg.tau
        out["finding"] = (
            f"plain Muon's max logit reached {m['peak_max_logit']:.1f} (τ = {cfg.tau:g}); "
            f"MuonClip's peaked at {c['peak_max_logit']:.1f} and ended at {c['final_max_logit']:.1f}. "
            f"Final training loss {m['final_loss']:.3f} vs {c['final_loss']:.3f}."
            if out["explosion_shown"] else
            f"plain Muon's max logit stayed below τ = {cfg.tau:g} (peak {m['peak_max_logit']:.1f}) in "
            f"{m['steps']} steps: the explosion did not show at this size / learning rate, so this run "
            "says nothing about QK-Clip's effect.")
    return out


def _finish(fig, ax, ylabel: str, title: str, path: Path) -> Path:
    import matplotlib.pyplot as plt

    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot(cfg: QKClipExperimentConfig, rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for arm, label in ARMS:
        rs = [r for r in rows if r["arm"] == arm]
        ax.plot([r["step"] for r in rs], [r["max_logit"] for r in rs], label=label, lw=1.2)
    ax.axhline(cfg.tau, color="grey", ls="--", lw=1, label=f"τ = {cfg.tau:g}")
    if max(r["max_logit"] for r in rows) > 10 * cfg.tau:
        ax.set_yscale("log")                      # both arms stay readable when one explodes
    paths.append(_finish(fig, ax, "max attention logit (all layers, heads)",
                         f"QK-Clip: max logit per step (lr {cfg.lr:g}, {cfg.preset})", out_dir / "max_logit.png"))

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for arm, label in ARMS:
        rs = [r for r in rows if r["arm"] == arm]
        k = max(1, len(rs) // 50)                  # running mean over ~2% of the run
        loss = torch.tensor([r["loss"] for r in rs])
        smooth = torch.nn.functional.avg_pool1d(loss[None, None], k, 1, padding=0)[0, 0] if len(rs) >= k else loss
        line, = ax.plot(range(k - 1, k - 1 + len(smooth)), smooth.tolist(), label=f"{label} (train)", lw=1.2)
        val = [(r["step"], r["val_loss"]) for r in rs if r["val_loss"] is not None]
        ax.plot(*zip(*val), "o--", color=line.get_color(), ms=3, lw=0.8, label=f"{label} (held-out)")
    paths.append(_finish(fig, ax, "loss (nats / byte)", "Loss", out_dir / "loss.png"))
    return paths


def replot(out_dir: str | Path) -> list[Path]:
    """Redraw the plots and the report of a finished run from its metrics and summary."""
    import pandas as pd

    out = Path(out_dir)
    summary = json.loads((out / "summary.json").read_text())
    cfg = QKClipExperimentConfig.model_validate(summary["config"])
    rows = pd.read_parquet(out / "metrics.parquet").replace({float("nan"): None}).to_dict("records")
    pngs = plot(cfg, rows, out)
    (out / "report.md").write_text(markdown(summary, {p.stem: p.name for p in pngs}))
    return pngs


def markdown(summary: dict[str, Any], images: dict[str, str]) -> str:
    """The report; `images` maps a plot name to its link (a file name, or a data: URI for the UI)."""
    cfg = summary["config"]
    lines = ["# QK-Clip experiment: Muon vs MuonClip", "",
             f"Model preset `{cfg['preset']}` with {cfg['model'] or 'no'} overrides; {cfg['steps']} steps of "
             f"{cfg['batch']} × {cfg['seq']} byte tokens from `{cfg['data']}`; lr {cfg['lr']:g}, weight decay "
             f"{cfg['weight_decay']:g}, gradient clip {cfg['grad_clip']}, τ = {cfg['tau']:g}, seed {cfg['seed']}; "
             f"device {summary['device']}, {summary['seconds']:.0f} s.", ""]
    if "finding" in summary:
        lines += [f"**Finding:** {summary['finding']}", ""]
    if "stopped" in summary:
        lines += [f"**Note:** {summary['stopped']}.", ""]
    keys = {"steps": "steps", "final_loss": "final training loss (last 10%)", "final_val_loss": "final held-out loss",
            "peak_max_logit": "peak max logit", "final_max_logit": "final max logit",
            "steps_above_tau": "steps whose forward exceeded τ (before that step's clip)",
            "first_step_above_tau": "first step above τ", "clip_events": "clipped heads, summed over steps",
            "heads_clipped_at_least_once": "heads clipped at least once", "smallest_gamma": "smallest γ",
            "diverged": "diverged"}
    arms = summary["arms"]
    lines += ["| | " + " | ".join(label for arm, label in ARMS if arm in arms) + " |",
              "|---|" + "---|" * len(arms)]
    for k, label in keys.items():
        vals = []
        for arm, _ in ARMS:
            if arm in arms:
                v = arms[arm].get(k, "")
                vals.append(f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v)))
        lines.append(f"| {label} | " + " | ".join(vals) + " |")
    lines.append("")
    for name, link in images.items():
        lines += [f"![{name}]({link})", ""]
    return "\n".join(lines)


def run(cfg: QKClipExperimentConfig, out_dir: str | Path,
        hooks: tuple[Callable[[float, float | None, str], None], ...] = ()) -> dict[str, Any]:
    import pandas as pd

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ExperimentError("device = 'cuda' but no CUDA device is available")
    data = load_bytes(cfg.data, cfg.max_data_mb)
    cut = int(len(data) * 0.95)
    train, val = data[:cut], data[cut:]
    arms = [Arm(cfg, arm == "muonclip", val, device) for arm, _ in ARMS]
    t0 = time.perf_counter()
    stopped = None
    with Progress(total=cfg.steps, desc="qk-clip (Muon | MuonClip)", unit="step", hooks=hooks) as bar:
        # the arms step in lockstep on the same batch, so a time budget cuts both at the same step
        for step, ids in enumerate(batches(train, cfg.steps, cfg.batch, cfg.seq, cfg.seed)):
            ids = ids.to(device, non_blocking=True)
            for arm in arms:
                if not arm.diverged:
                    arm.step(step, ids)
            bar.update(1)
            if all(a.diverged for a in arms):
                stopped = f"both arms diverged by step {step}"
                break
            if cfg.max_minutes and time.perf_counter() - t0 > 60 * cfg.max_minutes and step < cfg.steps - 1:
                stopped = f"stopped by the time budget ({cfg.max_minutes:g} min) after {step + 1} of {cfg.steps} steps"
                break
    rows = [r for a in arms for r in a.rows]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    summary = summarise(cfg, rows, name, time.perf_counter() - t0)
    if stopped:
        summary["stopped"] = stopped
    tmp = out / "metrics.parquet.tmp"
    pd.DataFrame(rows).to_parquet(tmp)
    tmp.replace(out / "metrics.parquet")
    pngs = plot(cfg, rows, out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "report.md").write_text(markdown(summary, {p.stem: p.name for p in pngs}))
    return summary
