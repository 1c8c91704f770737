"""`k2 experiment qk-clip`: K2's QK-Clip ablation in miniature, as a Prefect flow or plain."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def cmd_qk_clip(args) -> int:
    from pydantic import ValidationError

    from k2core.config import ConfigError, QKClipExperimentConfig, deep_merge, parse_override

    data: dict = {}
    for item in args.set or []:
        data = deep_merge(data, parse_override(item))
    try:
        cfg = QKClipExperimentConfig.model_validate(deep_merge(QKClipExperimentConfig().model_dump(), data))
    except ValidationError as e:
        raise ConfigError("invalid experiment config: " + "; ".join(
            f"{'.'.join(map(str, err['loc']))} = {err.get('input')!r}: {err['msg']}" for err in e.errors())) from None
    out = Path(args.out or f"k2-experiments/qk-clip/{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}")
    if args.no_flow:
        from k2core.experiments.qk_clip import run

        summary = run(cfg, out)
    else:
        from flows.cli import _prefect_env
        from flows.experiments import qk_clip_flow

        _prefect_env()
        summary = qk_clip_flow(config=cfg, out_dir=str(out))
    print(summary.get("finding", ""))
    for arm, a in summary["arms"].items():
        print(f"  {arm:9s} final loss {a['final_loss']:.3f}  peak max logit {a['peak_max_logit']:.1f}  "
              f"steps above tau {a['steps_above_tau']}")
    print(f"report: {out / 'report.md'}  (plots: max_logit.png, loss.png; metrics.parquet)")
    if args.json:
        print(json.dumps(summary))
    return 0


def register(sub) -> None:
    p = sub.add_parser("experiment", help="run an experiment (qk-clip)")
    esub = p.add_subparsers(dest="experiment", required=True)
    sp = esub.add_parser("qk-clip", help="plain Muon vs MuonClip: max attention logit and loss per step",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sp.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="experiment setting, e.g. steps=1000, tau=30, lr=0.02, preset=h200, model.vocab_size=256")
    sp.add_argument("--out", help="output directory (default k2-experiments/qk-clip/<UTC time>)")
    sp.add_argument("--no-flow", action="store_true", help="run without Prefect (no UI artifacts)")
    sp.add_argument("--json", action="store_true", help="also print the summary as JSON")
    sp.set_defaults(func=cmd_qk_clip)
