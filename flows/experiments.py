"""Experiments as Prefect flows: the run's report and plots become artifacts in the UI."""
from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact

from k2core.config import QKClipExperimentConfig, RephraseRepeatExperimentConfig
from k2core.experiments import qk_clip, rephrase_vs_repeat


def _data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()


def _progress_hook(key: str):
    progress_id = None

    def to_prefect(done: float, total: float | None, desc: str) -> None:
        nonlocal progress_id
        pct = min(100.0, 100.0 * done / total) if total else 0.0
        if progress_id is None:
            progress_id = create_progress_artifact(pct, key=key, description=desc)
        else:
            update_progress_artifact(progress_id, pct)
    return to_prefect


@flow(name="k2-experiment-qk-clip", validate_parameters=True,
      description="Plain Muon vs MuonClip on the same model, data and seed: max logit and loss per step")
def qk_clip_flow(config: QKClipExperimentConfig = QKClipExperimentConfig(), out_dir: str = "k2-experiments/qk-clip") \
        -> dict[str, Any]:
    summary = qk_clip.run(config, out_dir, hooks=(_progress_hook("k2-experiment-qk-clip-progress"),))
    out = Path(out_dir)
    images = {name: _data_uri(out / f"{name}.png") for name in ("max_logit", "loss")}
    create_markdown_artifact(qk_clip.markdown(summary, images), key="k2-experiment-qk-clip",
                             description="QK-Clip experiment report")
    return summary


@flow(name="k2-experiment-rephrase-vs-repeat", validate_parameters=True,
      description="Raw x epochs vs 1 rephrasing x epochs vs N rephrasings x 1 at equal tokens: cloze recall")
def rephrase_vs_repeat_flow(config: RephraseRepeatExperimentConfig = RephraseRepeatExperimentConfig(),
                            out_dir: str = "k2-experiments/rephrase-vs-repeat") -> dict[str, Any]:
    summary = rephrase_vs_repeat.run(config, out_dir,
                                     hooks=(_progress_hook("k2-experiment-rephrase-vs-repeat-progress"),))
    out = Path(out_dir)
    images = {name: _data_uri(out / f"{name}.png") for name in ("accuracy", "loss")}
    create_markdown_artifact(rephrase_vs_repeat.markdown(summary, images), key="k2-experiment-rephrase-vs-repeat",
                             description="Rephrase-vs-repeat experiment report")
    return summary
