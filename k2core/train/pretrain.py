"""The `pretrain` stage: the K2 model trained with MuonClip on the `tokenize` artifact's shards.

WSD schedule, gradient accumulation, global-norm gradient clipping (on gradients), bf16 autocast on
GPU / fp32 on CPU, a deterministic data order (a seeded permutation of rows: the data position is
the step number), periodic validation loss, and resumable checkpoints every N steps (model,
optimizer, step, RNG states, telemetry so far; sha256-verified, written atomically) in a resume
directory that outlives a crash. Telemetry per step goes to ``telemetry.parquet``; plots of loss,
max attention logit and expert load to PNG; the final model to ``model/`` in Hugging Face format
with the tokenizer.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import threading
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from k2core.stage import K2Error, StageContext


class TrainingFailed(K2Error):
    """Training stopped (NaN loss, bad data); the message names the step and the last checkpoint."""


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


# ---------------------------------------------------------------------------- checkpoints
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_resume(dirpath: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """`step-XXXXXXX.pt` + its sha256 file, each written to a temp name and renamed."""
    dirpath.mkdir(parents=True, exist_ok=True)
    path = dirpath / f"step-{step:07d}.pt"
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    digest = _sha256(tmp)
    os.replace(tmp, path)
    (dirpath / f"{path.name}.sha256.tmp").write_text(digest)
    os.replace(dirpath / f"{path.name}.sha256.tmp", dirpath / f"{path.name}.sha256")
    for old in sorted(dirpath.glob("step-*.pt"))[:-keep]:
        old.unlink(missing_ok=True)
        (dirpath / f"{old.name}.sha256").unlink(missing_ok=True)
    return path


def load_resume(dirpath: Path, log) -> tuple[dict[str, Any] | None, Path | None]:
    """The newest checkpoint whose sha256 verifies and that loads; bad ones are named and skipped."""
    for path in sorted(dirpath.glob("step-*.pt"), reverse=True) if dirpath.exists() else []:
        side = dirpath / f"{path.name}.sha256"
        if not side.exists():
            log(f"pretrain: checkpoint {path} has no sha256 file — skipped, trying the previous one")
            continue
        if _sha256(path) != side.read_text().strip():
            log(f"pretrain: checkpoint {path} fails its sha256 check (truncated or corrupt) — skipped, "
                "trying the previous one")
            continue
        try:
            return torch.load(path, map_location="cpu", weights_only=False), path
        except Exception as e:       # noqa: BLE001 — any unreadable file falls back the same way
            log(f"pretrain: checkpoint {path} cannot be read ({e}) — skipped, trying the previous one")
    return None, None


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


# ---------------------------------------------------------------------------- the stage
def resume_dir(ctx: StageContext) -> Path:
    """Local, outside the work dir (which a rerun wipes): survives a killed run of this version."""
    return Path(ctx.store.scratch_root()) / ".resume" / ctx.stage / ctx.version


def build_model(cfg, vocab: int | None, device: torch.device):
    """`cfg.preset` + `cfg.model` overrides (vocab_size from the tokenizer when given), initialised
    from `cfg.seed`, in training mode on `device`."""
    from k2core.model import K2ForCausalLM, ModelConfig

    mcfg = ModelConfig.preset(cfg.preset, **({**cfg.model, "vocab_size": vocab} if vocab else cfg.model))
    torch.manual_seed(cfg.seed)
    with torch.device(device):
        model = K2ForCausalLM(mcfg)
    return model.init_weights(cfg.seed).train()


def autocast(device: torch.device):
    """bf16 autocast on GPUs (fp32 master weights), plain fp32 on CPUs."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else \
        torch.autocast("cpu", enabled=False)


@torch.no_grad()
def evaluate(model, batches: list[torch.Tensor], amp) -> float:
    """Mean next-token loss over fixed held-out batches."""
    model.eval()
    with amp:
        losses = [float(model(b, labels=b).loss) for b in batches]
    model.train()
    return sum(losses) / len(losses) if losses else float("nan")


