"""SFT throughput: the `sft` stage's trainer side by side with TRL's SFTTrainer, same model and data.

    python bench/sft.py                        (CPU: tiny preset, 1,024-token rows)
    python bench/sft.py --preset h200 --seq-len 4096 --micro-batch 8 --steps 40    (one GPU)

Data: constructed tool-use conversations in K2's chat format (a user question, one to three tool
calls to declared tools, their results, a final answer; lengths drawn log-normally), tokenized
once by k2's chat encoder: ids + the assistant-only mask. Both trainers get those ids and that mask.

- **k2**: `k2core.train.sft.train_worker`, what the stage runs — whole conversations packed into
  rows of --seq-len (attention per conversation, Σ len² cost), MuonClip + QK-Clip, bf16 autocast and
  torch.compile on GPUs, the WSD schedule.
- **TRL** (`trl.SFTTrainer`): transformers' `DeepseekV3ForCausalLM` with the same weights, the
  pre-tokenized ids with `assistant_masks` (TRL builds the labels), `packing=True` (its BFD packing
  into --seq-len rows, padding-free: transformers masks attention per packed sequence from the
  position ids), the same micro-batch, AdamW (TRL's optimizer; fused on GPU), the same peak lr and
  warmup-stable-decay schedule, the same clip, bf16 autocast on GPUs, gradient checkpointing off.

Throughput is real tokens (no padding) per second per step, median over the steps after --skip;
the loss is each trainer's own per-token mean. One JSON line per trainer, then a table; with --out,
a JSON summary and a plot (loss against tokens seen, tokens/s). Before training, a parity line: the
two models' loss on the same packed row (fp32) — the same model, the same loss.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

TOOLS = [
    {"type": "function", "function": {"name": name, "description": desc, "parameters": {
        "type": "object", "properties": props, "required": list(props)}}}
    for name, desc, props in [
        ("search_orders", "Find a customer's orders by status",
         {"customer_id": {"type": "string"}, "status": {"type": "string", "enum": ["open", "shipped", "returned"]}}),
        ("get_weather", "Weather for a city and a day", {"city": {"type": "string"}, "day": {"type": "integer"}}),
        ("convert_currency", "Convert an amount between currencies",
         {"amount": {"type": "number"}, "from": {"type": "string"}, "to": {"type": "string"}}),
    ]]


def _words(rng: np.random.Generator, n: int) -> str:
    syll = ["ka", "lo", "mi", "ren", "tu", "sa", "vel", "do", "qui", "ne", "par", "is", "om", "tre", "la", "gu"]
    return " ".join("".join(rng.choice(syll, size=rng.integers(1, 4))) for _ in range(n))


def conversations(n: int, mean_words: float, seed: int = 0) -> list[list[dict]]:
    """`n` constructed tool-use conversations; message lengths log-normal around `mean_words`."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = lambda: max(3, int(rng.lognormal(math.log(mean_words), 0.7)))  # noqa: E731
        msgs = [{"role": "user", "content": _words(rng, length())}]
        calls = []
        for k in range(int(rng.integers(1, 4))):
            tool = TOOLS[int(rng.integers(len(TOOLS)))]["function"]
            args = {"search_orders": lambda: {"customer_id": f"C{rng.integers(1e5)}", "status": "open"},
                    "get_weather": lambda: {"city": _words(rng, 1).title(), "day": int(rng.integers(1, 8))},
                    "convert_currency": lambda: {"amount": round(float(rng.uniform(1, 999)), 2), "from": "EUR",
                                                 "to": "JPY"}}[tool["name"]]()
            calls.append({"id": f"functions.{tool['name']}:{k}", "type": "function",
                          "function": {"name": tool["name"], "arguments": json.dumps(args)}})
        msgs.append({"role": "assistant", "content": None, "tool_calls": calls})
        msgs += [{"role": "tool", "tool_call_id": c["id"], "content": _words(rng, length() // 2)} for c in calls]
        msgs.append({"role": "assistant", "content": _words(rng, length())})
        out.append(msgs)
    return out


def build(args, work: Path):
    """The tokenizer + initial checkpoint directory, the encoded conversations, the k2 config."""
    from k2core.config import SFTConfig
    from k2core.data.tokenize import save_tokenizer, train_tokenizer
    from k2core.model import K2ForCausalLM, ModelConfig
    from k2core.model.checkpoint import save_checkpoint
    from k2core.text import chat
    from k2core.train.sft_data import encode

    tok = train_tokenizer((chat.render(c, TOOLS) for c in conversations(200, args.mean_words, seed=1)),
                          vocab_size=args.vocab, min_frequency=2)
    n = args.conversations
    if not n:      # enough that no step sees a conversation twice
        pilot = [len(chat.encode(tok, c, TOOLS)[0]) for c in conversations(100, args.mean_words, seed=2)]
        n = int(args.steps * args.micro_batch * args.seq_len / statistics.fmean(pilot) * 1.05) + 16
    convs = conversations(n, args.mean_words)
    cfg = ModelConfig.preset(args.preset)
    if tok.get_vocab_size() > cfg.vocab_size:
        raise SystemExit(f"the tokenizer's {tok.get_vocab_size()} tokens exceed the preset's vocab {cfg.vocab_size}")
    base = work / "base"
    save_checkpoint(K2ForCausalLM(cfg).init_weights(0), base)
    save_tokenizer(tok, base, seq_len=args.seq_len)
    kept, dropped = encode(tok, [(c, TOOLS) for c in convs], args.seq_len)
    cfg = SFTConfig(steps=args.steps, micro_batch=args.micro_batch, seq_len=args.seq_len, optim={"lr": args.lr},
                    warmup_steps=args.warmup, eval_every=10**6, eval_batches=1, checkpoint_every=10**6, log_every=10,
                    compile=args.compile == "true")
    return base, tok, kept, dropped, cfg


def run_k2(base: Path, tok, kept, cfg, work: Path) -> dict:
    import pandas as pd

    from k2core.progress import Progress
    from k2core.text.special_tokens import PAD
    from k2core.train import sft
    from k2core.train.sft_data import pack

    packed = pack(kept, cfg.seq_len, tok.token_to_id(PAD))
    wd = work / "k2"
    wd.mkdir()
    job = sft.make_job(cfg, base, wd, packed, packed, work / "k2-resume")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    sft.train_worker(job, print, Progress)
    df = pd.read_parquet(wd / "telemetry.parquet")
    rows = sft.Rows(np.load(wd / "rows.npz"), cfg.micro_batch, cfg.seed)
    real = [int((rows.batch(s)["segment_ids"] >= 0).sum()) for s in df.step]
    seconds = cfg.micro_batch * cfg.seq_len / df.tokens_per_s          # the loop's own step time
    return {"impl": "k2", "losses": df.loss.tolist(), "tokens": real, "seconds": seconds.tolist(),
            "rows": len(packed.input_ids), "fill": sum(len(e.ids) for e in kept) / (len(packed.input_ids) * cfg.seq_len),
            "optimizer": "MuonClip", "max_mem_gb": _mem()}


def run_trl(base: Path, kept, cfg, work: Path, compile_: bool = False) -> dict:
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from bench.model import hf_model
    from k2core.model.checkpoint import load_checkpoint

    cuda = torch.cuda.is_available()
    ours = load_checkpoint(base, device="cpu", dtype=torch.float32)
    model = hf_model(ours.config, ours, torch.device("cuda" if cuda else "cpu"), torch.float32)
    del ours
    data = Dataset.from_dict({"input_ids": [e.ids for e in kept], "assistant_masks": [list(map(int, e.mask)) for e in kept]})

    class Clock(TrainerCallback):
        def __init__(self):
            self.ends: list[float] = []

        def on_train_begin(self, *a, **k):
            self.ends.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            if cuda:
                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())

    clock = Clock()
    decay = int(cfg.steps * cfg.decay_fraction)
    targs = SFTConfig(
        output_dir=str(work / ("trl-compile" if compile_ else "trl")), max_steps=cfg.steps, per_device_train_batch_size=cfg.micro_batch,
        gradient_accumulation_steps=1, max_length=cfg.seq_len, packing=True, learning_rate=cfg.optim.lr,
        lr_scheduler_type="warmup_stable_decay", warmup_steps=cfg.warmup_steps,
        lr_scheduler_kwargs={"num_decay_steps": decay, "min_lr_ratio": cfg.min_lr_ratio},
        weight_decay=cfg.optim.weight_decay, adam_beta1=cfg.optim.adamw_betas[0], adam_beta2=cfg.optim.adamw_betas[1],
        max_grad_norm=cfg.grad_clip, bf16=cuda, use_cpu=not cuda, gradient_checkpointing=False, logging_steps=1,
        save_strategy="no", report_to="none", seed=cfg.seed, dataloader_num_workers=0, torch_compile=compile_,
        optim="adamw_torch_fused" if cuda else "adamw_torch")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer = SFTTrainer(model=model, args=targs, train_dataset=data,
                         processing_class=AutoTokenizer.from_pretrained(str(base)), callbacks=[clock])
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    cum = [0] + [int(h["num_tokens"]) for h in logs]
    return {"impl": "trl-compile" if compile_ else "trl", "losses": [float(h["loss"]) for h in logs], "tokens": [b - a for a, b in zip(cum, cum[1:])],
            "seconds": [b - a for a, b in zip(clock.ends, clock.ends[1:])], "optimizer": "AdamW",
            "max_mem_gb": _mem(), "trl": __import__("trl").__version__}


def parity(base: Path, kept, seq_len: int, pad: int) -> float:
    """|loss k2 - loss transformers| on the packed row with the most conversations, fp32 on the CPU (segments vs position ids)."""
    from bench.model import hf_model
    from k2core.model.checkpoint import load_checkpoint
    from k2core.train.sft_data import pack

    p = pack(kept[:64], seq_len, pad)
    r = max(range(len(p.segment_ids)), key=lambda i: max(p.segment_ids[i]))     # the row with the most segments
    ids, labels, seg = (torch.tensor([getattr(p, k)[r]]) for k in ("input_ids", "labels", "segment_ids"))
    pos = torch.zeros_like(ids)
    for s in seg.unique():
        where = seg[0] == s
        pos[0, where] = torch.arange(int(where.sum()))
    ours = load_checkpoint(base, device="cpu", dtype=torch.float32).eval()
    theirs = hf_model(ours.config, ours, torch.device("cpu"), torch.float32).eval()
    with torch.no_grad():
        a = ours(ids, labels=labels, segment_ids=seg).loss
        b = theirs(input_ids=ids, labels=labels, position_ids=pos, use_cache=False).loss   # as TRL calls it
    return {"parity_segments": int(seg.max()) + 1, "parity_loss_k2": round(float(a), 6),
            "parity_loss_abs_diff": abs(float(a) - float(b))}


def _mem() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def summarise(r: dict, skip: int) -> dict:
    skip = skip if len(r["tokens"]) > skip else 0           # too few steps to leave the warm-up out
    tps = [t / s for t, s in zip(r["tokens"][skip:], r["seconds"][skip:]) if s > 0]
    return {"bench": "sft", "impl": r["impl"], "optimizer": r["optimizer"], "steps": len(r["losses"]),
            "tokens_per_s_median": round(statistics.median(tps)), "tokens_per_step_median":
            round(statistics.median(r["tokens"])), "loss_first": round(r["losses"][0], 4),
            "loss_last5": round(statistics.fmean(r["losses"][-5:]), 4), "tokens_total": int(sum(r["tokens"])),
            "max_mem_gb": r["max_mem_gb"]}


def plot(results: list[dict], rows: list[dict], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        a.plot(np.cumsum(r["tokens"]), r["losses"], label=f"{r['impl']} ({r['optimizer']})")
    a.set_xlabel("tokens seen")
    a.set_ylabel("training loss (assistant tokens)")
    a.legend()
    names = [r["impl"] for r in rows]
    bars = b.bar(names, [r["tokens_per_s_median"] for r in rows], color=["tab:blue", "tab:orange", "tab:red"][:len(rows)])
    b.bar_label(bars, fmt="{:,.0f}")
    b.set_ylabel("tokens/s (median)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default=None, help="model preset (default: tiny on CPU, h200 on a GPU)")
    ap.add_argument("--seq-len", type=int, default=None, help="tokens per packed row (default 1024 CPU, 4096 GPU)")
    ap.add_argument("--micro-batch", type=int, default=None, help="packed rows per step (default 2 CPU, 8 GPU)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (default 16 CPU, 40 GPU)")
    ap.add_argument("--conversations", type=int, default=None)
    ap.add_argument("--mean-words", type=float, default=40.0, help="typical words per message")
    ap.add_argument("--vocab", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--skip", type=int, default=3, help="warm-up steps left out of the medians")
    ap.add_argument("--compile", default="true", choices=["true", "false"], help="k2: torch.compile on GPUs")
    ap.add_argument("--impl", default="k2,trl", help="k2, trl, trl-compile (TRL with torch_compile=True)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    gpu = torch.cuda.is_available()
    args.preset = args.preset or ("h200" if gpu else "tiny")
    args.seq_len = args.seq_len or (4096 if gpu else 1024)
    args.micro_batch = args.micro_batch or (8 if gpu else 2)
    args.steps = args.steps or (40 if gpu else 16)
    torch.manual_seed(0)

    work = Path(tempfile.mkdtemp(prefix="k2-bench-sft-"))
    base, tok, kept, dropped, cfg = build(args, work)
    from k2core.text.special_tokens import PAD

    diff = parity(base, kept, args.seq_len, tok.token_to_id(PAD))
    lengths = [len(e.ids) for e in kept]
    print(json.dumps({"bench": "sft_setup", "preset": args.preset, "device": torch.cuda.get_device_name() if gpu
                      else platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                      "conversations": len(kept), "dropped_too_long": len(dropped), "tokens_median": statistics.median(lengths),
                      "tokens_max": max(lengths), "seq_len": args.seq_len, "micro_batch": args.micro_batch,
                      "steps": args.steps, **diff}), flush=True)
    results = []
    for impl in args.impl.split(","):
        if impl not in ("k2", "trl", "trl-compile"):
            raise SystemExit(f"--impl: unknown {impl!r} (k2, trl, trl-compile)")
        r = run_k2(base, tok, kept, cfg, work) if impl == "k2" else \
            run_trl(base, kept, cfg, work, compile_=impl == "trl-compile")
        results.append(r)
        print(json.dumps(summarise(r, args.skip)), flush=True)
    rows = [summarise(r, args.skip) for r in results]
    print(f"\n{'impl':<11} {'optimizer':<9} {'tokens/s':>10} {'tok/step':>9} {'loss first':>10} {'loss last5':>10} {'mem GB':>7}")
    for r in rows:
        print(f"{r['impl']:<11} {r['optimizer']:<9} {r['tokens_per_s_median']:>10,} {r['tokens_per_step_median']:>9,} "
              f"{r['loss_first']:>10.4f} {r['loss_last5']:>10.4f} {r['max_mem_gb'] or '-':>7}")
    by = {r["impl"]: r for r in rows}
    trl = max((r for r in rows if r["impl"].startswith("trl")), key=lambda r: r["tokens_per_s_median"], default=None)
    if "k2" in by and trl:
        ratio = by["k2"]["tokens_per_s_median"] / trl["tokens_per_s_median"]
        print(json.dumps({"bench": "sft_ratio", "trl": trl["impl"], "k2_over_trl_tokens_per_s": round(ratio, 2)}))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "sft_bench.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                             "rows": rows, "results": results}, indent=1))
        plot(results, rows, args.out / "sft_bench.png", f"SFT: {args.preset}, {args.micro_batch} x {args.seq_len} "
             f"tokens per step, {'GPU' if gpu else 'CPU'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
