"""`k2 experiment qk-clip | rephrase-vs-repeat` as Prefect flows: report (plots inline) and progress artifacts."""
import pytest

from k2core.config import QKClipExperimentConfig
from tests.flows.test_pipeline import _artifacts

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_qk_clip_flow_publishes_report_and_plots(tmp_path):
    from flows.experiments import qk_clip_flow

    cfg = QKClipExperimentConfig(steps=6, batch=4, seq=32, eval_every=3, max_data_mb=1.0)
    summary = qk_clip_flow(config=cfg, out_dir=str(tmp_path / "out"))
    assert summary["arms"]["muon"]["steps"] == 6
    [md] = _artifacts("k2-experiment-qk-clip")[:1]
    assert "QK-Clip experiment" in md.data and md.data.count("data:image/png;base64,") == 2
    [prog] = _artifacts("k2-experiment-qk-clip-progress")[:1]
    assert prog.data == pytest.approx(100.0)
    assert (tmp_path / "out" / "report.md").is_file()


def test_rephrase_vs_repeat_flow_publishes_report_and_plots(tmp_path):
    from flows.experiments import rephrase_vs_repeat_flow
    from tests.k2core.experiments.test_rephrase_vs_repeat import small_config

    cfg = small_config(tmp_path).model_copy(update={"epochs": 1, "rephrasings": 1, "probe_items": 8})
    summary = rephrase_vs_repeat_flow(config=cfg, out_dir=str(tmp_path / "out"))
    assert set(summary["arms"]) == {"raw", "one_rephrasing", "many_rephrasings"}
    [md] = _artifacts("k2-experiment-rephrase-vs-repeat")[:1]
    assert "Rephrase vs repeat" in md.data and md.data.count("data:image/png;base64,") == 2
    [prog] = _artifacts("k2-experiment-rephrase-vs-repeat-progress")[:1]
    assert prog.data == pytest.approx(100.0)