def val_batches(val: np.ndarray, cfg, device) -> list[torch.Tensor]:
    n = min(cfg.eval_batches, max(1, len(val) // cfg.micro_batch))
    out = [torch.from_numpy(val[k * cfg.micro_batch:(k + 1) * cfg.micro_batch].astype(np.int64)).to(device)
           for k in range(n)]
    return [b for b in out if len(b)]


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
        from k2core.data.tokenize import read_rows

        try:
            return read_rows(self.train_files if split == "train" else self.val_files, self.index["dtype"],
                             self.index["seq_len"])
        except K2Error as e:
            raise TrainingFailed(str(e)) from None


def run(ctx: StageContext) -> dict[str, Any]:
    job = Job.from_ctx(ctx)
    if ctx.cfg.nproc > 1:
        return launch(job, ctx.cfg.nproc, ctx.log, ctx.progress)
    return train(job, ctx.log, ctx.progress)


def launch(job: Job, nproc: int, log, progress) -> dict[str, Any]:
    """`nproc` training processes under torchrun (data parallel); rank 0 writes the outputs and
    a progress file this process turns into the progress bar / Prefect progress artifact."""
    import subprocess
    import sys

    wd = Path(job.workdir)
    (wd / "job.json").write_text(json.dumps(job.__dict__))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "k2core.train.pretrain", str(wd / "job.json")]
    log("pretrain: launching " + " ".join(cmd[2:]))
    done = 0
    steps = job.cfg["steps"]
    tail: list[str] = []

    def forward(stream) -> None:        # rank 0's "pretrain: ..." lines into the stage log
        for line in stream:
            if line.startswith("pretrain:"):
                log(line.rstrip())
            else:
                sys.stderr.write(line)
                tail[:] = [*tail[-40:], line]

    with progress(total=steps, desc=f"pretrain ({nproc} processes)", unit="step") as bar:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        reader = threading.Thread(target=forward, args=(proc.stdout,), daemon=True)
        reader.start()
        while proc.poll() is None:
            time.sleep(1.0)
            try:
                step = json.loads((wd / "progress.json").read_text())["step"]
            except (OSError, ValueError, KeyError):
                continue
            bar.update(step - done)
            done = step
        reader.join(timeout=10)
    (wd / "job.json").unlink(missing_ok=True)
    (wd / "progress.json").unlink(missing_ok=True)
    err = wd / "error.txt"
    if proc.returncode != 0:
        msg = err.read_text() if err.exists() else (f"training processes exited with status {proc.returncode}; "
                                                   "their last output:\n" + "".join(tail[-20:]))
        raise TrainingFailed(msg)
    return json.loads((wd / "summary.json").read_text())


def _dist() -> tuple[int, int]:
    import torch.distributed as dist

    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


def train(job: Job, log, progress) -> dict[str, Any]:
    """The training loop, single-process or one rank of a torchrun job (data parallel: DDP
    averages gradients; every rank keeps the full optimizer state; rank 0 writes)."""
    import torch.distributed as dist

    from k2core.config import PretrainConfig
    from k2core.model.config import flops_per_token
    from k2core.optim import MuonClip
    from k2core.perf import matmul_peak

    cfg = PretrainConfig.model_validate(job.cfg)
    rank, world = _dist()
    index, vocab = job.index, job.index["vocab_size"]
    train_rows, val_rows = job.rows("train"), job.rows("val")
    if cfg.micro_batch % world:
        raise TrainingFailed(f"pretrain.micro_batch = {cfg.micro_batch} must divide by the {world} processes")
    if cfg.device == "auto" and torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) if world > 1 else torch.cuda.current_device())
    else:
        device = torch.device("cpu" if cfg.device == "auto" else cfg.device)
    model = build_model(cfg, vocab, device)
    ddp = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False) if world > 1 else None
    net = ddp or model
    if device.type == "cuda" and cfg.compile:
        net = torch.compile(net)
    zero1 = world > 1 and cfg.zero1
    opt = MuonClip.for_model(model, cfg.optim, **({"process_group": dist.group.WORLD} if zero1 else {}))
    amp = autocast(device)
    val = val_batches(val_rows, cfg, device)
    data = Batches(train_rows, cfg.micro_batch, cfg.seed, vocab)
    rdir = Path(job.resume)
    telemetry: list[dict[str, Any]] = []
    start = 0
    if rank != 0:
        log = lambda m: None  # noqa: E731 — rank 0 speaks for the job
    state, path = load_resume(rdir, log)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"])
        telemetry, start = state["telemetry"], state["step"]
        log(f"pretrain: resuming from {path} (step {start} of {cfg.steps})")
    tokens_per_step = cfg.micro_batch * cfg.grad_accum * index["seq_len"]
    fpt = flops_per_token(model.config, index["seq_len"]) if device.type == "cuda" else None
    peak = matmul_peak(device) * world if device.type == "cuda" else None
    # tests only: die like kill -9 right after this step (a deterministic point to resume from)
    crash_at = int(os.environ.get("K2_TEST_CRASH_STEP", "0"))
    last_good = path
    began = time.perf_counter()
    with progress(total=cfg.steps, desc="pretrain", unit="step") as bar:
        bar.update(start)
        for step in range(start, cfg.steps):
            if cfg.max_minutes is not None and step > start and _out_of_time(began, cfg.max_minutes, world, device):
                log(f"pretrain: stopping at step {step} of {cfg.steps}: pretrain.max_minutes = {cfg.max_minutes}")
                break
            val_loss = evaluate(model, val, amp) if step % cfg.eval_every == 0 else None
            t0 = time.perf_counter()
            lr = wsd_lr(step, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            loss_sum, S = torch.zeros((), device=device), None
            for micro in range(cfg.grad_accum):
                x = data.micro_batch(step * cfg.grad_accum + micro)
                x = x.chunk(world)[rank].to(device, non_blocking=True) if world > 1 else x.to(device)
                # DDP all-reduces gradients once per step, on the last micro-batch's backward
                sync = ddp.no_sync() if ddp is not None and micro < cfg.grad_accum - 1 else contextlib.nullcontext()
                with sync:
                    with amp:
                        out = net(x, labels=x, want_max_logits=True)
                    (out.loss / cfg.grad_accum).backward()
                loss_sum += out.loss.detach().float()
                S = out.max_logits if S is None else torch.maximum(S, out.max_logits)
            if world > 1:                  # the global batch's loss, S_max and expert loads
                dist.all_reduce(loss_sum)
                loss_sum /= world
                dist.all_reduce(S, op=dist.ReduceOp.MAX)
                for _, moe in model.moe_layers():
                    dist.all_reduce(moe.load)
            loss = float(loss_sum) / cfg.grad_accum
            if not math.isfinite(loss):
                raise TrainingFailed(f"loss is {loss} at step {step}; the last good checkpoint is "
                                     f"{last_good or 'none (no checkpoint written yet)'}")
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
            stats = opt.step(max_logits=S)
            opt.zero_grad(set_to_none=True)
            load = model.expert_load()                    # [moe layers, experts], before the bias update
            model.update_routing_bias()
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            row = {"step": step, "loss": loss, "lr": lr, "grad_norm": float(gnorm), "tokens_per_s": tokens_per_step / dt,
                   "mfu": (tokens_per_step * fpt / dt / peak) if fpt else None,
                   "max_logit": float(stats.max_logit.max()), "max_logit_per_head": stats.max_logit.flatten().tolist(),
                   "clipped_heads": stats.clipped_heads, "min_gamma": stats.min_gamma,
                   "expert_load_max_over_mean": _imbalance(load), "val_loss": val_loss}
            telemetry.append(row)
            bar.update(1)
            if step == start or (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                log(_log_line(row, cfg.steps, dt, first=step == start))
            if rank == 0 and world > 1:
                _write_json(Path(job.workdir) / "progress.json", {"step": step + 1})
            if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
                osd = opt.consolidated_state_dict() if zero1 else opt.state_dict() if rank == 0 else None
                if rank == 0:
                    last_good = save_resume(rdir, step + 1, {
                        "model": model.state_dict(), "optimizer": osd, "rng": _rng_state(),
                        "telemetry": telemetry, "step": step + 1}, cfg.keep_checkpoints)
            if crash_at and step + 1 == crash_at:
                os._exit(9)
    final_val = evaluate(model, val, amp)
    if rank != 0:
        return {}
    return finish(job, cfg, model, telemetry, final_val, index, rdir)


def _log_line(row: dict[str, Any], steps: int, dt: float, first: bool) -> str:
    parts = [f"pretrain: step {row['step'] + 1}/{steps}", f"loss {row['loss']:.4f}"]
    if row["val_loss"] is not None:
        parts.append(f"val {row['val_loss']:.4f}")
    parts += [f"lr {row['lr']:.2e}", f"grad norm {row['grad_norm']:.3f}", f"{row['tokens_per_s']:,.0f} tokens/s"]
    if row["mfu"] is not None:
        parts.append(f"MFU {row['mfu']:.1%}")
    parts.append(f"max logit {row['max_logit']:.1f} ({row['clipped_heads']} heads clipped)")
    line = ", ".join(parts)
    return f"{line} — first step {dt:.1f} s (includes compilation / warm-up)" if first else line


def _out_of_time(began: float, minutes: float, world: int, device: torch.device) -> bool:
    """Whether the time budget is spent — rank 0's clock decides for every rank."""
    import torch.distributed as dist

    over = torch.tensor(float(time.perf_counter() - began > 60.0 * minutes), device=device)
    if world > 1:
        dist.broadcast(over, src=0)
    return bool(over)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def worker_main(job_path: str) -> int:
    """One torchrun rank: join the process group, train, and report a failure for the parent."""
    import torch.distributed as dist

    job = Job(**json.loads(Path(job_path).read_text()))
    backend = "nccl" if torch.cuda.is_available() and job.cfg.get("device") != "cpu" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.get_world_size()))
    try:
        train(job, lambda m: print(m, flush=True), lambda **kw: _NoBar())
    except TrainingFailed as e:
        if dist.get_rank() == 0:
            (Path(job.workdir) / "error.txt").write_text(str(e))
        return 1
    finally:
        dist.destroy_process_group()
    return 0


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def update(self, n: float = 1) -> None:
        return None


