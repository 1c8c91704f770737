"""The QK-Clip experiment at the `h200` preset's size, as run for docs/benchmarks.md.

    python3 bench/qk_clip_h200.py STEPS LR MINUTES [--out DIR]      e.g. 1500 0.01 4.0

Same as `k2 experiment qk-clip --no-flow --set preset=h200 --set model.vocab_size=256 --set batch=16
--set seq=512 --set eval_every=100 --set steps=STEPS --set lr=LR --set max_minutes=MINUTES`, for
GPU machines without the CLI's dependencies. Prints the per-arm summary as JSON, then the finding.
"""
import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from k2core.config import QKClipExperimentConfig  # noqa: E402
from k2core.experiments.qk_clip import run  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("steps", type=int)
ap.add_argument("lr", type=float)
ap.add_argument("minutes", type=float)
ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "qk-clip-h200"))
args = ap.parse_args()
cfg = QKClipExperimentConfig(preset="h200", model={"vocab_size": 256}, steps=args.steps, batch=16, seq=512,
                             max_minutes=args.minutes, lr=args.lr, tau=30.0, eval_every=100)
summary = run(cfg, args.out)
print(json.dumps(summary["arms"], indent=1))
print(summary.get("finding"))
