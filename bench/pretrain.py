"""Pre-training throughput: the `pretrain` stage's training loop on a tokenize artifact, 1 or N GPUs.

    python3 bench/pretrain.py TOKENS_DIR [--nproc N] [--profile h200] [--set pretrain.KEY=VALUE]... [--out DIR]

TOKENS_DIR is a committed `tokenize` artifact (e.g. k2-store/artifacts/tokenize/<version>, made by
`k2 run --profile h200 --stages ingest..tokenize`). Runs exactly what the stage runs — `train` in
process, or torchrun (one process per GPU, the same global batch) with --nproc > 1 — for
machines without the CLI's Prefect / Dask / Great Expectations. Prints one JSON line (median
tokens/s and MFU over the steps after the first 5, losses, wall time) and a table; telemetry,
summary and plot are copied to --out.

    e.g. (same global batch, 1 vs 2 GPUs):
    python3 bench/pretrain.py DIR --set pretrain.steps=60 --out $OUT/one
    python3 bench/pretrain.py DIR --set pretrain.steps=60 --nproc 2 --out $OUT/two
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from k2core.config import load_config  # noqa: E402
from k2core.progress import Progress  # noqa: E402
from k2core.train.loop import train_job  # noqa: E402
from k2core.train.pretrain import ENTRY, Job  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tokens", type=Path, help="a tokenize artifact directory")
    ap.add_argument("--nproc", type=int, default=1)
    ap.add_argument("--profile", default="h200")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", type=Path, default=None, help="where telemetry / summary / plot are copied")
    ap.add_argument("--skip", type=int, default=5, help="warm-up steps left out of the medians")
    ap.add_argument("--profile-steps", type=int, default=0, metavar="N",
                    help="instead of training: time N micro-batches (fwd + bwd) and one optimizer step of "
                         "the stage's setup, then print a torch.profiler table of one more")
    args = ap.parse_args()

    if not (args.tokens / "index.json").exists():
        ap.error(f"{args.tokens} is not a tokenize artifact (no index.json)")
    cfg = load_config(profile=args.profile, overrides=[*args.set, f"pretrain.nproc={args.nproc}"]).pretrain
    scratch = Path(tempfile.mkdtemp(prefix="k2-bench-pretrain-"))
    work, resume = scratch / "work", scratch / "resume"
    work.mkdir()
    job = Job.from_tokens(lambda f: args.tokens / f, cfg, work, resume)
    if args.profile_steps:
        return profile(job, cfg, args.profile_steps)
    t0 = time.perf_counter()
    summary = train_job(ENTRY, job.__dict__, work, args.nproc, cfg.steps, "pretrain", print, Progress)
    wall = time.perf_counter() - t0

    import pandas as pd

    df = pd.read_parquet(work / "telemetry.parquet")
    steady = df.iloc[args.skip:] if len(df) > args.skip else df
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
    row = {"bench": "pretrain", "device": dev, "nproc": args.nproc, "preset": cfg.preset,
           "global_batch_tokens": cfg.micro_batch * cfg.grad_accum * job.index["seq_len"],
           "micro_batch": cfg.micro_batch, "grad_accum": cfg.grad_accum, "seq_len": job.index["seq_len"],
           "steps": len(df), "planned_steps": cfg.steps, "wall_s": round(wall, 1),
           "tokens_per_s_median": float(steady.tokens_per_s.median()),
           "mfu_median": float(steady.mfu.median()) if steady.mfu.notna().any() else None,
           "step_s_median": float((cfg.micro_batch * cfg.grad_accum * job.index["seq_len"] / steady.tokens_per_s).median()),
           "loss_first": float(df.loss.iloc[0]), "loss_last10": float(df.loss.iloc[-10:].mean()),
           "initial_val_loss": summary["initial_val_loss"], "final_val_loss": summary["final_val_loss"],
           "peak_max_logit": summary["peak_max_logit"], "clipped_head_steps": summary["clipped_head_steps"],
           "parameters": summary["parameters"],
           "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() and
           args.nproc == 1 else None}
    print(json.dumps(row))
    print(f"\n{'nproc':>5} {'steps':>6} {'tokens/s':>10} {'MFU':>6} {'step s':>7} {'loss':>13} {'val loss':>13}")
    mfu = f"{row['mfu_median']:.1%}" if row["mfu_median"] is not None else "-"
    print(f"{args.nproc:>5} {row['steps']:>6} {row['tokens_per_s_median']:>10,.0f} {mfu:>6} {row['step_s_median']:>7.3f} "
          f"{row['loss_first']:>6.2f}→{row['loss_last10']:<6.2f} {row['initial_val_loss']:>6.2f}→{row['final_val_loss']:<6.2f}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        for f in ("telemetry.parquet", "summary.json", "training.png"):
            shutil.copy(work / f, args.out / f)
        (args.out / "bench.json").write_text(json.dumps(row, indent=1))
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


def profile(job: Job, cfg, n: int) -> int:
    """Where a training step's time goes, with the stage's own model / autocast / optimizer."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from k2core.perf import sync
    from k2core.train.loop import autocast, build_model
    from k2core.train.pretrain import Batches

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(cfg, job.index["vocab_size"], device)
    net = torch.compile(model) if device.type == "cuda" and cfg.compile else model
    opt = cfg.optim.build(model)
    amp = autocast(device)
    data = Batches(job.rows("train"), cfg.micro_batch, cfg.seed, job.index["vocab_size"])

    def micro(i: int) -> None:
        x = data.micro_batch(i).to(device)
        with amp:
            out = net(x, labels=x, want_max_logits=True)
        out.loss.backward()

    times = []
    for i in range(n):
        sync(device)
        t0 = time.perf_counter()
        micro(i)
        sync(device)
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    opt.step()
    sync(device)
    t_opt = time.perf_counter() - t0
    tokens = cfg.micro_batch * job.index["seq_len"]
    print(json.dumps({"bench": "pretrain-profile", "micro_batch_s": [round(t, 4) for t in times],
                      "tokens_per_s_last": tokens / times[-1], "optimizer_step_s": round(t_opt, 4)}))
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=acts) as prof:
        micro(n)
        sync(device)
    key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=70))
    return 0


if __name__ == "__main__":
    sys.exit(main())
