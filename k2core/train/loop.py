"""The one training loop (torchtitan's `train.py` in levels): pre-training, SFT and RL differ only in
their batch source, schedule and what they export.

    Objective          what a micro-batch's loss is: the LM loss (pretrain, sft) or RL's (K1.5)
    forward_backward   one micro-batch: forward (bf16 autocast on GPU), loss · weight / grad_accum, backward
    token_weights      the weights that make a step's loss the global batch's mean per unit (token)
    train_step         micro-batches (DDP reduces once, on the last), global-norm clip,
                       MuonClip.step(max_logits) (QK-Clip), routing-bias update; one telemetry row
    Trainer.fit        the loop: calls the components below, step by step, and the callbacks

Components: `Validator` (held-out loss every `eval_every` steps), `Checkpointer` (resumable state
every `checkpoint_every` steps: model, optimizer, RNG, telemetry; sha256-checked, atomic; a corrupt
one is named and skipped), `TimeBudget` (`max_minutes`, rank 0's clock decides), `log_line`
(the step's loss, lr, grad norm, tokens/s, MFU, max logit). Extra callbacks (``on_step_end``) come
from ``K2_TRAIN_CALLBACKS`` — ``module:factory`` import paths, comma-separated, built in every
process — which is how the kill tests die like ``kill -9`` at a chosen step.

Data parallel: `launch` starts `nproc` processes under torchrun (``python -m k2core.train.loop
job.json``); each runs `worker_main`, which joins the process group and calls the stage's entry
(``module:function``) with the job. DDP averages gradients; with ``zero1`` MuonClip shards its state.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import math
import os
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from k2core.errors import K2Error

Batch = dict[str, torch.Tensor]          # model keyword arguments: input_ids, labels, …


class TrainingFailed(K2Error):
    """Training stopped (NaN loss, bad data); the message names the step and the last checkpoint."""


# ---------------------------------------------------------------------------- set-up
def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torchrun."""
    import torch.distributed as dist

    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


def pick_device(setting: str, world: int) -> torch.device:
    """`auto`: this rank's GPU when there is one, else the CPU."""
    if setting == "auto" and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) if world > 1 else torch.cuda.current_device())
    return torch.device("cpu" if setting == "auto" else setting)


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
def evaluate(model, batches: list[Batch], amp) -> float:
    """Mean loss over fixed held-out batches."""
    model.eval()
    with amp:
        losses = [float(model(**b).loss) for b in batches]
    model.train()
    return sum(losses) / len(losses) if losses else float("nan")


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


def load_resume(dirpath: Path, log, name: str = "pretrain") -> tuple[dict[str, Any] | None, Path | None]:
    """The newest checkpoint whose sha256 verifies and that loads; bad ones are named and skipped."""
    for path in sorted(dirpath.glob("step-*.pt"), reverse=True) if dirpath.exists() else []:
        side = dirpath / f"{path.name}.sha256"
        if not side.exists():
            log(f"{name}: checkpoint {path} has no sha256 file — skipped, trying the previous one")
            continue
        if _sha256(path) != side.read_text().strip():
            log(f"{name}: checkpoint {path} fails its sha256 check (truncated or corrupt) — skipped, "
                "trying the previous one")
            continue
        try:
            return torch.load(path, map_location="cpu", weights_only=False), path
        except Exception as e:       # noqa: BLE001 — any unreadable file falls back the same way
            log(f"{name}: checkpoint {path} cannot be read ({e}) — skipped, trying the previous one")
    return None, None


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


