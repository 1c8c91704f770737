"""Curation filters and fuzzy dedup: k2 side by side with datatrove 0.10 on one core each.

    .venv/bin/python bench/curation.py [--max-mb 30] [--near-dups 500] [--workers 1,2] [--skip-datatrove]
    .venv/bin/python bench/curation.py --end-to-end [--max-mb 86] [--repeat 3]    (bench/curation_e2e.py)

Corpus: the Python standard library (each module whole, plus its docstrings ≥ 200 chars) and
the text under /usr/share/doc (copyright files, READMEs, changelogs), written to one JSONL file.
Both sides run the same chain — Gopher repetition → Gopher quality → C4 — with datatrove's default
(published) thresholds, in one process each; then each filter alone on every document for
per-filter keep/drop agreement, with every disagreement class counted. Dedup: near-duplicates
(Jaccard ≥ 0.8 on word 5-gram shingles) planted into a prose sample, found by k2's MinHash-LSH
(14 bands × 8 rows). Prints one JSON line per measurement, then a table.
"""
from __future__ import annotations

import argparse
import ast
import gzip
import json
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from k2core.text.filters import C4Filter, Doc, GopherQualityFilter, GopherRepetitionFilter  # noqa: E402
from k2core.sources import stdlib_root  # noqa: E402


def build_corpus(max_bytes: int) -> list[dict]:
    docs: list[dict] = []
    total = 0

    def add(text: str, source: str) -> bool:
        nonlocal total
        if len(text) < 200:
            return True
        docs.append({"text": text, "source": source})
        total += len(text.encode())
        return total < max_bytes

    rng = random.Random(0)
    files = sorted(stdlib_root().rglob("*.py"))
    rng.shuffle(files)
    doc_files = [p for p in Path("/usr/share/doc").rglob("*") if p.is_file()]
    rng.shuffle(doc_files)
    # interleave prose-heavy and code sources so any --max-mb keeps the mix
    for i in range(max(len(files), len(doc_files))):
        if i < len(doc_files):
            p = doc_files[i]
            try:
                raw = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
                if b"\0" not in raw[:4096] and not add(raw.decode("utf-8", "replace"), str(p)):
                    break
            except (OSError, EOFError, gzip.BadGzipFile):
                pass
        if i < len(files):
            src = files[i].read_text("utf-8", "replace")
            if not add(src, str(files[i])):
                break
            try:
                for node in ast.walk(ast.parse(src)):
                    if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Module, ast.AsyncFunctionDef)):
                        d = ast.get_docstring(node)
                        if d and not add(d, f"{files[i]}:doc"):
                            break
            except (SyntaxError, ValueError):
                pass
    return docs


def k2_chain():
    return [GopherRepetitionFilter(), GopherQualityFilter(), C4Filter()]


def dt_chain():
    from datatrove.pipeline.filters import C4QualityFilter
    from datatrove.pipeline.filters import GopherQualityFilter as DQ
    from datatrove.pipeline.filters import GopherRepetitionFilter as DR

    return [DR(), DQ(), C4QualityFilter()]


def run_k2(chain, texts: list[str]) -> list[str | None]:
    out = []
    for t in texts:
        doc, reason = Doc(t), None
        for f in chain:
            r = f(doc)
            if r:
                reason = f"{f.name}:{r}"
                break
        out.append(reason)
    return out


def run_dt(chain, texts: list[str], names=("gopher_repetition", "gopher_quality", "c4")) -> list[str | None]:
    from datatrove.data import Document

    out = []
    for i, t in enumerate(texts):
        doc, reason = Document(text=t, id=str(i)), None
        for name, f in zip(names, chain):
            r = f.filter(doc)
            if r is not True:
                reason = f"{name}:{r[1] if isinstance(r, tuple) else 'dropped'}"
                break
        out.append(reason)
    return out


def timed(fn, *a):
    t = time.perf_counter()
    r = fn(*a)
    return r, time.perf_counter() - t


def agreement(ours: list[str | None], theirs: list[str | None]) -> dict:
    same = sum((a is None) == (b is None) for a, b in zip(ours, theirs))
    classes = Counter(f"k2 {'keep' if a is None else a} / datatrove {'keep' if b is None else b}"
                      for a, b in zip(ours, theirs) if (a is None) != (b is None))
    same_reason = sum(a == b for a, b in zip(ours, theirs))
    return {"docs": len(ours), "keep_drop_agreement": round(same / len(ours), 4),
            "same_reason": round(same_reason / len(ours), 4),
            "k2_kept": sum(a is None for a in ours), "datatrove_kept": sum(b is None for b in theirs),
            "disagreements": dict(classes.most_common())}


