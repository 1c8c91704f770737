"""The pretrain stage: WSD schedule, deterministic data order, a falling loss, HF-format output,
checkpoints that survive kill -9 (bit-identical resume) and corruption, NaN reported by step."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from k2core.config import PretrainConfig
from k2core.train.loop import TrainingFailed
from k2core.train.pretrain import Batches, wsd_lr
from tests.conftest import write_jsonl
from tests.k2core.train.stages import corpus_rows, run

HERE = Path(__file__).parent
CRASH_AFTER_6 = "tests.k2core.train.callbacks:crash_after_6"     # dies like kill -9 after step 6


def test_wsd_schedule():
    cfg = PretrainConfig(steps=100, warmup_steps=10, decay_fraction=0.2, min_lr_ratio=0.1)
    lr = [wsd_lr(s, cfg) for s in range(100)]
    peak = cfg.optim.lr
    assert lr[0] == pytest.approx(peak / 10) and lr[9] == pytest.approx(peak)
    assert lr[10] == lr[79] == peak                       # stable
    assert lr[80] < peak and lr[99] == pytest.approx(0.1 * peak)
    assert all(a >= b for a, b in zip(lr[80:], lr[81:]))


def test_batches_are_a_function_of_the_step_and_check_ids():
    rows = np.arange(40 * 8, dtype=np.uint16).reshape(40, 8) % 50
    a, b = Batches(rows, 4, seed=3, vocab=50), Batches(rows, 4, seed=3, vocab=50)
    assert torch.equal(a.micro_batch(7), b.micro_batch(7)) and torch.equal(a.micro_batch(13), b.micro_batch(13))
    seen = torch.cat([a.micro_batch(k) for k in range(10)])          # one epoch: every row once
    assert sorted(map(tuple, seen.tolist())) == sorted(map(tuple, rows.astype(np.int64).tolist()))
    with pytest.raises(TrainingFailed, match="token id 49 >= vocab_size 40"):
        Batches(rows, 40, seed=0, vocab=40).micro_batch(0)
    with pytest.raises(TrainingFailed, match="fewer than one micro-batch"):
        Batches(rows[:2], 4, seed=0, vocab=50)


def test_recall_spans_copy_earlier_spans_later_and_are_a_function_of_the_step():
    from k2core.config import RecallSpans
    from k2core.train.pretrain import Phases, recall_spans

    x = torch.arange(16 * 256).reshape(16, 256) + 100           # every token distinct: copies are visible
    rc = RecallSpans(fraction=0.5, per_1k_tokens=8, min_len=4, max_len=8)
    y = recall_spans(x.clone(), rc, [0, 1])
    changed = [r for r in range(16) if not torch.equal(x[r], y[r])]
    assert 3 <= len(changed) <= 13                              # about half the rows
    for r in changed:
        moved = (x[r] != y[r]).nonzero().flatten()
        # every overwritten token repeats a token of the original row found earlier in it
        assert all(int(y[r, i]) in x[r, :i].tolist() for i in moved)
    assert torch.equal(recall_spans(x.clone(), rc, [0, 1]), y) and not torch.equal(recall_spans(x.clone(), rc, [0, 2]), y)
    assert torch.equal(recall_spans(x.clone(), RecallSpans(fraction=0.0), [0, 1]), x)
    # in the pretrain batches: the same batch at the same step (exact resume), labels = inputs
    cfg = PretrainConfig(preset="tiny", micro_batch=2, steps=10, recall={"fraction": 1.0})
    rows = (np.arange(8 * 64).reshape(8, 64) % 50).astype(np.uint16)
    a, b = Phases(cfg, rows, 64, 64).batch(3), Phases(cfg, rows, 64, 64).batch(3)
    assert torch.equal(a["input_ids"], b["input_ids"]) and a["labels"] is a["input_ids"]
    plain = Phases(PretrainConfig(preset="tiny", micro_batch=2, steps=10), rows, 64, 64).batch(3)["input_ids"]
    assert not torch.equal(a["input_ids"], plain)
    with pytest.raises(ValueError, match="min_len"):
        RecallSpans(min_len=9, max_len=8)


def test_empty_or_truncated_shards_are_named(tmp_path):
    from k2core.train.pretrain import Job

    (tmp_path / "train.bin").write_bytes(b"")
    (tmp_path / "val.bin").write_bytes(b"\x00" * 10)
    job = Job({}, {"dtype": "uint16", "seq_len": 8}, [str(tmp_path / "train.bin")], [str(tmp_path / "val.bin")],
              [], str(tmp_path), str(tmp_path / "r"))
    with pytest.raises(TrainingFailed, match=r"train.bin is empty"):
        job.rows("train")
    with pytest.raises(TrainingFailed, match=r"val.bin is truncated \(10 bytes; rows are 16 bytes\)"):
        job.rows("val")


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pre")
    src = write_jsonl(tmp / "corpus.jsonl", corpus_rows())
    run(str(tmp / "store"), ["ingest", "curate", "rephrase", "tokenize"], [f"ingest.source={src}"])
    return tmp, src


def test_pretrain_trains_and_exports_a_loadable_model(upstream, capsys):
    tmp, src = upstream
    outs, store = run(str(tmp / "store"), ["pretrain"], [f"ingest.source={src}"])
    art = store.artifact("pretrain", outs[-1].version)
    m = art.metrics
    assert m["steps"] == 12 and m["nan_steps"] == 0
    assert m["final_val_loss"] < m["initial_val_loss"] - 0.1 and m["final_loss"] < m["initial_loss"]
    tel = pd.read_parquet(art.path("telemetry.parquet"))
    assert list(tel.step) == list(range(12))
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "max_logit", "max_logit_per_head", "clipped_heads",
            "expert_load_max_over_mean"} <= set(tel.columns)
    assert len(tel.max_logit_per_head[0]) == 2 * 4                 # tiny: 2 layers x 4 heads
    assert art.path("training.png").read_bytes()[:4] == b"\x89PNG"
    model_dir = Path(art.path("model/config.json")).parent
    import transformers

    hf = transformers.DeepseekV3ForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    assert hf.config.vocab_size == m["vocab_size"]
    from flows.cli import main

    assert main(["generate", "--checkpoint", str(model_dir), "--prompt", "The river", "--max-tokens", "5",
                 "--greedy"]) == 0
    assert '"token_ids"' in capsys.readouterr().out


def test_nan_loss_stops_with_the_step_and_the_last_checkpoint(upstream):
    tmp, src = upstream
    with pytest.raises(TrainingFailed, match=r"loss is nan at step \d+; the last good checkpoint is "):
        run(str(tmp / "store"), ["pretrain"], [f"ingest.source={src}", "pretrain.optim.lr=1e30",
                                               "pretrain.optim.qk_clip_tau=null"])


def _script(store: Path, src: Path, env_extra: dict) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", **env_extra)
    return subprocess.run([sys.executable, str(HERE / "stages.py"), str(store), "pretrain", f"--set=ingest.source={src}",
                           "--set=pretrain.seed=5"],                   # a version no other test commits
                          capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_kill9_mid_training_resumes_bit_identical(upstream):
    tmp, src = upstream
    killed, clean = tmp / "killed", tmp / "clean"
    shutil.copytree(tmp / "store", killed)
    shutil.copytree(tmp / "store", clean)
    before = set((killed / "artifacts").glob("pretrain/*"))
    r = _script(killed, src, {"K2_TRAIN_CALLBACKS": CRASH_AFTER_6})
    assert r.returncode == 9, r.stderr[-2000:]                       # died like kill -9, after step 6
    assert set((killed / "artifacts").glob("pretrain/*")) == before  # nothing half-written is visible
    r = _script(killed, src, {})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "'computed'" in r.stdout and "resuming from" in r.stdout and "step-0000004.pt" in r.stdout
    r = _script(clean, src, {})
    assert r.returncode == 0, r.stderr[-2000:]

    def digest(store):
        old = {p.name for p in before}
        [f] = [f for f in store.glob("artifacts/pretrain/*/model/model.safetensors") if f.parents[1].name not in old]
        return hashlib.sha256(f.read_bytes()).hexdigest()
    assert digest(killed) == digest(clean)


@pytest.mark.slow
def test_two_processes_data_parallel_follow_the_single_process_curve(upstream):
    """pretrain.nproc=2: torchrun, gloo, DDP-averaged gradients, the same global batch."""
    tmp, src = upstream
    one, store = run(str(tmp / "store"), ["pretrain"], [f"ingest.source={src}"])
    two, _ = run(str(tmp / "store"), ["pretrain"], [f"ingest.source={src}", "pretrain.nproc=2"])
    a = pd.read_parquet(store.artifact("pretrain", one[-1].version).path("telemetry.parquet"))
    b = pd.read_parquet(store.artifact("pretrain", two[-1].version).path("telemetry.parquet"))
    assert list(b.step) == list(range(12))
    assert abs(a.loss[0] - b.loss[0]) < 1e-4                     # same weights, same 4 sequences
    np.testing.assert_allclose(b.loss[:6], a.loss[:6], rtol=2e-2)
    m = store.artifact("pretrain", two[-1].version).metrics
    assert m["final_val_loss"] < m["initial_val_loss"] - 0.1


def _weights(store, outcome) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(store.artifact("pretrain", outcome.version).path("model/model.safetensors"))


@pytest.mark.slow
def test_zero1_equals_the_unsharded_run_and_resumes_from_a_consolidated_checkpoint(upstream, monkeypatch):
    """pretrain.zero1: MuonClip's state split over 2 ranks gives the unsharded 2-process weights;
    a crash after step 6 resumes from the step-4 checkpoint (state gathered on rank 0) to the same."""
    tmp, src = upstream
    sets = [f"ingest.source={src}", "pretrain.nproc=2", "pretrain.seed=7"]
    full, store = run(str(tmp / "store"), ["pretrain"], sets)
    monkeypatch.setenv("K2_TRAIN_CALLBACKS", CRASH_AFTER_6)
    with pytest.raises(TrainingFailed, match="exited with status"):
        run(str(tmp / "store"), ["pretrain"], [*sets, "pretrain.zero1=true"])
    monkeypatch.delenv("K2_TRAIN_CALLBACKS")
    logs: list[str] = []
    from k2core.config import load_config
    from k2core.pipeline import plan
    from k2core.stage import execute
    from tests.k2core.train.stages import SMALL

    cfg = load_config(overrides=[*SMALL, *sets, "pretrain.zero1=true"])
    [p] = plan(cfg, store, ["pretrain"])
    sharded = execute(p, cfg, store, log=logs.append)
    assert any("resuming from" in m and "step-0000004.pt" in m for m in logs), logs
    a, b = _weights(store, full[-1]), _weights(store, sharded)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_max_minutes_stops_early_and_log_lines_report_progress(upstream):
    tmp, src = upstream
    from k2core.config import load_config
    from k2core.pipeline import plan
    from k2core.stage import execute
    from tests.k2core.train.stages import SMALL

    cfg = load_config(overrides=[*SMALL, f"ingest.source={src}", "pretrain.max_minutes=0.00001",
                                 "pretrain.min_loss_drop=0", "pretrain.log_every=5"])
    store_path = tmp / "store"
    from k2core.store import open_store

    store = open_store(str(store_path))
    logs: list[str] = []
    outs = [execute(p, cfg, store, log=logs.append) for p in plan(cfg, store, ["pretrain"])]
    m = store.artifact("pretrain", outs[-1].version).metrics
    assert (m["steps"], m["planned_steps"]) == (1, 12)          # at least one step, then the budget
    assert any(line.startswith("pretrain: step 1/12, loss ") and "first step" in line for line in logs), logs
    assert any("stopping at step 1 of 12: pretrain.max_minutes" in line for line in logs), logs
