"""RL throughput: the `rl` stage's loop side by side with TRL's GRPOTrainer, same model and prompts.

    python bench/rl.py                                     (CPU: tiny preset)
    python bench/rl.py --preset h200 --prompts 32 --samples 8 --max-tokens 256 --steps 12   (one GPU)

Both sides run the same number of RL steps on the same prompts in the same order: P prompts per
step from k2's instruction-following gym environment (code-checked constraints), G responses each,
at most --max-tokens tokens, temperature 1, top-p 1; the same reward function (the environment's
score, --truncation-reward for a response without the end-of-turn token); one optimizer step per
generation, no reference model in the loss (TRL beta 0; k2's K1.5 loss regularises toward π_old),
the same peak lr, the same clip, bf16 autocast on GPUs.

- **k2**: `k2core.rl.train.train` — what the stage runs: the native engine (latent KV cache, CUDA
  graphs on GPUs) over a copy of the policy with the new weights each iteration, π_old and
  π_start log-probs from the training model's forward, K1.5's loss, MuonClip + QK-Clip.
- **TRL** (`trl.GRPOTrainer` 1.16): transformers' `DeepseekV3ForCausalLM` with the same weights,
  generation by `model.generate` (TRL's default without vLLM), loss_type "grpo", AdamW.

Throughput per step: completions/s and completion tokens/s (generated tokens, no padding), and the
split generation vs the rest of the step, medians over the steps after --skip. One JSON line per
side, then a table; with --out a JSON summary and a plot (reward per step, time per step).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def build(args, work: Path):
    """Tokenizer (k2's chat tokens reserved) + an initial checkpoint; the prompts of every step."""
    from bench.sft import TOOLS, conversations
    from k2core.config import RLConfig
    from k2core.data.tokenize import save_tokenizer, train_tokenizer
    from k2core.model import K2ForCausalLM, ModelConfig
    from k2core.model.checkpoint import save_checkpoint
    from k2core.rl.gym import make
    from k2core.rl.train import HELDOUT_SEED, _seed
    from k2core.text import chat

    from tokenizers import Tokenizer

    env = make("instructions")
    if args.base:                                  # a trained model: e.g. the demo's sft model
        base = args.base
        tok = Tokenizer.from_file(str(base / "tokenizer.json"))
    else:                                          # a fresh model of the preset, its own tokenizer
        texts = [chat.render(c, TOOLS) for c in conversations(200, 30, seed=1)]
        texts += [p.prompt for p in env.generate(seed=99, n=400, difficulty=1)]
        tok = train_tokenizer(iter(texts), vocab_size=args.vocab, min_frequency=2)
        mcfg = ModelConfig.preset(args.preset)
        base = work / "base"
        save_checkpoint(K2ForCausalLM(mcfg).init_weights(0), base)
        save_tokenizer(tok, base, seq_len=mcfg.max_position_embeddings)
    cfg = RLConfig(tasks=["instructions"], prompts_per_task=args.prompts, samples=args.samples, steps=args.steps,
                   max_tokens={"instructions": args.max_tokens}, ptx_weight=0.0, temperature_start=1.0,
                   temperature_end=1.0, eval_every=10**6, checkpoint_every=10**6, heldout_prompts=1, max_draws=1,
                   truncation_reward=args.truncation_reward, optim={"lr": args.lr}, grad_clip=1.0,
                   compile=args.compile == "true", log_every=1)
    heldout = {"instructions": env.generate(HELDOUT_SEED + cfg.seed, args.heldout, 1)}
    held = {p.prompt for p in heldout["instructions"]}
    per_step = [[p for p in env.generate(_seed(cfg.seed, it, 0, "instructions"), args.prompts, 1) if p.prompt not in held]
                for it in range(args.steps)]
    return base, tok, cfg, env, heldout, per_step


def run_k2(base, tok, cfg, env, heldout, work: Path) -> dict:
    import pandas as pd

    from k2core.progress import Progress
    from k2core.rl.train import train

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    first = {"instructions": heldout["instructions"][:1]}   # the loop's own step-0 evaluation (time left out)
    policy, src, result = train(cfg, base, tok, {"instructions": env}, first, None, None, work / "k2-resume", print,
                                Progress)
    df = pd.DataFrame(result.telemetry)
    from bench.model import hf_model

    final = hf_model(policy.config, policy, next(policy.parameters()).device, torch.float32)
    n = df.responses.where(df.responses > 0, cfg.prompts_per_task * cfg.samples)
    gen = df.generate_s
    return {"impl": "k2", "optimizer": "MuonClip", "reward": df.reward.tolist(), "seconds": (df.step_s - df.eval_s).tolist(),
            "generate_s": gen.tolist(), "completions": [int(g) * cfg.samples for g in df.groups],
            "completion_tokens": [int(round(m * g * cfg.samples)) for m, g in zip(df["completions/mean_length"], df.groups)],
            "frac_reward_zero_std": df.frac_reward_zero_std.tolist(), "trained": n.tolist(), "max_mem_gb": _mem(),
            "model": final}


def run_trl(base, tok, cfg, env, per_step, args, work: Path) -> dict:
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from bench.model import hf_model
    from k2core.model.checkpoint import load_checkpoint
    from k2core.rl.loss import budget_penalty
    from k2core.text import chat
    from k2core.text.special_tokens import IM_END, PAD

    cuda = torch.cuda.is_available()
    ours = load_checkpoint(base, device="cpu", dtype=torch.float32)
    model = hf_model(ours.config, ours, torch.device("cuda" if cuda else "cpu"), torch.float32)
    del ours
    htok = AutoTokenizer.from_pretrained(str(base))
    htok.eos_token, htok.pad_token, htok.padding_side = IM_END, PAD, "left"
    model.generation_config.eos_token_id = htok.eos_token_id
    model.generation_config.pad_token_id = htok.pad_token_id
    problems = [p for ps in per_step for p in ps]
    prompts = [chat.render([{"role": "user", "content": p.prompt}], add_generation_prompt=True) for p in problems]
    data = Dataset.from_dict({"prompt": prompts, "pid": list(range(len(problems)))})
    eos = htok.eos_token_id
    log: dict[str, list] = {"reward": [], "completion_tokens": [], "gen": []}

    def reward(prompts, completions, completion_ids, pid, **kw):
        verdicts = env.score([problems[i] for i in pid], [c if isinstance(c, str) else c[0]["content"] for c in completions])
        cut = [eos not in ids for ids in completion_ids]
        r = budget_penalty([v.reward for v in verdicts], cut, cfg.truncation_reward)
        log["reward"].append(sum(r) / len(r))
        log["completion_tokens"].append(sum(len(ids) for ids in completion_ids))
        return r

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
    gen_t: list[float] = []
    orig = model.generate

    def timed_generate(*a, **k):                      # TRL's generation: model.generate, timed
        t = time.perf_counter()
        out = orig(*a, **k)
        if cuda:
            torch.cuda.synchronize()
        gen_t.append(time.perf_counter() - t)
        return out
    model.generate = timed_generate
    n = args.prompts * args.samples
    targs = GRPOConfig(
        output_dir=str(work / "trl"), max_steps=cfg.steps, per_device_train_batch_size=n, num_generations=args.samples,
        steps_per_generation=1, num_iterations=1, max_completion_length=args.max_tokens, temperature=1.0, top_p=1.0,
        beta=0.0, loss_type="grpo", learning_rate=cfg.optim.lr, lr_scheduler_type="constant", max_grad_norm=cfg.grad_clip,
        bf16=cuda, use_cpu=not cuda, logging_steps=1, save_strategy="no", report_to="none", seed=cfg.seed,
        shuffle_dataset=False, gradient_checkpointing=False, dataloader_num_workers=0,
        optim="adamw_torch_fused" if cuda else "adamw_torch")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=targs, train_dataset=data, processing_class=htok,
                          callbacks=[clock])
    trainer.train()
    secs = [b - a for a, b in zip(clock.ends, clock.ends[1:])]
    k = min(len(secs), len(log["reward"]), len(gen_t))
    model.generate = orig
    return {"impl": "trl", "optimizer": "AdamW", "reward": log["reward"][:k], "seconds": secs[:k], "generate_s": gen_t[:k],
            "completions": [n] * k, "completion_tokens": log["completion_tokens"][:k], "max_mem_gb": _mem(),
            "trl": __import__("trl").__version__, "model": trainer.model}


