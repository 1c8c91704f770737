"""K2 model throughput: training step and generation, k2 side by side with transformers' DeepseekV3.

    python bench/model.py train     [--preset h200 --batch 8 --seq 2048 --steps 10]
    python bench/model.py generate  [--preset h200 --batch 32 --prompt 128 --new 256]
    python bench/model.py all       (both; on CPU the tiny preset at small shapes)

Both models get the same config and the same weights. Training step = forward + backward +
fused AdamW step on bf16 parameters (the setting of the transformers anchor in
PLATFORM_NOTES.md). MFU uses k2core.model.config.flops_per_token (causal attention counted
once) against the bf16 matmul peak measured in the same run. Prints one JSON line per
measurement, then a table.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from k2core.perf import matmul_peak, sync  # noqa: E402

import k2core.model.k2 as k2mod  # noqa: E402
from k2core.model import K2ForCausalLM, ModelConfig  # noqa: E402
from k2core.model.config import flops_per_token, param_counts  # noqa: E402


def hf_model(cfg: ModelConfig, ours: K2ForCausalLM, dev, dtype):
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    from k2core.model.checkpoint import to_hf_state_dict

    hcfg = DeepseekV3Config(**{k: v for k, v in cfg.to_hf().items() if k not in ("architectures", "k2")})
    with torch.device("meta"):
        m = DeepseekV3ForCausalLM(hcfg)
    sd = to_hf_state_dict(ours)
    m.load_state_dict(sd, strict=False, assign=True)   # transformers fuses per-expert names on load
    missing = [k for k, v in m.state_dict().items() if v.is_meta]
    if missing:   # transformers v5 keeps experts as fused 3-D tensors: build them from ours
        for i, layer in enumerate(m.model.layers):
            if hasattr(layer.mlp, "experts"):
                e = ours.model.layers[i].mlp.experts
                layer.mlp.experts.gate_up_proj = torch.nn.Parameter(torch.cat([e.gate_proj, e.up_proj], 1).detach().clone())
                layer.mlp.experts.down_proj = torch.nn.Parameter(e.down_proj.detach().clone())
    m.model.rotary_emb = type(m.model.rotary_emb)(hcfg)
    return m.to(dev, dtype)


def _print_profile(dev, fn) -> None:
    """One call of `fn` under torch.profiler: the kernels by their own device time."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        fn()
        sync(dev)
    key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=40, max_name_column_width=110), flush=True)


