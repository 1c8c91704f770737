"""What it takes for SFT to teach tool calls: exact calls against pre-training tokens and SFT steps.

    python bench/posttrain.py --tokenize STORE/artifacts/tokenize/V --synthesize STORE/artifacts/synthesize/V \
        --grid demo --jobs 1 --out /tmp/posttrain

Each grid point pre-trains a model on the tokenize artifact's shards (the `pretrain` stage's own
`train`: WSD, MuonClip, the optional long-context phase, the context probe), then fine-tunes it on
the synthesize artifact's train-split trajectories with the shared loop (the `sft` stage's packing
and loss) and, at the listed SFT steps, scores held-out tool-call turns greedily on the native
engine (`sft.call_metrics`: tool name, valid arguments, exact call). Grid points run in parallel
processes (`--jobs`). Prints one JSON line per point and a table; writes `curve.json` and
`curve.png` to --out.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TINY_CTX = {"max_position_embeddings": 4096}
SMALL = {"hidden_size": 256, "intermediate_size": 768, "moe_intermediate_size": 128, "num_hidden_layers": 4,
         "num_attention_heads": 8}
LONG = {"seq_len": 2048, "fraction": 0.3}
MID = {"hidden_size": 192, "intermediate_size": 576, "moe_intermediate_size": 96, "num_hidden_layers": 3,
       "num_attention_heads": 6}
PACKED = {"seq_len": 8192, "micro_batch": 1}
DEMO = {"preset": "demo", "steps": 1200, "warmup_steps": 30, "long_context": LONG}
GRIDS = {
    # the embedded default's knobs: pre-training length / context, model size, SFT learning rate
    "sizes": [
        {"name": "tiny-300", "pretrain": {"steps": 300}},
        {"name": "tiny-300-long", "pretrain": {"steps": 300, "long_context": LONG}},
        {"name": "tiny-3k-long", "pretrain": {"steps": 3000, "long_context": LONG}},
        {"name": "tiny-3k-long-lr3e-3", "pretrain": {"steps": 3000, "long_context": LONG}, "sft": {"optim": {"lr": 3e-3}}},
        {"name": "small-1k-long", "model": SMALL, "pretrain": {"steps": 1000, "long_context": LONG}},
        {"name": "small-3k-long", "model": SMALL, "pretrain": {"steps": 3000, "long_context": LONG}},
    ],
    # what fits 2 CPU cores: 8192-token packed rows, one per step
    "demo": [
        {"name": "tiny-1k", "pretrain": {"steps": 1000, "long_context": LONG}, "sft": PACKED},
        {"name": "mid-500", "model": MID, "pretrain": {"steps": 500, "long_context": LONG}, "sft": PACKED},
        {"name": "mid-1k", "model": MID, "pretrain": {"steps": 1000, "long_context": LONG}, "sft": PACKED},
        {"name": "mid-2k", "model": MID, "pretrain": {"steps": 2000, "long_context": LONG}, "sft": PACKED},
        {"name": "mid-1k-lr2e-3", "model": MID, "pretrain": {"steps": 1000, "long_context": LONG},
         "sft": {**PACKED, "optim": {"lr": 2e-3}}},
        {"name": "small-500-lr2e-3", "model": SMALL, "pretrain": {"steps": 500, "long_context": LONG},
         "sft": {**PACKED, "optim": {"lr": 2e-3}}},
        {"name": "small-1k-lr2e-3", "model": SMALL, "pretrain": {"steps": 1000, "long_context": LONG},
         "sft": {**PACKED, "optim": {"lr": 2e-3}}},
        {"name": "mid-1k-nolong", "model": MID, "pretrain": {"steps": 1000}, "sft": PACKED},
    ],
    # the embedded default's budget (the tiny profile: demo model, 1,200 steps, 200-450 SFT steps)
    # with and without in-context recall rows (pretrain.recall)
    "recall": [
        {"name": "demo", "pretrain": DEMO},
        {"name": "demo-r.5", "pretrain": {**DEMO, "recall": {"fraction": 0.5}}},
        {"name": "demo-r1-8pk", "pretrain": {**DEMO, "recall": {"fraction": 1.0, "per_1k_tokens": 8, "max_len": 32}}},
        {"name": "demo-r1-16pk", "pretrain": {**DEMO, "recall": {"fraction": 1.0, "per_1k_tokens": 16, "min_len": 8,
                                                                  "max_len": 48}}},
        {"name": "demo-r.5-16pk", "pretrain": {**DEMO, "recall": {"fraction": 0.5, "per_1k_tokens": 16, "min_len": 8,
                                                                   "max_len": 48}}},
        {"name": "demo2k-r1-8pk", "pretrain": {**DEMO, "steps": 2400, "recall": {"fraction": 1.0, "per_1k_tokens": 8,
                                                                                 "max_len": 32}}},
    ],
}
for _p in GRIDS["recall"]:
    _p["sft"] = PACKED


class _Bar:
    def update(self, n=1):
        pass


@contextlib.contextmanager
def _progress(total=None, desc="", unit=""):
    yield _Bar()


def read_convs(syn: Path, split: str) -> list[dict]:
    import pandas as pd

    df = pd.concat([pd.read_parquet(f) for f in sorted((syn / "data").glob("*.parquet"))])
    df = df[(df.split == split) & (df.verdict == "success")]
    load = (lambda v: json.loads(v) if isinstance(v, str) else list(v))
    return [{"task_id": r.task_id, "domain": r.domain, "messages": load(r.messages), "tools": load(r.tools)}
            for r in df.itertuples()]


def run_point(point: dict, args_d: dict) -> dict:
    import torch

    from k2core.config import PretrainConfig, SFTConfig
    from k2core.infer.llm import NativeLLM
    from k2core.model.checkpoint import load_checkpoint
    from k2core.text.special_tokens import IM_USER, PAD
    from k2core.train import pretrain as PT
    from k2core.train.loop import Callback, Trainer, pick_device
    from k2core.train.sft import Rows, call_metrics, call_turns, export_model
    from k2core.train.sft_data import encode, pack
    from tokenizers import Tokenizer

    torch.set_num_threads(args_d["threads"])
    out = Path(args_d["out"]) / point["name"]
    out.mkdir(parents=True, exist_ok=True)
    tok_dir, syn = Path(args_d["tokenize"]), Path(args_d["synthesize"])
    log_f = open(out / "log.txt", "w")

    def log(msg):
        log_f.write(msg + "\n")
        log_f.flush()

    pre = {"preset": "tiny", "model": {**TINY_CTX, **point.get("model", {})}, "steps": 300, "micro_batch": 16,
           "warmup_steps": 20, "eval_every": 10 ** 6, "checkpoint_every": 10 ** 6, "optim": {"lr": 3e-3},
           "compile": False, "device": args_d["device"], "probe": {"sequences": 16}}
    pre = PretrainConfig.model_validate(_merge(pre, point.get("pretrain", {})))
    pdir = out / "pretrain"
    pdir.mkdir(exist_ok=True)
    job = PT.Job.from_tokens(lambda rel: tok_dir / rel, pre, pdir, out / "resume-pretrain")
    t0 = time.perf_counter()
    pm = PT.train(job, log, _progress)
    pre_s = time.perf_counter() - t0
    base = pdir / "model"

    sft = SFTConfig.model_validate(_merge({"steps": max(args_d["sft_steps"]), "micro_batch": 2, "eval_every": 10 ** 6,
                                           "checkpoint_every": 10 ** 6, "eval_batches": 2, "compile": False,
                                           "device": args_d["device"], "warmup_steps": 10},
                                          point.get("sft", {})))
    tok = Tokenizer.from_file(str(base / "tokenizer.json"))
    train, held = read_convs(syn, "train"), read_convs(syn, "heldout")
    kept, _ = encode(tok, [(r["messages"], r["tools"]) for r in train], sft.seq_len)
    packed = pack(kept, sft.seq_len, tok.token_to_id(PAD), sft.share_prefix, tok.token_to_id(IM_USER))
    arrays = {k: getattr(packed, k) for k in ("input_ids", "labels", "segment_ids", "prefix_lens")}
    rows = Rows(arrays, sft.micro_batch, sft.seed)
    turns = call_turns(held, args_d["turns"], sft.seed)
    device = pick_device(sft.device, 1)
    model = load_checkpoint(base, device=device, dtype=torch.float32).train()
    curve = []
    t_sft = time.perf_counter()
    eval_s = [0.0]

    class EvalAt(Callback):
        def on_step_end(self, trainer, step, row):
            if step + 1 not in args_d["sft_steps"]:
                return
            e0 = time.perf_counter()
            d = out / f"sft-{step + 1}"
            export_model(model.eval(), base, d)
            with NativeLLM(d, device=str(device)) as llm:
                m = call_metrics(llm, turns, 96)
            model.train()
            eval_s[0] += time.perf_counter() - e0
            curve.append({"sft_step": step + 1, "sft_s": round(time.perf_counter() - t_sft - eval_s[0], 1),
                          "loss": round(row["loss"], 4), **m})
            log(f"sft step {step + 1}: {m}")

    trainer = Trainer(sft, model, device, name="sft", resume_dir=out / "resume-sft", log=log, progress=_progress,
                      callbacks=[EvalAt()])
    from k2core.train.pretrain import wsd_lr

    trainer.fit(rows.batch, [], lambda s: wsd_lr(s, sft), tokens_per_step=sft.micro_batch * sft.seq_len,
                seq_len=sft.seq_len)
    return {"name": point["name"], "pretrain_tokens": pm["tokens"], "pretrain_s": round(pre_s, 1),
            "pretrain_val_loss": round(pm["final_val_loss"], 4), "parameters": pm["parameters"],
            **{k: v for k, v in pm.items() if k.startswith("probe_")}, "sft_conversations": len(kept),
            "sft_rows": len(packed.input_ids), "curve": curve}


def _merge(a: dict, b: dict) -> dict:
    from k2core.config import deep_merge

    return deep_merge(a, b)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenize", required=True)
    ap.add_argument("--synthesize", required=True)
    ap.add_argument("--grid", default="demo", help=f"{', '.join(GRIDS)} or a JSON list of points")
    ap.add_argument("--only", default=None, help="comma-separated point names")
    ap.add_argument("--sft-steps", default="100,300,600,1000,1500")
    ap.add_argument("--turns", type=int, default=32)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="/tmp/posttrain")
    a = ap.parse_args()
    points = GRIDS[a.grid] if a.grid in GRIDS else json.loads(a.grid)
    if a.only:
        points = [p for p in points if p["name"] in a.only.split(",")]
    args_d = {"tokenize": a.tokenize, "synthesize": a.synthesize, "out": a.out, "threads": a.threads,
              "device": a.device, "turns": a.turns, "sft_steps": sorted(int(x) for x in a.sft_steps.split(","))}
    Path(a.out).mkdir(parents=True, exist_ok=True)
    results = []
    with mp.get_context("spawn").Pool(a.jobs) as pool:
        for r in pool.imap_unordered(_safe, [(p, args_d) for p in points]):
            print(json.dumps(r), flush=True)
            results.append(r)
    (Path(a.out) / "curve.json").write_text(json.dumps(results, indent=1))
    print(f"\n{'point':<18} {'pre tokens':>10} {'pre s':>6} {'probe far/near/ctl':>20} "
          + " ".join(f"{'exact@' + str(s):>10}" for s in args_d["sft_steps"]))
    for r in results:
        if "error" in r:
            print(f"{r['name']:<18} ERROR {r['error'][:100]}")
            continue
        ex = {c["sft_step"]: c["exact_call"] for c in r["curve"]}
        print(f"{r['name']:<18} {r['pretrain_tokens']:>10,} {r['pretrain_s']:>6} "
              f"{r.get('probe_copy_accuracy', 0):>6.2f}/{r.get('probe_near_copy_accuracy', 0):.2f}/"
              f"{r.get('probe_control_accuracy', 0):.2f}      "
              + " ".join(f"{ex.get(s, float('nan')):>10.2f}" for s in args_d["sft_steps"]))
    return 0


def _safe(item):
    point, args_d = item
    try:
        return run_point(point, args_d)
    except Exception as e:   # a failed point is reported, the others go on
        import traceback

        return {"name": point["name"], "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}


if __name__ == "__main__":
    raise SystemExit(main())
