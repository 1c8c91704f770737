"""`k2 experiment qk-clip | rephrase-vs-repeat`: K2's ablations in miniature, as Prefect flows or plain."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _run(args, cls, name: str, module: str, flow_name: str) -> tuple[dict, Path]:
    """Config from --set, output dir, then the experiment plain (--no-flow) or as its Prefect flow."""
    import importlib

    from k2core.config import load_section

    cfg = load_section(cls, args.set or [], "experiment config")
    out = Path(args.out or f"k2-experiments/{name}/{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}")
    if args.no_flow:
        return importlib.import_module(f"k2core.experiments.{module}").run(cfg, out), out
    from flows.common import prefect_env, wait_for

    _, local = prefect_env()
    from flows import experiments

    wait_for(local)
    return getattr(experiments, flow_name)(config=cfg, out_dir=str(out)), out


def cmd_qk_clip(args) -> int:
    from k2core.config import QKClipExperimentConfig

    summary, out = _run(args, QKClipExperimentConfig, "qk-clip", "qk_clip", "qk_clip_flow")
    print(summary.get("finding", ""))
    for arm, a in summary["arms"].items():
        print(f"  {arm:9s} final loss {a['final_loss']:.3f}  peak max logit {a['peak_max_logit']:.1f}  "
              f"steps above tau {a['steps_above_tau']}")
    print(f"report: {out / 'report.md'}  (plots: max_logit.png, loss.png; metrics.parquet)")
    if args.json:
        print(json.dumps(summary))
    return 0


def cmd_rephrase_vs_repeat(args) -> int:
    from k2core.config import RephraseRepeatExperimentConfig

    summary, out = _run(args, RephraseRepeatExperimentConfig, "rephrase-vs-repeat", "rephrase_vs_repeat",
                        "rephrase_vs_repeat_flow")
    print(f"teacher {summary['teacher']}; {summary['probe_items']} cloze questions, chance {summary['chance']:.3f}")
    for a in summary["arms"].values():
        print(f"  {a['label']:32s} accuracy {a['accuracy']:.3f}  final loss {a['final_loss']:.3f}")
    print(f"report: {out / 'report.md'}  (plots: accuracy.png, loss.png; probe.jsonl, rephrasings.jsonl)")
    if args.json:
        print(json.dumps(summary))
    return 0


def register(sub) -> None:
    p = sub.add_parser("experiment", help="run an experiment (qk-clip, rephrase-vs-repeat)")
    esub = p.add_subparsers(dest="experiment", required=True)
    for name, func, help_, example in (
            ("qk-clip", cmd_qk_clip, "plain Muon vs MuonClip: max attention logit and loss per step",
             "steps=1000, tau=30, lr=0.02, preset=h200, model.vocab_size=256"),
            ("rephrase-vs-repeat", cmd_rephrase_vs_repeat,
             "raw x10 epochs vs 1 rephrasing x10 vs 10 rephrasings x1 at equal tokens: cloze recall",
             "docs=20, epochs=10, rephrasings=10, rephrase.teacher.checkpoint=DIR, source=FILE.jsonl, store.uri=DIR")):
        sp = esub.add_parser(name, help=help_, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        sp.add_argument("--set", action="append", metavar="KEY=VALUE", help=f"experiment setting, e.g. {example}")
        sp.add_argument("--out", help=f"output directory (default k2-experiments/{name}/<UTC time>)")
        sp.add_argument("--no-flow", action="store_true", help="run without Prefect (no UI artifacts)")
        sp.add_argument("--json", action="store_true", help="also print the summary as JSON")
        sp.set_defaults(func=func)
