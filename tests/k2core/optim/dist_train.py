"""A few MuonClip training steps of a small K2 model, single-process or under torchrun (gloo).

Used by test_muonclip.py: the sharded and DeepSpeed runs are compared with the single-process one.

    python dist_train.py --mode single --out final.pt
    torchrun --nproc-per-node 2 dist_train.py --mode zero1 --out final.pt
    torchrun --nproc-per-node 2 dist_train.py --mode zero1 --split --out final.pt
    torchrun --nproc-per-node 2 dist_train.py --mode deepspeed --split --out final.pt
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from k2core.model import K2ForCausalLM, ModelConfig  # noqa: E402
from k2core.optim.muonclip import MuonClip  # noqa: E402

STEPS, BATCH, SEQ = 3, 4, 32


def build():
    cfg = ModelConfig.preset("tiny", num_hidden_layers=3, first_k_dense_replace=1)
    model = K2ForCausalLM(cfg).init_weights(0)
    data = torch.randint(0, cfg.vocab_size, (STEPS, BATCH, SEQ), generator=torch.Generator().manual_seed(1))
    return cfg, model, data


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["single", "zero1", "deepspeed"], required=True)
    ap.add_argument("--split", action="store_true", help="each rank takes its slice of the global batch")
    ap.add_argument("--tau", type=float, default=None)
    ap.add_argument("--zero-stage", type=int, default=0, help="deepspeed: 0 works; >= 1 is refused")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)   # CPU matmul results depend on the thread count
    cfg, model, data = build()
    rank, world = 0, 1
    step_fn = None
    if args.mode == "zero1":
        torch.distributed.init_process_group("gloo")
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        opt = MuonClip.for_model(model, lr=0.02, qk_clip_tau=args.tau,
                                 process_group=torch.distributed.group.WORLD, reduce_grads=args.split)
    elif args.mode == "deepspeed":
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        # stage 0: DeepSpeed all-reduces gradients; MuonClip shards its own state over the group
        opt = MuonClip.for_model(model, lr=0.02, qk_clip_tau=args.tau, process_group=torch.distributed.group.WORLD)
        # the shipped config (infra/deepspeed/muonclip-zero0.json), sized for this test: fp32 on a CPU,
        # no clipping (the single-process reference does not clip)
        config = json.loads((Path(__file__).resolve().parents[3] / "infra/deepspeed/muonclip-zero0.json").read_text())
        config.update({"train_micro_batch_size_per_gpu": BATCH // world if args.split else BATCH,
                       "gradient_accumulation_steps": 1, "gradient_clipping": 0.0, "bf16": {"enabled": False}})
        config["zero_optimization"]["stage"] = args.zero_stage
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=config)

        def step_fn(ids):
            out = engine(ids, labels=ids, want_max_logits=True)
            engine.backward(out.loss)
            opt.observe(out.max_logits)
            engine.step()
            return opt.last_stats
    else:
        opt = MuonClip.for_model(model, lr=0.02, qk_clip_tau=args.tau)

    if step_fn is None:
        def step_fn(ids):
            out = model(ids, labels=ids, want_max_logits=True)
            out.loss.backward()
            stats = opt.step(max_logits=out.max_logits)
            opt.zero_grad()
            return stats

    clipped = []
    for s in range(STEPS):
        ids = data[s]
        if args.split:
            ids = ids.chunk(world)[rank]
        if s == 0 and args.mode != "deepspeed":   # the gradients the optimizer used (reduced to owners)
            grads = {}
            real_step = opt.step

            def spy(*a, **kw):
                out = real_step(*a, **kw)
                grads.update({n: p.grad.clone() for n, p in model.named_parameters() if opt.owner(p) == rank})
                return out
            opt.step = spy
        clipped.append(step_fn(ids).clipped_heads)
        if s == 0 and args.mode != "deepspeed":
            opt.step = real_step
            torch.save(grads, f"{args.out}.grads{rank}")
    if rank == 0:
        torch.save({"params": {n: p.detach().clone() for n, p in model.named_parameters()},
                    "clipped": clipped, "world": world,
                    "owned": sum(1 for p in model.parameters() if opt.owner(p) == rank)}, args.out)
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