class Checkpointer:
    """Resumable state in a directory that outlives a crash; rank 0 writes (ZeRO-1: the optimizer
    state is gathered first, so a run resumes on any number of processes)."""

    def __init__(self, dirpath: Path, every: int, keep: int, rank: int, zero1: bool, name: str):
        self.dir, self.every, self.keep, self.rank, self.zero1, self.name = dirpath, every, keep, rank, zero1, name
        self.last_good: Path | None = None

    def restore(self, model, opt, log) -> tuple[int, list[dict[str, Any]]]:
        """(first step, telemetry so far): 0 and [] without a usable checkpoint."""
        state, path = load_resume(self.dir, log, self.name)
        self.last_good = path
        if state is None:
            return 0, []
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        return state["step"], state["telemetry"]

    def after_step(self, step: int, steps: int, model, opt, telemetry: list[dict[str, Any]]) -> None:
        """Checkpoint after `step` when it ends a checkpoint interval (not after the last step)."""
        if (step + 1) % self.every or step + 1 >= steps:
            return
        osd = opt.consolidated_state_dict() if self.zero1 else opt.state_dict() if self.rank == 0 else None
        if self.rank == 0:
            self.last_good = save_resume(self.dir, step + 1, {
                "model": model.state_dict(), "optimizer": osd, "rng": rng_state(),
                "telemetry": telemetry, "step": step + 1}, self.keep)

    def clear(self) -> None:
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------------------- components
class Validator:
    """Held-out loss at step 0, every `every` steps (on the weights at the start of the step) and
    at the end."""

    def __init__(self, batches: list[Batch], every: int, amp):
        self.batches, self.every, self.amp = batches, every, amp

    def at(self, step: int, model) -> float | None:
        return evaluate(model, self.batches, self.amp) if step % self.every == 0 else None

    def final(self, model) -> float:
        return evaluate(model, self.batches, self.amp)


class TimeBudget:
    """`max_minutes` of training; rank 0's clock decides for every rank."""

    def __init__(self, minutes: float | None, world: int, device: torch.device):
        self.minutes, self.world, self.device = minutes, world, device
        self.began = time.perf_counter()

    def spent(self) -> bool:
        if self.minutes is None:
            return False
        import torch.distributed as dist

        over = torch.tensor(float(time.perf_counter() - self.began > 60.0 * self.minutes), device=self.device)
        if self.world > 1:
            dist.broadcast(over, src=0)
        return bool(over)


def log_line(name: str, row: dict[str, Any], steps: int, dt: float, first: bool) -> str:
    parts = [f"{name}: step {row['step'] + 1}/{steps}", f"loss {row['loss']:.4f}"]
    if row["val_loss"] is not None:
        parts.append(f"val {row['val_loss']:.4f}")
    parts += [f"lr {row['lr']:.2e}", f"grad norm {row['grad_norm']:.3f}", f"{row['tokens_per_s']:,.0f} tokens/s"]
    if row["mfu"] is not None:
        parts.append(f"MFU {row['mfu']:.1%}")
    parts.append(f"max logit {row['max_logit']:.1f} ({row['clipped_heads']} heads clipped)")
    line = ", ".join(parts)
    return f"{line} — first step {dt:.1f} s (includes compilation / warm-up)" if first else line


def imbalance(load: torch.Tensor | None) -> float | None:
    """Max / mean expert load of the worst MoE layer."""
    if load is None or load.numel() == 0:
        return None
    load = load.float()
    return float((load.max(dim=-1).values / load.mean(dim=-1).clamp(min=1e-9)).max())


class Callback:
    """Called after every step (after its checkpoint) with the step's telemetry row."""

    def on_step_end(self, trainer: "Trainer", step: int, row: dict[str, Any]) -> None:
        return None


def env_callbacks() -> list[Callback]:
    """Callbacks named in ``K2_TRAIN_CALLBACKS`` (``module:factory``, comma-separated)."""
    out = []
    for ref in filter(None, (r.strip() for r in os.environ.get("K2_TRAIN_CALLBACKS", "").split(","))):
        module, _, attr = ref.partition(":")
        try:
            out.append(getattr(importlib.import_module(module), attr)())
        except (ImportError, AttributeError) as e:
            raise TrainingFailed(f"K2_TRAIN_CALLBACKS: cannot load {ref!r} ({e})") from None
    return out


class _NonFinite(Exception):
    def __init__(self, loss: float):
        self.loss = loss