def bench_train(args, dev, peak) -> list[dict]:
    cfg = ModelConfig.preset(args.preset)
    ours = K2ForCausalLM(cfg).init_weights(0)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    B, T = args.batch, args.seq
    ids = torch.randint(0, cfg.vocab_size, (B, T + 1), device=dev, generator=None)
    fpt = flops_per_token(cfg, T)
    rows = []
    impls = args.impl.split(",")
    for impl in impls:
        torch.manual_seed(0)
        if impl == "transformers":
            model = hf_model(cfg, ours, dev, dtype).train()
            step_fwd = lambda: model(ids[:, :-1], labels=ids[:, :-1]).loss  # noqa: E731 (shifts inside)
        else:
            model = K2ForCausalLM(cfg).to(dev)
            model.load_state_dict(ours.state_dict())
            model = model.to(dtype).train()
            for _, moe in model.moe_layers():
                moe.gate.e_score_correction_bias.data = moe.gate.e_score_correction_bias.float()
            k2mod.ATTN_BACKEND = "flash" if "flash" in impl else "cudnn"
            fwd = torch.compile(model) if "compile" in impl else model
            want = "maxlogit" in impl
            step_fwd = lambda: fwd(ids[:, :-1], labels=ids[:, :-1], want_max_logits=want).loss  # noqa: E731
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=dev.type == "cuda")
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        def train_step():
            loss = step_fwd()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss

        times, losses = [], []
        for i in range(args.warmup + args.steps):
            sync(dev)
            t = time.perf_counter()
            loss = train_step()
            sync(dev)
            if i >= args.warmup:
                times.append(time.perf_counter() - t)
                losses.append(loss.item())
        if args.profile and impl == args.profile:
            _print_profile(dev, train_step)
        med = statistics.median(times)
        tps = B * T / med
        row = {"bench": "train_step", "impl": impl, "preset": args.preset, "batch": B, "seq": T,
               "dtype": str(dtype).removeprefix("torch."), "step_ms_median": round(med * 1e3, 2),
               "tokens_per_s": round(tps), "mfu": round(tps * fpt / (peak * 1e12), 4),
               "peak_tflops": round(peak, 1), "loss_last": round(losses[-1], 4),
               "max_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if dev.type == "cuda" else None}
        print(json.dumps(row), flush=True)
        rows.append(row)
        del model, opt
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def bench_generate(args, dev) -> list[dict]:
    from k2core.infer import Engine, SamplingParams

    cfg = ModelConfig.preset(args.preset)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    ours = K2ForCausalLM(cfg).init_weights(0)
    prompts = torch.randint(2, cfg.vocab_size, (args.batch, args.prompt), generator=torch.Generator().manual_seed(0))
    rows, outputs = [], {}
    for impl in args.gen_impl.split(","):
        if impl == "transformers":
            model = hf_model(cfg, ours, dev, dtype).eval()
            ids = prompts.to(dev)

            def run():
                with torch.inference_mode():
                    out = model.generate(ids, max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False,
                                         eos_token_id=None, pad_token_id=0)
                return out[:, args.prompt:].tolist()
        else:
            model = K2ForCausalLM(cfg)
            model.load_state_dict(ours.state_dict())
            model = model.to(dev, dtype)
            engine = Engine(model, cuda_graph=(impl == "native") and dev.type == "cuda", max_batch=args.batch)
            params = SamplingParams(max_tokens=args.new, temperature=0)
            run = lambda: [g.token_ids for g in engine.generate(prompts.tolist(), params)]  # noqa: E731
        run()   # warm-up (CUDA graph capture, kernels, allocator)
        if args.profile and impl == args.profile:
            _print_profile(dev, run)
        times = []
        for _ in range(args.gen_repeat):
            sync(dev)
            t = time.perf_counter()
            toks = run()
            sync(dev)
            times.append(time.perf_counter() - t)
        outputs[impl] = toks
        med = statistics.median(times)
        n = sum(len(t) for t in toks)
        row = {"bench": "generate", "impl": impl, "preset": args.preset, "batch": args.batch,
               "prompt": args.prompt, "new_tokens": args.new, "dtype": str(dtype).removeprefix("torch."),
               "seconds_median": round(med, 3), "tokens_per_s": round(n / med, 1)}
        print(json.dumps(row), flush=True)
        rows.append(row)
        del model
    if "transformers" in outputs:
        ref = outputs["transformers"]
        for impl, toks in outputs.items():
            if impl != "transformers":
                same = sum(a == b for ra, rb in zip(toks, ref) for a, b in zip(ra, rb))
                first = [next((i for i, (a, b) in enumerate(zip(ra, rb)) if a != b), len(ra)) for ra, rb in zip(toks, ref)]
                print(json.dumps({"bench": "generate_agreement", "impl": impl, "vs": "transformers",
                                  "same_token_fraction": round(same / max(1, sum(map(len, ref))), 4),
                                  "median_first_divergence": statistics.median(first)}), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["train", "generate", "all"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preset")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--seq", type=int)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--impl", help="training implementations to time (default: GPU "
                    "transformers,k2,k2-compile,k2-compile-maxlogit,k2-compile-flash; CPU transformers,k2,"
                    "k2-maxlogit — torch.compile's grouped GEMM is bf16-only)")
    ap.add_argument("--gen-impl", help="generation implementations (default: GPU transformers,native-eager,"
                    "native — native = compiled decode step replayed as a CUDA graph; CPU transformers,native)")
    ap.add_argument("--prompt", type=int)
    ap.add_argument("--new", type=int)
    ap.add_argument("--gen-repeat", type=int, default=3)
    ap.add_argument("--profile", metavar="IMPL", help="print a torch.profiler table for one impl (training or generation)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    gpu = dev.type == "cuda"
    args.preset = args.preset or ("h200" if gpu else "tiny")
    args.impl = args.impl or ("transformers,k2,k2-compile,k2-compile-maxlogit,k2-compile-flash" if gpu
                              else "transformers,k2,k2-maxlogit")
    args.gen_impl = args.gen_impl or ("transformers,native-eager,native" if gpu else "transformers,native")
    torch.backends.cuda.matmul.allow_tf32 = True
    peak = matmul_peak(dev) / 1e12                    # TFLOP/s
    machine = torch.cuda.get_device_name() if gpu else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    info = {"bench": "env", "machine": machine, "torch": torch.__version__, "peak_tflops": round(peak, 1),
            "params": param_counts(ModelConfig.preset(args.preset))}
    try:
        import transformers
        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    print(json.dumps(info), flush=True)
    rows = []
    if args.what in ("train", "all"):
        b, t = args.batch, args.seq
        args.batch, args.seq = b or (8 if gpu else 4), t or (2048 if gpu else 256)
        rows += bench_train(args, dev, peak)
        args.batch, args.seq = b, t
    if args.what in ("generate", "all"):
        args.batch = args.batch or (32 if gpu else 8)
        args.prompt, args.new = args.prompt or (128 if gpu else 32), args.new or (256 if gpu else 64)
        rows += bench_generate(args, dev)
    print()
    for r in rows:
        base = next((x for x in rows if x["bench"] == r["bench"] and x["impl"] == "transformers"), None)
        ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-"
        extra = f"MFU {r['mfu']:.1%}, {r['step_ms_median']} ms/step" if r["bench"] == "train_step" else \
            f"{r['seconds_median']} s"
        print(f"{r['bench']:<11} {r['impl']:<22} {r['tokens_per_s']:>12,.0f} tok/s  {ratio:>7}  {extra}")


if __name__ == "__main__":
    main()