def _imbalance(load: torch.Tensor | None) -> float | None:
    if load is None or load.numel() == 0:
        return None
    load = load.float()
    return float((load.max(dim=-1).values / load.mean(dim=-1).clamp(min=1e-9)).max())


def finish(job: Job, cfg, model, telemetry, final_val: float, index, rdir: Path) -> dict[str, Any]:
    import pandas as pd

    from k2core.model.checkpoint import save_checkpoint

    wd = Path(job.workdir)
    save_checkpoint(model, wd / "model")
    for f in job.tokenizer_files:
        shutil.copy(f, wd / "model" / Path(f).name)
    df = pd.DataFrame(telemetry)
    df.to_parquet(wd / "telemetry.parquet")
    plot(df, wd, final_val)
    vals = df.val_loss.dropna()           # each evaluated on the weights at the start of its step
    metrics = {"steps": len(df), "planned_steps": cfg.steps, "initial_loss": float(df.loss.iloc[0]), "final_loss": float(df.loss.iloc[-10:].mean()),
               "initial_val_loss": float(vals.iloc[0]), "final_val_loss": final_val,
               "val_loss_drop": float(vals.iloc[0] - final_val),
               "nan_steps": int((~np.isfinite(df.loss)).sum()),
               "tokens": int(len(df) * cfg.micro_batch * cfg.grad_accum * index["seq_len"]),
               "tokens_per_s_median": float(df.tokens_per_s.median()),
               "mfu_median": float(df.mfu.median()) if df.mfu.notna().any() else None,
               "peak_max_logit": float(df.max_logit.max()), "clipped_head_steps": int(df.clipped_heads.sum()),
               "parameters": sum(p.numel() for p in model.parameters()), "vocab_size": index["vocab_size"]}
    (wd / "summary.json").write_text(json.dumps(metrics, indent=1))
    shutil.rmtree(rdir, ignore_errors=True)           # the final model is in the artifact now
    return metrics


def plot(df, out: Path, final_val: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4), dpi=110)
    ax = axes[0]
    ax.plot(df.step, df.loss, lw=0.8, label="train")
    v = df.dropna(subset=["val_loss"])
    ax.plot([*v.step, len(df)], [*v.val_loss, final_val], "o-", ms=3, label="held-out")
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


if __name__ == "__main__":
    import sys

    sys.exit(worker_main(sys.argv[1]))