def shingler():
    """Word 5-gram shingles with k2's MinHash word splitting, and their Jaccard similarity."""
    from k2core.text.dedup import MinHasher

    mh = MinHasher()

    def shingles(t: str) -> set:
        w = mh.words(t)
        return set(zip(*[w[i:] for i in range(5)]))

    def jac(a: set, b: set) -> float:
        return len(a & b) / max(1, len(a | b))

    return mh, shingles, jac


def plant_near_dups(pool: list[str], n: int, rng: random.Random) -> tuple[list[str], list[int]]:
    """Copies of `n` documents of `pool`, words replaced until their Jaccard similarity (word
    5-gram shingles) falls below a target drawn from [0.8, 0.98]: (copies, index of each source)."""
    _, shingles, jac = shingler()
    sources = rng.sample(range(len(pool)), min(n, len(pool)))
    copies = []
    for i in sources:
        words = pool[i].split()
        base, target = shingles(pool[i]), rng.uniform(0.8, 0.98)
        while True:
            for _ in range(max(1, len(words) // 200)):
                words[rng.randrange(len(words))] = rng.choice(["lorem", "quartz", "nimbus", "vesper", "tundra"])
            if jac(base, shingles(" ".join(words))) < target:
                break
        copies.append(" ".join(words))
    return copies, sources


def bench_dedup(texts: list[str], n_planted: int, seed: int = 0) -> dict:
    """Plant near-duplicates (Jaccard 0.8–0.98 on word 5-gram shingles) of prose documents and
    run k2's exact + MinHash-LSH dedup over corpus + copies."""
    import numpy as np

    from k2core.text.dedup import clusters, exact_key

    mh, shingles, jac = shingler()
    pool = [t for t in texts if len(mh.words(t)) >= 150]
    copies, sources = plant_near_dups(pool, n_planted, random.Random(seed))
    allt = pool + copies
    ids = [f"{i:07d}" for i in range(len(allt))]
    t = time.perf_counter()
    exact = np.array([exact_key(x) for x in allt], np.uint64)
    bands = np.stack([mh.band_keys(x) for x in allt])
    drop = clusters(ids, exact, bands)
    secs = time.perf_counter() - t
    planted_found = sum(1 for k in range(len(copies)) if len(pool) + k in drop or sources[k] in drop)
    false_pos = 0
    for r, (keep, _) in drop.items():
        if r >= len(pool) and sources[r - len(pool)] == keep:
            continue
        if jac(shingles(allt[r]), shingles(allt[keep])) < 0.5:
            false_pos += 1      # removed, but not even half-similar to what it was merged with
    return {"bench": "dedup", "docs": len(allt), "planted": len(copies),
            "recall": round(planted_found / max(1, len(copies)), 4),
            "removed": len(drop), "removed_pre_existing": len(drop) - planted_found,
            "false_positive_rate": round(false_pos / len(allt), 5), "seconds": round(secs, 2),
            "docs_per_s": round(len(allt) / secs, 1)}


def bench_dask(docs: list[dict], workers: list[int], tmp: Path) -> list[dict]:
    """The whole curate stage on the corpus with 1, 2, … Dask workers (LocalCluster)."""
    from k2core.config import load_config
    from k2core.pipeline import plan
    from k2core.stage import execute
    from k2core.store import open_store

    src = tmp / "corpus.jsonl"
    with open(src, "w") as f:
        for d in docs:
            f.write(json.dumps(d) + "\n")
    rows = []
    for w in workers:
        cfg = load_config(overrides=[f"ingest.source={src}", "ingest.shard_docs=25",
                                     f"curate.dask_workers={w}", "curate.max_drop_fraction=1.0"])
        store = open_store(str(tmp / "store"))
        outs = [execute(p, cfg, store, log=lambda m: None) for p in plan(cfg, store, ["ingest", "curate"])]
        m = store.artifact("curate", outs[-1].version).metrics
        rows.append({"bench": "curate_stage", "workers": w, "shards": m["shards"], "docs_in": m["docs_in"],
                     "docs_out": m["docs_out"], "filter_seconds": m["filter_seconds"], "seconds": m["seconds"]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-mb", type=float, default=None, help="corpus size (default 30; 86 with --end-to-end)")
    ap.add_argument("--near-dups", type=int, default=500)
    ap.add_argument("--skip-datatrove", action="store_true")
    ap.add_argument("--repeat", type=int, default=3, help="k2 chain repeats (median reported)")
    ap.add_argument("--no-per-filter", dest="per_filter", action="store_false",
                    help="skip each filter's separate agreement pass (3 more datatrove passes)")
    ap.add_argument("--workers", default="1,2", help="Dask worker counts for the whole-stage run ('' = skip)")
    ap.add_argument("--end-to-end", action="store_true",
                    help="`k2 run --stages ingest..curate` vs datatrove's pipeline as processes (bench/curation_e2e.py)")
    ap.add_argument("--workdir", help="--end-to-end: where the corpus, stores and outputs go (default: a temp dir)")
    ap.add_argument("--datatrove-pipeline", nargs=2, metavar=("CORPUS", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.datatrove_pipeline:
        import curation_e2e

        return curation_e2e.datatrove_pipeline(*args.datatrove_pipeline)
    if args.end_to_end:
        import curation_e2e

        args.max_mb = 86 if args.max_mb is None else args.max_mb
        return curation_e2e.main(args)
    args.max_mb = 30 if args.max_mb is None else args.max_mb
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    docs = build_corpus(int(args.max_mb * 1e6))
    texts = [d["text"] for d in docs]
    mb = sum(len(t.encode()) for t in texts) / 1e6
    print(json.dumps({"bench": "corpus", "docs": len(texts), "mb": round(mb, 2)}), flush=True)
    rows = []
    import statistics

    from k2core.text import words as k2text

    # Both sides run interleaved, slice by slice (k2's repeats, then datatrove, on the same 25
    # documents), so a change in the machine's speed during the run (this 2-core VM varies by
    # ±30% minute to minute) falls on both alike. Each k2 repeat keeps its own tokenizer cache,
    # cold at the start of the corpus, as in a fresh worker process.
    caches = [k2text.ChunkCache() for _ in range(args.repeat)]
    times = [0.0] * args.repeat
    ours: list[str | None] = []
    theirs: list[str | None] = []
    t_dt = 0.0
    k2_chains = [k2_chain() for _ in range(args.repeat)]
    dt = None
    if not args.skip_datatrove:
        dt = dt_chain()
        run_dt(dt, texts[:2])                        # spaCy's first load is not throughput
    for i in range(0, len(texts), 25):
        part = texts[i:i + 25]
        for r in range(args.repeat):
            k2text._CHUNKS = caches[r]
            res, t = timed(run_k2, k2_chains[r], part)
            times[r] += t
            if r == 0:
                ours += res
        if dt is not None:
            res, t = timed(run_dt, dt, part)
            t_dt += t
            theirs += res
    k2text._CHUNKS = k2text.ChunkCache()
    t_k2 = statistics.median(times)
    rows.append({"bench": "filter_chain", "impl": "k2", "seconds": round(t_k2, 2),
                 "seconds_all": [round(t, 2) for t in times],
                 "docs_per_s": round(len(texts) / t_k2, 1), "mb_per_s": round(mb / t_k2, 3)})
    print(json.dumps(rows[-1]), flush=True)
    if dt is not None:
        rows.append({"bench": "filter_chain", "impl": "datatrove 0.10", "seconds": round(t_dt, 2),
                     "docs_per_s": round(len(texts) / t_dt, 1), "mb_per_s": round(mb / t_dt, 3),
                     "interleaved": "slices of 25 documents"})
        print(json.dumps(rows[-1]), flush=True)
        print(json.dumps({"bench": "chain_agreement", **agreement(ours, theirs)}), flush=True)
        for i, name in enumerate(["gopher_repetition", "gopher_quality", "c4"] if args.per_filter else []):
            a = run_k2([k2_chain()[i]], texts)
            b = run_dt([dt_chain()[i]], texts, names=(name,))
            print(json.dumps({"bench": "filter_agreement", "filter": name, **agreement(a, b)}), flush=True)
        print(f"\nfilter chain: k2 {rows[0]['mb_per_s']} MB/s vs datatrove {rows[1]['mb_per_s']} MB/s "
              f"= {t_dt / t_k2:.1f}x on one core")
    if args.near_dups:
        print(json.dumps(bench_dedup(texts, args.near_dups)), flush=True)
    if args.workers:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            d = bench_dask(docs, [int(w) for w in args.workers.split(",")], Path(tmp))
        if len(d) > 1:
            print(f"curate stage: {d[0]['workers']} worker(s) {d[0]['filter_seconds']} s, {d[-1]['workers']} "
                  f"workers {d[-1]['filter_seconds']} s = {d[0]['filter_seconds'] / d[-1]['filter_seconds']:.2f}x")


if __name__ == "__main__":     # the Dask LocalCluster spawns processes: the guard is required
    main()
