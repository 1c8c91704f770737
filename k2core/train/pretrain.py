"""The `pretrain` stage: the K2 model trained with MuonClip on the `tokenize` artifact's shards.

What is pre-training's own: the WSD schedule, a deterministic data order (a seeded permutation of
rows: the data position is the step number), the model initialised from a preset, and the export —
``telemetry.parquet``, plots of loss, max attention logit and expert load (``training.png``), the
final model in Hugging Face format with the tokenizer (``model/``), the gate's frame. The loop itself
(micro-batches, clipping, MuonClip + QK-Clip, validation, resumable checkpoints in a directory that
outlives a crash, time budget, torchrun) is k2core/train/loop.py.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from k2core.errors import K2Error
from k2core.stage import StageContext
from k2core.train.loop import Trainer, TrainingFailed, build_model, dist_info, pick_device, train_job

ENTRY = "k2core.train.pretrain:train_worker"     # what each torchrun rank runs


# ---------------------------------------------------------------------------- schedule
def wsd_lr(step: int, cfg) -> float:
    """Warm-up, stable, decay (linear to min_lr_ratio over the last decay_fraction of steps)."""
    peak = cfg.optim.lr
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    decay_start = int(cfg.steps * (1 - cfg.decay_fraction))
    if step < decay_start or cfg.decay_fraction == 0:
        return peak
    frac = (step - decay_start + 1) / max(1, cfg.steps - decay_start)
    return peak * (1 - frac * (1 - cfg.min_lr_ratio))


# ---------------------------------------------------------------------------- data
class Batches:
    """Row order = a seeded permutation per epoch; batch k is a pure function of k (resume = step)."""

    def __init__(self, rows: np.ndarray, micro: int, seed: int, vocab: int):
        self.rows, self.micro, self.seed = rows, micro, seed
        if len(rows) < micro:
            raise TrainingFailed(f"the training split has {len(rows)} sequences, fewer than one micro-batch "
                                 f"({micro}); lower pretrain.micro_batch or add data")
        self._perm_epoch, self._perm = -1, None
        self.vocab = vocab

    def micro_batch(self, index: int) -> torch.Tensor:
        per_epoch = len(self.rows) // self.micro
        epoch, k = divmod(index, per_epoch)
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))
            self._perm_epoch = epoch
        idx = np.sort(self._perm[k * self.micro:(k + 1) * self.micro])
        x = torch.from_numpy(self.rows[idx].astype(np.int64))
        bad = int(x.max())
        if bad >= self.vocab:
            raise TrainingFailed(f"token id {bad} >= vocab_size {self.vocab} in training rows {idx.tolist()[:4]}…; "
                                 "the tokenize artifact does not match the model")
        return x

    def batch(self, index: int) -> dict[str, torch.Tensor]:
        """Micro-batch `index` as model arguments (next-token prediction: the labels are the ids)."""
        x = self.micro_batch(index)
        return {"input_ids": x, "labels": x}


def recall_spans(x: torch.Tensor, rc, seed: list[int]) -> torch.Tensor:
    """Copy spans of each chosen row (``rc.fraction`` of them) to later, non-overlapping positions
    of the same row, in place (`pretrain.recall`). Seeded by `seed`: batch k stays a pure function
    of k, so a resumed run sees the same rows."""
    rng = np.random.default_rng(seed)
    L = x.shape[1]
    for r in range(x.shape[0]):
        if rng.random() >= rc.fraction:
            continue
        for _ in range(max(1, int(rng.poisson(rc.per_1k_tokens * L / 1000)))):
            n = int(rng.integers(rc.min_len, rc.max_len + 1))
            if 2 * n + 1 > L:
                break
            src = int(rng.integers(0, L - 2 * n))            # room for the copy after it
            dst = int(rng.integers(src + n, L - n + 1))
            x[r, dst:dst + n] = x[r, src:src + n].clone()
    return x


class Phases:
    """The short phase (tokenize's rows) then, with ``long_context.seq_len``, the long-context phase:
    the last ``long_context.fraction`` of the steps read the same token stream cut into windows of
    ``seq_len`` (consecutive rows joined: the shards are one contiguous stream of documents). Batch
    k is still a pure function of k (exact resume in either phase)."""

    def __init__(self, cfg, rows: np.ndarray, short_len: int, vocab: int, world: int = 1):
        self.cfg, self.short_len = cfg, short_len
        self.short = Batches(rows, cfg.micro_batch, cfg.seed, vocab)
        lc = cfg.long_context
        self.long_len = lc.seq_len
        self.start = cfg.steps
        if lc.seq_len is None:
            return
        if lc.seq_len % short_len:
            raise TrainingFailed(f"pretrain.long_context.seq_len = {lc.seq_len} must be a multiple of "
                                 f"tokenize.seq_len ({short_len})")
        k = lc.seq_len // short_len
        self.long_micro = lc.micro_batch or max(1, cfg.micro_batch * short_len // lc.seq_len)
        self.long_micro = -(-self.long_micro // world) * world       # every process gets its share
        n = len(rows) // k
        if n < self.long_micro:
            raise TrainingFailed(f"pretrain.long_context: the training split has {len(rows) * short_len} tokens, "
                                 f"{n} windows of {lc.seq_len}, fewer than one micro-batch ({self.long_micro}); "
                                 "lower pretrain.long_context.seq_len or add data")
        self.long = Batches(rows[:n * k].reshape(n, lc.seq_len), self.long_micro, cfg.seed + 1, vocab)
        self.start = cfg.steps - max(1, round(cfg.steps * lc.fraction))

    def batch(self, index: int) -> dict[str, torch.Tensor]:
        ga = self.cfg.grad_accum
        out = self.short.batch(index) if index // ga < self.start else self.long.batch(index - self.start * ga)
        if self.cfg.recall.fraction > 0:
            x = recall_spans(out["input_ids"].clone(), self.cfg.recall, [self.cfg.seed, 0x5EC, index])
            out = {"input_ids": x, "labels": x}
        return out

    def columns(self, step: int) -> dict[str, Any]:
        """The step's telemetry columns: its phase, sequence length and tokens."""
        long = step >= self.start
        L, micro = (self.long_len, self.long_micro) if long else (self.short_len, self.cfg.micro_batch)
        return {"phase": "long_context" if long else "main", "seq_len": L,
                "tokens": micro * self.cfg.grad_accum * L}


def context_probe(cfg, model, val_rows: np.ndarray, index, device, log) -> dict[str, Any]:
    """The context probe on the validation stream (k2core/train/probe.py); {} when switched off."""
    from k2core.text.special_tokens import SPECIAL_TOKENS
    from k2core.train import probe as P

    if not cfg.probe.enabled:
        return {}
    try:
        probes = P.build(val_rows.reshape(-1), cfg.probe, index["vocab_size"], len(SPECIAL_TOKENS),
                         "the validation split (raise tokenize.val_fraction, or set pretrain.probe.enabled=false)")
    except K2Error as e:                   # the model is still good: say why there is no probe, keep going
        log(f"pretrain: context probe skipped: {e}")
        return {"probe_skipped": str(e)}
    model.eval()
    out = P.run(P.model_logits(model, device), probes)
    log(f"pretrain: context probe: copy accuracy {out['probe_copy_accuracy']:.2f} at >= {cfg.probe.distance} tokens "
        f"back, {out['probe_near_copy_accuracy']:.2f} at {cfg.probe.near_distance}, control "
        f"{out['probe_control_accuracy']:.2f}")
    return out


# ---------------------------------------------------------------------------- the stage
def resume_dir(ctx: StageContext) -> Path:
    """Local, outside the work dir (which a rerun wipes): survives a killed run of this version."""
    return Path(ctx.store.scratch_root()) / ".resume" / ctx.stage / ctx.version


def val_batches(val: np.ndarray, cfg, device) -> list[dict[str, torch.Tensor]]:
    n = min(cfg.eval_batches, max(1, len(val) // cfg.micro_batch))
    out = [torch.from_numpy(val[k * cfg.micro_batch:(k + 1) * cfg.micro_batch].astype(np.int64)).to(device)
           for k in range(n)]
    return [{"input_ids": b, "labels": b} for b in out if len(b)]


@dataclass
class Job:
    """Everything one training process needs, JSON-serialisable (torchrun workers read it)."""

    cfg: dict[str, Any]
    index: dict[str, Any]
    train_files: list[str]
    val_files: list[str]
    tokenizer_files: list[str]
    workdir: str
    resume: str

    @classmethod
    def from_ctx(cls, ctx: StageContext) -> "Job":
        art = ctx.inputs["tokenize"]
        return cls.from_tokens(art.path, ctx.cfg, ctx.workdir, resume_dir(ctx))

    @classmethod
    def from_tokens(cls, path: Callable[[str], Any], cfg, workdir: Path, resume: Path) -> "Job":
        """A job over a tokenize artifact; `path` maps the artifact's relative names to files."""
        index = json.loads(Path(path("index.json")).read_text())
        files = {split: [str(path(s["file"])) for s in index["shards"] if s["split"] == split]
                 for split in ("train", "val")}
        if not files["train"] or not files["val"]:
            raise TrainingFailed("the tokenize artifact needs a train and a val shard "
                                 f"(has {len(files['train'])} train, {len(files['val'])} val)")
        toks = [str(path(f"tokenizer/{f}")) for f in ("tokenizer.json", "tokenizer_config.json",
                                                      "special_tokens_map.json")]
        return cls(cfg.model_dump(mode="json"), index, files["train"], files["val"], toks, str(workdir), str(resume))

    def rows(self, split: str) -> np.ndarray:
        from k2core.artifacts import read_rows

        try:
            return read_rows(self.train_files if split == "train" else self.val_files, self.index["dtype"],
                             self.index["seq_len"])
        except K2Error as e:
            raise TrainingFailed(str(e)) from None


def run(ctx: StageContext) -> dict[str, Any]:
    job = Job.from_ctx(ctx)
    return train_job(ENTRY, job.__dict__, Path(job.workdir), ctx.cfg.nproc, ctx.cfg.steps, "pretrain", ctx.log,
                     ctx.progress)


def train_worker(job: dict[str, Any], log, progress) -> dict[str, Any]:
    return train(Job(**job), log, progress)


def train(job: Job, log, progress) -> dict[str, Any]:
    """Pre-training in this process: single, or one rank of a torchrun job (rank 0 exports)."""
    from k2core.config import PretrainConfig

    cfg = PretrainConfig.model_validate(job.cfg)
    rank, world = dist_info()
    index, vocab = job.index, job.index["vocab_size"]
    train_rows, val_rows = job.rows("train"), job.rows("val")
    if cfg.micro_batch % world:
        raise TrainingFailed(f"pretrain.micro_batch = {cfg.micro_batch} must divide by the {world} processes")
    device = pick_device(cfg.device, world)
    model = build_model(cfg, vocab, device)
    trainer = Trainer(cfg, model, device, name="pretrain", resume_dir=Path(job.resume), log=log, progress=progress,
                      progress_file=Path(job.workdir) / "progress.json")
    phases = Phases(cfg, train_rows, index["seq_len"], vocab, world)
    result = trainer.fit(phases.batch, val_batches(val_rows, cfg, device), lambda step: wsd_lr(step, cfg),
                         tokens_per_step=cfg.micro_batch * cfg.grad_accum * index["seq_len"],
                         seq_len=phases.long_len or index["seq_len"], extra=phases.columns)
    if rank != 0:
        return {}
    probe = context_probe(cfg, model, val_rows, index, device, log)
    metrics = finish(job, cfg, model, result.telemetry, result.final_val_loss, index, phases, probe)
    trainer.checkpointer.clear()           # the final model is in the artifact now
    return metrics


def finish(job: Job, cfg, model, telemetry, final_val: float, index, phases: Phases,
           probe: dict[str, Any]) -> dict[str, Any]:
    import pandas as pd

    from k2core.model.checkpoint import save_checkpoint

    wd = Path(job.workdir)
    save_checkpoint(model, wd / "model")
    for f in job.tokenizer_files:
        shutil.copy(f, wd / "model" / Path(f).name)
    context = phases.long_len or index["seq_len"]
    set_model_max_length(wd / "model", context)
    df = pd.DataFrame(telemetry)
    df.to_parquet(wd / "telemetry.parquet")
    plot(df, wd, final_val)
    vals = df.val_loss.dropna()           # each evaluated on the weights at the start of its step
    metrics = {"steps": len(df), "planned_steps": cfg.steps, "initial_loss": float(df.loss.iloc[0]), "final_loss": float(df.loss.iloc[-10:].mean()),
               "initial_val_loss": float(vals.iloc[0]), "final_val_loss": final_val,
               "val_loss_drop": float(vals.iloc[0] - final_val),
               "nan_steps": int((~np.isfinite(df.loss)).sum()),
               "tokens": int(sum(phases.columns(int(s))["tokens"] for s in df.step)),
               "trained_context": context,
               "long_context_steps": int(sum(df.step >= phases.start)),
               **probe,
               "tokens_per_s_median": float(df.tokens_per_s.median()),
               "mfu_median": float(df.mfu.median()) if df.mfu.notna().any() else None,
               "peak_max_logit": float(df.max_logit.max()), "clipped_head_steps": int(df.clipped_heads.sum()),
               "parameters": sum(p.numel() for p in model.parameters()), "vocab_size": index["vocab_size"]}
    (wd / "summary.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def set_model_max_length(model_dir: Path, context: int) -> None:
    """tokenizer_config.json states the context the model was trained for (transformers warns on
    longer inputs)."""
    p = model_dir / "tokenizer_config.json"
    conf = json.loads(p.read_text())
    conf["model_max_length"] = int(context)
    p.write_text(json.dumps(conf, indent=1))


def plot(df, out: Path, final_val: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4), dpi=110)
    ax = axes[0]
    ax.plot(df.step, df.loss, lw=0.8, label="train")
    v = df.dropna(subset=["val_loss"])
    ax.plot([*v.step, len(df)], [*v.val_loss, final_val], "o-", ms=3, label="held-out")
    if "phase" in df and (df.phase == "long_context").any():
        start = int(df.step[df.phase == "long_context"].iloc[0])
        for a in axes:
            a.axvspan(start, len(df), color="orange", alpha=0.12, lw=0,
                      label=f"long context ({int(df.seq_len.max())} tokens)" if a is ax else None)
    ax.set(xlabel="step", ylabel="loss (nats / token)", title="Loss")
    ax.legend()
    ax = axes[1]
    ax.plot(df.step, df.max_logit, lw=0.8)
    ax.set(xlabel="step", ylabel="max attention logit", title="Max logit (all layers, heads)")
    ax = axes[2]
    if df.expert_load_max_over_mean.notna().any():
        ax.plot(df.step, df.expert_load_max_over_mean, lw=0.8)
    ax.set(xlabel="step", ylabel="max / mean expert load (worst layer)", title="Expert load balance")
    for a in axes:
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "training.png")
    plt.close(fig)


def gate_frame(workdir: Path, columns: list[str]):
    import pandas as pd

    path = workdir / "telemetry.parquet"
    return pd.read_parquet(path, columns=columns) if path.exists() else pd.DataFrame({c: [] for c in columns})