# ---------------------------------------------------------------------------- one step
class Objective:
    """What a step minimises over one micro-batch: the language-model loss by default (pretrain,
    sft); RL supplies its own (K1.5's). ``loss`` returns (mean loss over the micro-batch's units,
    per-head max logits [layers, heads]); ``units`` counts those units (labelled tokens here), so
    the step's loss is the mean over every unit of the global batch."""

    def loss(self, net, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        # the head only at labelled tokens (one process: DDP's reducer expects the full output)
        out = net(**batch, want_max_logits=True, loss_only=dist_info()[1] == 1)
        return out.loss, out.max_logits

    def units(self, batch: Batch) -> torch.Tensor | None:
        return (batch["labels"][:, 1:] != -100).sum() if "labels" in batch else None


LM = Objective()


def forward_backward(net, batch: Batch, amp, grad_accum: int = 1, weight: torch.Tensor | float = 1.0,
                     objective: Objective = LM) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight · loss, per-head max logits) of one micro-batch; its gradients (· weight / grad_accum)
    accumulate."""
    with amp:
        loss, max_logits = objective.loss(net, batch)
    loss = loss * weight
    (loss / grad_accum).backward()
    return loss.detach().float(), max_logits


def token_weights(micro: list[Batch], world: int, device: torch.device,
                  objective: Objective = LM) -> list[torch.Tensor] | list[float]:
    """Per micro-batch loss weights that make the step's loss the mean over every unit (labelled
    token, for the LM objective) of the global batch (all micro-batches, all ranks), as one process
    with the whole batch in one forward would compute it: weight_i = n_i · grad_accum · world / Σ n.
    Rows with masked labels (SFT's assistant-only loss) hold different token counts; with equal
    counts (pre-training) every weight is exactly 1.0, so those runs are bit-for-bit what they were."""
    units = [objective.units(b) for b in micro]
    if not micro or any(u is None for u in units):
        return [1.0] * len(micro)
    counts = torch.stack([torch.as_tensor(u) for u in units]).double()
    total = counts.sum()
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(total)
    return list((counts * (len(micro) * world) / total.clamp(min=1.0)).float())


@dataclass
class StepResult:
    loss: float                  # mean over the micro-batches (and ranks)
    grad_norm: float             # before clipping
    stats: Any                   # MuonClip's StepStats: max logit per head, clipped heads
    load: torch.Tensor           # [moe layers, experts] tokens routed, before the bias update


def train_step(model, opt, micro_batches: Iterable[Batch], *, amp, grad_clip: float | None,
               device: torch.device, grad_accum: int = 1, net=None, ddp=None, world: int = 1,
               check_finite: bool = True, objective: Objective = LM) -> StepResult:
    """`grad_accum` micro-batches (DDP reduces once, on the last), each weighted by its share of the
    global batch's labelled tokens (`token_weights`), the global batch's loss, S_max
    and expert loads across ranks, global-norm clipping, ``opt.step(max_logits=S_max)`` (QK-Clip),
    then the aux-loss-free routing-bias update. A non-finite loss raises before the update unless
    `check_finite` is off (an experiment recording a divergence)."""
    net = net if net is not None else model
    loss_sum, S = torch.zeros((), device=device), None
    micro_batches = list(micro_batches)
    weights = token_weights(micro_batches, world, device, objective)
    for micro, (batch, w) in enumerate(zip(micro_batches, weights)):
        last = micro == grad_accum - 1
        with ddp.no_sync() if ddp is not None and not last else contextlib.nullcontext():
            loss, max_logits = forward_backward(net, batch, amp, grad_accum, w, objective)
        loss_sum += loss
        S = max_logits if S is None else torch.maximum(S, max_logits)
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(loss_sum)
        loss_sum /= world
        dist.all_reduce(S, op=dist.ReduceOp.MAX)
        for _, moe in model.moe_layers():
            dist.all_reduce(moe.load)
    loss_f = float(loss_sum) / grad_accum
    if check_finite and not math.isfinite(loss_f):
        raise _NonFinite(loss_f)
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or float("inf"))
    stats = opt.step(max_logits=S)
    opt.zero_grad(set_to_none=True)
    load = model.expert_load()
    model.update_routing_bias()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return StepResult(loss_f, float(gnorm), stats, load)


@dataclass
class FitResult:
    telemetry: list[dict[str, Any]]
    final_val_loss: float


# ---------------------------------------------------------------------------- the trainer
class Trainer:
    """One training process (single, or one rank of a torchrun job) over a built `model`:
    wraps it (DDP across ranks, torch.compile on GPUs), builds MuonClip from ``cfg.optim``."""

    def __init__(self, cfg, model, device: torch.device, *, name: str, resume_dir: Path, log, progress,
                 progress_file: Path | None = None, callbacks: Iterable[Callback] = (), objective: Objective = LM):
        import torch.distributed as dist

        self.cfg, self.model, self.device, self.name, self.objective = cfg, model, device, name, objective
        self.rank, self.world = dist_info()
        self.log = log if self.rank == 0 else (lambda m: None)   # rank 0 speaks for the job
        self.progress = progress
        self.ddp = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False) \
            if self.world > 1 else None
        self.net = self.ddp or model
        if device.type == "cuda" and cfg.compile:
            self.net = torch.compile(self.net)
        zero1 = self.world > 1 and cfg.zero1
        self.opt = cfg.optim.build(model, **({"process_group": dist.group.WORLD} if zero1 else {}))
        self.amp = autocast(device)
        self.checkpointer = Checkpointer(resume_dir, cfg.checkpoint_every, cfg.keep_checkpoints, self.rank, zero1,
                                         name)
        self.progress_file = progress_file if self.rank == 0 and self.world > 1 else None
        self.callbacks = [*callbacks, *env_callbacks()]

    # ------------------------------------------------------------------ levels
    def _place(self, batch: Batch) -> Batch:
        """This rank's share of a micro-batch, on the device (a tensor used twice moves once)."""
        moved: dict[int, torch.Tensor] = {}
        out = {}
        for k, t in batch.items():
            if id(t) not in moved:
                moved[id(t)] = t.chunk(self.world)[self.rank].to(self.device, non_blocking=True) \
                    if self.world > 1 else t.to(self.device)
            out[k] = moved[id(t)]
        return out

    def train_step(self, step: int, batch_at: Callable[[int], Batch], lr: float) -> "StepResult":
        """Optimizer step `step` at learning rate `lr` over micro-batches ``batch_at(k)``."""
        for g in self.opt.param_groups:
            g["lr"] = lr
        ga = self.cfg.grad_accum
        micro = (self._place(batch_at(step * ga + m)) for m in range(ga))
        return train_step(self.model, self.opt, micro, net=self.net, amp=self.amp, grad_accum=ga,
                          objective=self.objective,
                          grad_clip=self.cfg.grad_clip, device=self.device, ddp=self.ddp, world=self.world)

    # ------------------------------------------------------------------ the loop
    def fit(self, batch_at: Callable[[int], Batch], val: list[Batch], lr_at: Callable[[int], float],
            tokens_per_step: int, seq_len: int, extra: Callable[[int], dict[str, Any]] | None = None) -> FitResult:
        """Train from the last good checkpoint (or step 0) to ``cfg.steps`` or the time budget.
        `extra(step)`, called after the step, adds columns to its telemetry row (RL: rewards, lengths,
        rollout seconds); its ``tokens``, when given, are the step's tokens for tokens/s."""
        from k2core.model.config import flops_per_token
        from k2core.perf import matmul_peak

        cfg, model, name = self.cfg, self.model, self.name
        validator = Validator(val, cfg.eval_every, self.amp)
        start, telemetry = self.checkpointer.restore(model, self.opt, self.log)
        if self.checkpointer.last_good is not None:
            self.log(f"{name}: resuming from {self.checkpointer.last_good} (step {start} of {cfg.steps})")
        cuda = self.device.type == "cuda"
        fpt = flops_per_token(model.config, seq_len) if cuda else None
        peak = matmul_peak(self.device) * self.world if cuda else None
        budget = TimeBudget(cfg.max_minutes, self.world, self.device)
        with self.progress(total=cfg.steps, desc=name, unit="step") as bar:
            bar.update(start)
            for step in range(start, cfg.steps):
                if step > start and budget.spent():
                    self.log(f"{name}: stopping at step {step} of {cfg.steps}: {name}.max_minutes = {cfg.max_minutes}")
                    break
                val_loss = validator.at(step, model)
                t0 = time.perf_counter()
                lr = lr_at(step)
                try:
                    r = self.train_step(step, batch_at, lr)
                except _NonFinite as e:
                    raise TrainingFailed(f"loss is {e.loss} at step {step}; the last good checkpoint is "
                                         f"{self.checkpointer.last_good or 'none (no checkpoint written yet)'}") from None
                dt = time.perf_counter() - t0
                stats = r.stats
                more = extra(step) if extra is not None else {}
                tokens = more.pop("tokens", tokens_per_step)
                row = {"step": step, "loss": r.loss, "lr": lr, "grad_norm": r.grad_norm, "step_s": dt,
                       "tokens_per_s": tokens / dt,
                       "mfu": (tokens * fpt / dt / peak) if fpt else None,
                       "max_logit": float(stats.max_logit.max()),
                       "max_logit_per_head": stats.max_logit.flatten().tolist(),
                       "clipped_heads": stats.clipped_heads, "min_gamma": stats.min_gamma,
                       "expert_load_max_over_mean": imbalance(r.load), "val_loss": val_loss, **more}
                telemetry.append(row)
                bar.update(1)
                if step == start or (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                    self.log(log_line(name, row, cfg.steps, dt, first=step == start))
                if self.progress_file is not None:
                    _write_json(self.progress_file, {"step": step + 1})
                self.checkpointer.after_step(step, cfg.steps, model, self.opt, telemetry)
                for cb in self.callbacks:
                    cb.on_step_end(self, step, row)
        return FitResult(telemetry, validator.final(model))


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- torchrun
def launch(entry: str, job: dict[str, Any], workdir: Path, nproc: int, steps: int, name: str, log,
           progress) -> dict[str, Any]:
    """`nproc` training processes under torchrun (data parallel), each calling `entry`
    (``module:function(job, log, progress)``); rank 0 writes the outputs (its metrics in
    ``summary.json``) and a progress file this process turns into the progress bar."""
    wd = Path(workdir)
    (wd / "job.json").write_text(json.dumps({"entry": entry, "job": job}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "k2core.train.loop", str(wd / "job.json")]
    log(f"{name}: launching " + " ".join(cmd[2:]))
    done = 0
    tail: list[str] = []

    def forward(stream) -> None:        # rank 0's "<name>: ..." lines into the stage log
        for line in stream:
            if line.startswith(f"{name}:"):
                log(line.rstrip())
            else:
                sys.stderr.write(line)
                tail[:] = [*tail[-40:], line]

    with progress(total=steps, desc=f"{name} ({nproc} processes)", unit="step") as bar:
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


def train_job(entry: str, job: dict[str, Any], workdir: Path, nproc: int, steps: int, name: str, log,
              progress) -> dict[str, Any]:
    """`entry` (``module:function(job, log, progress)``) in this process when `nproc` is 1, else
    under torchrun (`launch`); the rank-0 result either way."""
    if nproc > 1:
        return launch(entry, job, workdir, nproc, steps, name, log, progress)
    module, _, attr = entry.partition(":")
    return getattr(importlib.import_module(module), attr)(job, log, progress)


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def update(self, n: float = 1) -> None:
        return None


def worker_main(job_path: str) -> int:
    """One torchrun rank: join the process group, run the entry, report a failure for the parent."""
    import torch.distributed as dist

    spec = json.loads(Path(job_path).read_text())
    job = spec["job"]
    module, _, attr = spec["entry"].partition(":")
    entry = getattr(importlib.import_module(module), attr)
    backend = "nccl" if torch.cuda.is_available() and job["cfg"].get("device") != "cpu" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.get_world_size()))
    try:
        entry(job, lambda m: print(m, flush=True), lambda **kw: _NoBar())
    except TrainingFailed as e:
        if dist.get_rank() == 0:
            (Path(job_path).parent / "error.txt").write_text(str(e))
        return 1
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1]))