@torch.no_grad()
def heldout_reward(model, base: Path, env, problems, args) -> float:
    """The same evaluator for every side: greedy answers by transformers' `generate` (a model of
    either side as DeepseekV3ForCausalLM), scored by the environment, truncation penalised."""
    from transformers import AutoTokenizer

    from k2core.rl.loss import budget_penalty
    from k2core.text import chat
    from k2core.text.special_tokens import IM_END, PAD

    htok = AutoTokenizer.from_pretrained(str(base))
    htok.eos_token, htok.pad_token, htok.padding_side = IM_END, PAD, "left"
    was = model.training
    model.eval()
    rewards = []
    for i in range(0, len(problems), 16):
        part = problems[i:i + 16]
        enc = htok([chat.render([{"role": "user", "content": p.prompt}], add_generation_prompt=True) for p in part],
                   return_tensors="pt", padding=True, add_special_tokens=False).to(next(model.parameters()).device)
        out = model.generate(**enc, max_new_tokens=args.max_tokens, do_sample=False, eos_token_id=htok.eos_token_id,
                             pad_token_id=htok.pad_token_id)[:, enc["input_ids"].shape[1]:].tolist()
        ids = [o[:o.index(htok.eos_token_id)] if htok.eos_token_id in o else o for o in out]
        texts = [htok.decode(x, skip_special_tokens=False) for x in ids]
        verdicts = env.score(part, texts)
        rewards += budget_penalty([v.reward for v in verdicts], [htok.eos_token_id not in o for o in out],
                                  args.truncation_reward)
    model.train(was)
    return sum(rewards) / len(rewards)


