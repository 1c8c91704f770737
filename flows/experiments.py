"""Experiments as Prefect flows: the run's report and plots become artifacts in the UI."""
from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact

from k2core.config import QKClipExperimentConfig
from k2core.experiments import qk_clip


def _data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()


@flow(name="k2-experiment-qk-clip", validate_parameters=True,
      description="Plain Muon vs MuonClip on the same model, data and seed: max logit and loss per step")
def qk_clip_flow(config: QKClipExperimentConfig = QKClipExperimentConfig(), out_dir: str = "k2-experiments/qk-clip") \
        -> dict[str, Any]:
    progress_id = None

    def to_prefect(done: float, total: float | None, desc: str) -> None:
        nonlocal progress_id
        pct = min(100.0, 100.0 * done / total) if total else 0.0
        if progress_id is None:
            progress_id = create_progress_artifact(pct, key="k2-experiment-qk-clip-progress", description=desc)
        else:
            update_progress_artifact(progress_id, pct)

    summary = qk_clip.run(config, out_dir, hooks=(to_prefect,))
    out = Path(out_dir)
    images = {name: _data_uri(out / f"{name}.png") for name in ("max_logit", "loss")}
    create_markdown_artifact(qk_clip.markdown(summary, images), key="k2-experiment-qk-clip",
                             description="QK-Clip experiment report")
    return summary
