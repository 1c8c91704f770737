"""Run stages without Prefect (plan + execute), in process or as a script for kill -9 tests.

    python tests/k2core/train/stages.py STORE STAGE[,STAGE] [--set key=value]...
"""
from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from k2core.config import load_config  # noqa: E402
from k2core.pipeline import plan  # noqa: E402
from k2core.stage import execute  # noqa: E402
from k2core.store import open_store  # noqa: E402

WORDS = ("river mill bridge library school church museum lake forest market square council newspaper farmer "
         "teacher doctor baker miller painter sailor station harbour garden castle tower road").split()


def corpus_rows(n_prose: int = 60, n_code: int = 12, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n_prose):
        sents = [f"The {rng.choice(WORDS)} near the {rng.choice(WORDS)} was {rng.choice(['old', 'new', 'quiet'])} "
                 f"in {rng.choice(['spring', 'summer', 'winter'])} and the {rng.choice(WORDS)} saw it." for _ in range(12)]
        rows.append({"text": " ".join(sents) + f"\nDocument number {i} ends here.\n"})
    for i in range(n_code):
        rows.append({"text": f"import os\n\n\ndef job_{i}(path):\n    for name in os.listdir(path):\n"
                             f"        print(name, {i})\n    return {i}\n\n\nclass Worker{i}:\n    pass\n" * 3})
    return rows


SMALL = ["curate.dask_workers=1", "rephrase.enabled=false", "tokenize.vocab_size=600", "tokenize.seq_len=32", "tokenize.val_fraction=0.1",
         "pretrain.steps=12", "pretrain.micro_batch=4", "pretrain.eval_every=4", "pretrain.eval_batches=2",
         "pretrain.checkpoint_every=4", "pretrain.warmup_steps=2", "pretrain.min_loss_drop=0.1",
         "pretrain.optim.lr=0.01", "pretrain.preset=tiny", "pretrain.model.max_position_embeddings=4096",
         # the long-context phase and the probes at toy sizes
         "pretrain.long_context.seq_len=128", "pretrain.probe.length=160", "pretrain.probe.distance=96",
         "pretrain.probe.sequences=4", "sft.probe.length=160", "sft.probe.distance=96", "sft.probe.sequences=4",
         "sft.heldout_domain=null"]


def run(store_path: str, stages: list[str], sets: list[str]):
    cfg = load_config(overrides=[*SMALL, f"store.uri={store_path}", *sets])
    store = open_store(store_path)
    return [execute(p, cfg, store, log=print) for p in plan(cfg, store, stages)], store


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    args = sys.argv[1:]
    sets = [a.split("=", 1)[1] for a in args if a.startswith("--set=")]
    outs, _ = run(args[0], args[1].split(","), sets)
    print("done", [(o.stage, o.version, o.status) for o in outs])
