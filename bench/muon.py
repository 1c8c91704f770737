"""MuonClip optimizer step vs torch.optim.Muon on a K2 preset's parameter set, side by side.

    python bench/muon.py                       (GPU: the h200 preset; CPU: tiny)
    python bench/muon.py --preset h200 --steps 20 --profile

The model is built on the device in fp32 (the master weights of bf16-autocast training) with
fixed random gradients. Timed, each as ms per optimizer step (median of --steps, after warm-up):

- ``torch.optim.Muon``   the reference: torch's Muon (adjust_lr_fn="match_rms_adamw") over the
  same Muon-routed matrices, expert stacks split into one 2-D parameter per expert;
- ``k2-muon``            MuonClip on the same Muon matrices only (like for like with the reference);
- ``k2-muonclip``        the full MuonClip step: Muon + AdamW (embeddings, head, norms) + QK-Clip
  with per-head max logits above τ in half the heads;
- ``k2-noclip``          the same without QK-Clip (the difference is QK-Clip's cost);
- ``adamw-fused``        torch's fused AdamW over every parameter (the cheap-optimizer floor).

Also: the Newton-Schulz FLOP floor at the measured bf16 peak, and the largest difference between
k2's and torch's parameters after one identical step. One JSON line per row, then a table.
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

from k2core.model import K2ForCausalLM, ModelConfig  # noqa: E402
from k2core.optim.muonclip import MuonClip, route_parameters  # noqa: E402


def ns_flops(shapes: list[tuple[int, int]], steps: int = 5) -> float:
    """Newton-Schulz FLOPs: per iteration X·Xᵀ (2r²c), (bA + cA²) (2r³), B·X (2r²c), r ≤ c."""
    total = 0.0
    for a, b in shapes:
        r, c = min(a, b), max(a, b)
        total += steps * (4 * r * r * c + 2 * r ** 3)
    return total


def time_steps(fn, dev, steps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    sync(dev)
    out = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        sync(dev)
        out.append((time.perf_counter() - t) * 1e3)
    return out


def profile_step(fn, dev) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        sync(dev)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=20, max_name_column_width=60), flush=True)


def back_to_back(fn, dev, steps: int) -> dict:
    """Launch cost of one step (until step() returns) and ms per step with no sync between steps
    (as in training, where the next forward is queued behind the optimizer)."""
    sync(dev)
    t = time.perf_counter()
    fn()
    launch = (time.perf_counter() - t) * 1e3
    sync(dev)
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(dev)
    return {"launch_ms": round(launch, 2), "back_to_back_ms": round((time.perf_counter() - t) * 1e3 / steps, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preset")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--ref-steps", type=int, default=5, help="steps timed for torch.optim.Muon (slow)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--impl", default="torch,k2-muon,k2-muonclip,k2-noclip,adamw-fused")
    ap.add_argument("--ns-dtype", default="auto", choices=["auto", "bf16", "fp32"],
                    help="k2's Newton-Schulz precision (auto: bf16 on GPU, fp32 on CPU)")
    ap.add_argument("--profile", action="store_true", help="print a torch.profiler table of one k2 step")
    args = ap.parse_args()
    dev = torch.device(args.device)
    gpu = dev.type == "cuda"
    preset = args.preset or ("h200" if gpu else "tiny")
    cfg = ModelConfig.preset(preset)
    with torch.device(dev):
        model = K2ForCausalLM(cfg)
    model.init_weights(0)
    gen = torch.Generator(device=dev).manual_seed(1)
    grads = {n: torch.randn(p.shape, device=dev, generator=gen) * 1e-3 for n, p in model.named_parameters()}

    def set_grads(m):
        for n, p in m.named_parameters():
            p.grad = grads[n]

    routes = route_parameters(model)
    muon_routes = [r for r in routes if r.kind == "muon"]
    shapes = [tuple(r.param.shape[-2:]) for r in muon_routes for _ in range(r.param.numel() // r.param.shape[-2:].numel())]
    peak = matmul_peak(dev) / 1e12                    # TFLOP/s
    floor_ms = ns_flops(shapes) / (peak * 1e12) * 1e3
    machine = torch.cuda.get_device_name() if gpu else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    env = {"bench": "env", "machine": machine, "torch": torch.__version__, "preset": preset,
           "muon_matrices": len(shapes), "muon_params": sum(r.param.numel() for r in muon_routes),
           "all_params": sum(p.numel() for p in model.parameters()), "peak_tflops": round(peak, 1),
           "ns_floor_ms": round(floor_ms, 2), "ns_dtype": args.ns_dtype}
    print(json.dumps(env), flush=True)

    L, H = cfg.num_hidden_layers, cfg.num_attention_heads
    tau = 100.0
    max_logits = torch.full((L, H), 50.0, device=dev)
    max_logits[:, ::2] = 250.0                             # half the heads above τ each step
    rows = []
    impls = args.impl.split(",")
    state = {n: p.detach().clone() for n, p in model.named_parameters()}

    def restore():
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(state[n])

    def record(impl, ms, **extra):
        row = {"bench": "optimizer_step", "impl": impl, "preset": preset, "ms_median": round(statistics.median(ms), 2),
               "ms_min": round(min(ms), 2), "steps": len(ms), **extra}
        rows.append(row)
        print(json.dumps(row), flush=True)

    ref_params = None
    if "torch" in impls:
        ref_params = []
        for r in muon_routes:
            mats = r.param.detach() if r.param.ndim == 3 else r.param.detach()[None]
            ref_params += [torch.nn.Parameter(m.clone()) for m in mats]
        k = 0
        for r in muon_routes:
            g = grads[r.name] if r.param.ndim == 3 else grads[r.name][None]
            for m in g:
                ref_params[k].grad = m
                k += 1
        ref = torch.optim.Muon(ref_params, lr=2e-4, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
        ref.step()                                           # step 1 from the initial weights, compared below
        first = [p.detach().clone() for p in ref_params]
        record("torch.optim.Muon", time_steps(ref.step, dev, args.ref_steps, 1), **back_to_back(ref.step, dev, 2))
        del ref
    if "k2-muon" in impls:
        restore()
        set_grads(model)
        opt = MuonClip([{"params": [r.param for r in muon_routes], "kind": "muon"}], lr=2e-4, weight_decay=0.1,
                       qk_clip_tau=None, ns_dtype=args.ns_dtype)
        opt.step()
        diff = None
        if ref_params is not None:
            ours = torch.cat([r.param.detach().reshape(-1) for r in muon_routes])
            theirs = torch.cat([p.reshape(-1) for p in first])
            moved = theirs - torch.cat([state[r.name].reshape(-1) for r in muon_routes])
            diff = {"max_abs": float((ours - theirs).abs().max()), "max_abs_update": float(moved.abs().max()),
                    "rel_norm": float((ours - theirs).norm() / moved.norm())}
            del first, ref_params
        record("k2-muon", time_steps(opt.step, dev, args.steps, args.warmup), vs_torch_step1=diff,
               **back_to_back(opt.step, dev, args.steps))
        if args.profile and gpu:
            profile_step(opt.step, dev)
        del opt
    for impl, clip in (("k2-muonclip", tau), ("k2-noclip", None)):
        if impl not in impls:
            continue
        restore()
        set_grads(model)
        opt = MuonClip.for_model(model, lr=2e-4, weight_decay=0.1, qk_clip_tau=clip, ns_dtype=args.ns_dtype)
        stats = opt.step(max_logits=max_logits)
        record(impl, time_steps(lambda: opt.step(max_logits=max_logits), dev, args.steps, args.warmup),
               clipped_heads=stats.clipped_heads, **back_to_back(lambda: opt.step(max_logits=max_logits), dev, args.steps))
        if args.profile and gpu and clip is not None:
            profile_step(lambda: opt.step(max_logits=max_logits), dev)
        del opt
    if "adamw-fused" in impls:
        restore()
        set_grads(model)
        opt = torch.optim.AdamW(model.parameters(), lr=2e-4, fused=gpu, foreach=None if gpu else True)
        record("adamw-fused" if gpu else "adamw-foreach", time_steps(opt.step, dev, args.steps, args.warmup))

    print()
    by = {r["impl"]: r for r in rows}
    base = by.get("torch.optim.Muon")
    print(f"{machine}, preset {preset}: {len(shapes)} Muon matrices, "
          f"Newton-Schulz floor {floor_ms:.1f} ms at {peak:.3g} TFLOP/s; k2 Newton-Schulz in {args.ns_dtype}")
    print(f"{'impl':<18} {'ms/step (median)':>17} {'vs torch.optim.Muon':>20}")
    for r in rows:
        ratio = f"{base['ms_median'] / r['ms_median']:.1f}x" if base else "-"
        print(f"{r['impl']:<18} {r['ms_median']:>17.2f} {ratio:>20}")
    if "k2-muonclip" in by and "k2-noclip" in by:
        print(f"QK-Clip cost: {by['k2-muonclip']['ms_median'] / by['k2-noclip']['ms_median'] - 1:+.1%}")


if __name__ == "__main__":
    main()