def _mem() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def summarise(r: dict, skip: int) -> dict:
    skip = skip if len(r["seconds"]) > skip else 0
    s, c, t, g = (r[k][skip:] for k in ("seconds", "completions", "completion_tokens", "generate_s"))
    return {"bench": "rl", "impl": r["impl"], "optimizer": r["optimizer"], "steps": len(r["seconds"]),
            "completions_per_s_median": round(statistics.median(a / b for a, b in zip(c, s)), 2),
            "completion_tokens_per_s_median": round(statistics.median(a / b for a, b in zip(t, s)), 1),
            "step_s_median": round(statistics.median(s), 3), "generate_s_median": round(statistics.median(g), 3),
            "update_s_median": round(statistics.median(a - b for a, b in zip(s, g)), 3),
            "reward_first": round(r["reward"][0], 4), "reward_last5": round(statistics.fmean(r["reward"][-5:]), 4),
            "heldout_reward": round(r["heldout_reward"], 4), "max_mem_gb": r["max_mem_gb"]}


def plot(results: list[dict], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        a.plot(range(len(r["reward"])), r["reward"], label=f"{r['impl']} ({r['optimizer']})")
        b.plot(range(len(r["seconds"])), r["seconds"], label=f"{r['impl']}: step")
        b.plot(range(len(r["generate_s"])), r["generate_s"], "--", label=f"{r['impl']}: generation")
    a.set(xlabel="step", ylabel="mean reward of the step's completions", title="Reward")
    b.set(xlabel="step", ylabel="seconds", title="Time per step", yscale="log")
    a.legend()
    b.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default=None, help="model preset (default: tiny on CPU, h200 on a GPU)")
    ap.add_argument("--prompts", type=int, default=8, help="prompts per step")
    ap.add_argument("--samples", type=int, default=4, help="G / K: responses per prompt")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--truncation-reward", type=float, default=-0.5)
    ap.add_argument("--skip", type=int, default=2, help="warm-up steps left out of the medians")
    ap.add_argument("--compile", default="true", choices=["true", "false"], help="k2: torch.compile on GPUs")
    ap.add_argument("--impl", default="k2,trl")
    ap.add_argument("--heldout", type=int, default=32, help="held-out prompts scored after training (greedy)")
    ap.add_argument("--base", type=Path, default=None, help="start from this k2 checkpoint (e.g. an sft model dir) "
                                                            "instead of a fresh model of --preset")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    gpu = torch.cuda.is_available()
    args.preset = args.preset or ("h200" if gpu else "tiny")
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="k2-bench-rl-"))
    base, tok, cfg, env, heldout, per_step = build(args, work)
    print(json.dumps({"bench": "rl_setup", "preset": args.preset, "device": torch.cuda.get_device_name() if gpu
                      else platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                      "prompts": args.prompts, "samples": args.samples, "max_tokens": args.max_tokens,
                      "steps": args.steps}), flush=True)
    from bench.model import hf_model
    from k2core.model.checkpoint import load_checkpoint

    dev = torch.device("cuda" if gpu else "cpu")
    start = load_checkpoint(base, device="cpu", dtype=torch.float32)
    before = heldout_reward(hf_model(start.config, start, dev, torch.float32), base, env, heldout["instructions"], args)
    del start
    print(json.dumps({"bench": "rl_heldout_start", "heldout_reward": round(before, 4),
                      "prompts": len(heldout["instructions"])}), flush=True)
    results = []
    for impl in args.impl.split(","):
        if impl not in ("k2", "trl"):
            raise SystemExit(f"--impl: unknown {impl!r} (k2, trl)")
        r = run_k2(base, tok, cfg, env, heldout, work) if impl == "k2" else run_trl(base, tok, cfg, env, per_step, args, work)
        r["heldout_reward"] = heldout_reward(r.pop("model"), base, env, heldout["instructions"], args)
        r["heldout_reward_start"] = before
        results.append(r)
        print(json.dumps(summarise(r, args.skip)), flush=True)
        if gpu:
            torch.cuda.empty_cache()
    rows = [summarise(r, args.skip) for r in results]
    print(f"\nheld-out reward of the starting model: {before:.4f} ({len(heldout['instructions'])} prompts, greedy)")
    print(f"{'impl':<5} {'optimizer':<9} {'compl/s':>8} {'compl tok/s':>11} {'step s':>7} {'gen s':>7} {'rest s':>7} "
          f"{'reward 1st':>10} {'last5':>7} {'held-out':>8} {'mem GB':>7}")
    for r in rows:
        print(f"{r['impl']:<5} {r['optimizer']:<9} {r['completions_per_s_median']:>8} {r['completion_tokens_per_s_median']:>11} "
              f"{r['step_s_median']:>7} {r['generate_s_median']:>7} {r['update_s_median']:>7} {r['reward_first']:>10} "
              f"{r['reward_last5']:>7} {r['heldout_reward']:>8} {r['max_mem_gb'] or '-':>7}")
    by = {r["impl"]: r for r in rows}
    if {"k2", "trl"} <= set(by):
        print(json.dumps({"bench": "rl_ratio", "k2_over_trl_completions_per_s":
                          round(by["k2"]["completions_per_s_median"] / by["trl"]["completions_per_s_median"], 2),
                          "k2_over_trl_completion_tokens_per_s":
                          round(by["k2"]["completion_tokens_per_s_median"] / by["trl"]["completion_tokens_per_s_median"], 2)}))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "rl_bench.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                            "rows": rows, "results": results}, indent=1))
        plot(results, args.out / "rl_bench.png", f"RL: {args.preset}, {args.prompts} prompts x {args.samples} responses "
             f"per step, {'GPU' if gpu else 'CPU'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
