"""The quality gate: expectations and metric checks, in process and in the gate process that
`k2 run` starts early (same results, a dead one falls back to this process)."""
from __future__ import annotations

import pandas as pd
import pytest

from k2core import quality

SUITE = {"name": "t", "columns": ["id", "n"],
         "expectations": [{"type": "ExpectColumnValuesToBeUnique", "column": "id"},
                          {"type": "ExpectColumnValuesToBeBetween", "column": "n", "min_value": 1},
                          {"type": "ExpectTableRowCountToBeBetween", "min_value": 1}],
         "metric_checks": [{"metric": "rate", "max": 0.5}]}
FRAME = pd.DataFrame({"id": ["a", "b", "b", "c"], "n": [3, 0, 5, 7]})


@pytest.fixture
def no_worker(monkeypatch):
    monkeypatch.setattr(quality, "_worker", None)


def test_gate_names_each_failure_with_what_it_saw(no_worker):
    r = quality.run_gate(SUITE, FRAME, {"rate": 0.7})
    assert not r.success and [x.success for x in r.results] == [False, False, True, False]
    assert r.results[0].observed.startswith("2 unexpected (50%)") and r.results[3].observed == "0.7"
    assert "metric:rate: observed 0.7, expected max 0.5" in r.summary()


def test_a_failed_metric_check_carries_its_hint_and_a_passed_one_does_not(no_worker):
    suite = {"name": "h", "metric_checks": [{"metric": "domains", "min": 1, "hint": "set x.y"},
                                            {"metric": "rows", "min": 1, "hint": "never shown"}]}
    r = quality.run_gate(suite, FRAME, {"domains": 0, "rows": 4})
    assert r.summary() == "gate 'h' failed: metric:domains: observed 0, expected min 1 (set x.y)"
    assert [row["hint"] for row in r.table()] == ["set x.y", ""]


def test_the_gate_process_gives_the_in_process_results(no_worker, monkeypatch):
    frames = [FRAME, FRAME.iloc[:0], pd.DataFrame({"id": ["x", None], "n": [1.5, float("nan")]})]
    here = [quality.run_gate(SUITE, f, {"rate": 0.7}).to_dict() for f in frames]
    worker = quality.GateWorker()
    try:
        monkeypatch.setattr(quality, "_worker", worker)
        there = [quality.run_gate(SUITE, f, {"rate": 0.7}).to_dict() for f in frames]
    finally:
        worker.close()
    assert there == here and not here[1]["success"]    # the empty frame fails its row count there too
    assert worker.proc.returncode == 0                 # stdin closed: it exits on its own


def test_a_dead_gate_process_falls_back_to_this_one(no_worker, monkeypatch, capsys):
    worker = quality.GateWorker()
    worker.proc.kill()
    worker.proc.wait()
    worker.proc.poll = lambda: None                    # looks alive: the pipe fails instead
    monkeypatch.setattr(quality, "_worker", worker)
    r = quality.run_gate(SUITE, FRAME, {"rate": 0.1})
    assert [x.success for x in r.results] == [False, False, True, True]
    assert "gate process failed" in capsys.readouterr().err and quality._worker is None
