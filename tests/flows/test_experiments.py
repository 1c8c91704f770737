"""`k2 experiment qk-clip` as a Prefect flow: report (with the plots inline) and progress artifacts."""
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
