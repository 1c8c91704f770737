"""The QK-Clip experiment: both arms on the same data, the clip holds logits near τ, outputs and
report agree with the metrics, bad settings give clear errors."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from k2core.config import QKClipExperimentConfig
from k2core.experiments.qk_clip import ExperimentError, load_bytes, replot, run

FAST = dict(steps=60, batch=8, seq=64, lr=0.02, tau=3.0, eval_every=20, max_data_mb=2.0)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("qk")
    return out, run(QKClipExperimentConfig(**FAST), out)


def test_plain_muon_passes_tau_and_muonclip_holds_it(result):
    out, summary = result
    m = pd.read_parquet(out / "metrics.parquet")
    muon, clip = m[m.arm == "muon"], m[m.arm == "muonclip"]
    assert len(muon) == len(clip) == FAST["steps"]
    # same model, seed and data: identical until the first clip changes the weights
    first = int(clip.index[clip.clipped_heads > 0][0] - clip.index[0])
    assert muon.loss.iloc[: first + 1].tolist() == clip.loss.iloc[: first + 1].tolist()
    assert muon.max_logit.max() > 2 * FAST["tau"]
    # the forward's S_max overshoots τ by one update's growth at most, then is clipped back
    late, late_muon = clip.max_logit.iloc[FAST["steps"] // 2:], muon.max_logit.iloc[FAST["steps"] // 2:]
    assert late.median() < 1.4 * FAST["tau"] < late_muon.median()
    assert late.max() < 0.5 * late_muon.max()
    assert clip.clipped_heads.sum() > 0 and (muon.clipped_heads == 0).all()
    assert summary["explosion_shown"] is True


def test_outputs_and_report_agree_with_the_metrics(result):
    out, summary = result
    m = pd.read_parquet(out / "metrics.parquet")
    for arm in ("muon", "muonclip"):
        a = summary["arms"][arm]
        rows = m[m.arm == arm]
        assert a["peak_max_logit"] == pytest.approx(rows.max_logit.max())
        assert a["steps_above_tau"] == int((rows.max_logit > FAST["tau"]).sum())
        assert a["final_val_loss"] == pytest.approx(rows.val_loss.dropna().iloc[-1])
    assert summary["arms"]["muonclip"]["clip_events"] == int(m[m.arm == "muonclip"].clipped_heads.sum())
    for png in ("max_logit.png", "loss.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert summary["finding"] in report and "![max_logit](max_logit.png)" in report
    assert json.loads((out / "summary.json").read_text())["arms"]["muon"]["steps"] == FAST["steps"]
    (out / "report.md").unlink()
    replot(out)                                      # redrawn from the stored metrics alone
    assert (out / "report.md").read_text() == report


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(ExperimentError, match="not 'stdlib', a file or a directory"):
        load_bytes(str(tmp_path / "missing"), 1.0)
    (tmp_path / "small.txt").write_text("too short")
    with pytest.raises(ExperimentError, match="only 9 bytes"):
        load_bytes(str(tmp_path / "small.txt"), 1.0)
    with pytest.raises(ExperimentError, match="vocab_size = 100"):
        run(QKClipExperimentConfig(**{**FAST, "steps": 1, "model": {"vocab_size": 100}}), tmp_path / "o")


def test_cli_refuses_invalid_settings(capsys):
    from flows.cli import main

    assert main(["experiment", "qk-clip", "--no-flow", "--set", "tau=0"]) == 2
    assert "tau = 0" in capsys.readouterr().err
    assert main(["experiment", "qk-clip", "--no-flow", "--set", "stepz=3"]) == 2
    assert "stepz" in capsys.readouterr().err


def test_time_budget_stops_both_arms_at_the_same_step(tmp_path):
    summary = run(QKClipExperimentConfig(**{**FAST, "steps": 50, "max_minutes": 1e-4}), tmp_path)
    assert summary["arms"]["muon"]["steps"] == summary["arms"]["muonclip"]["steps"] == 1
    assert "time budget" in summary["stopped"] and "Note:" in (tmp_path / "report.md").read_text()
