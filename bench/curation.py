"""Curation filters and fuzzy dedup: k2 side by side with datatrove 0.10 on one core each.

    .venv/bin/python bench/curation.py [--max-mb 30] [--near-dups 500] [--workers 1,2]

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

from k2core.data.filters import C4Filter, Doc, GopherQualityFilter, GopherRepetitionFilter  # noqa: E402
from k2core.data.sources import stdlib_root  # noqa: E402


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-mb", type=float, default=30)
    ap.add_argument("--near-dups", type=int, default=500)
    ap.add_argument("--skip-datatrove", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    docs = build_corpus(int(args.max_mb * 1e6))
    texts = [d["text"] for d in docs]
    mb = sum(len(t.encode()) for t in texts) / 1e6
    print(json.dumps({"bench": "corpus", "docs": len(texts), "mb": round(mb, 2)}), flush=True)
    rows = []
    ours, t_k2 = timed(run_k2, k2_chain(), texts)
    rows.append({"bench": "filter_chain", "impl": "k2", "seconds": round(t_k2, 2),
                 "docs_per_s": round(len(texts) / t_k2, 1), "mb_per_s": round(mb / t_k2, 3)})
    print(json.dumps(rows[-1]), flush=True)
    if not args.skip_datatrove:
        dt = dt_chain()
        run_dt(dt, texts[:2])                        # spaCy's first load is not throughput
        theirs, t_dt = timed(run_dt, dt, texts)
        rows.append({"bench": "filter_chain", "impl": "datatrove 0.10", "seconds": round(t_dt, 2),
                     "docs_per_s": round(len(texts) / t_dt, 1), "mb_per_s": round(mb / t_dt, 3)})
        print(json.dumps(rows[-1]), flush=True)
        print(json.dumps({"bench": "chain_agreement", **agreement(ours, theirs)}), flush=True)
        for i, name in enumerate(["gopher_repetition", "gopher_quality", "c4"]):
            a = run_k2([k2_chain()[i]], texts)
            b = run_dt([dt_chain()[i]], texts, names=(name,))
            print(json.dumps({"bench": "filter_agreement", "filter": name, **agreement(a, b)}), flush=True)
        print(f"\nfilter chain: k2 {rows[0]['mb_per_s']} MB/s vs datatrove {rows[1]['mb_per_s']} MB/s "
              f"= {t_dt / t_k2:.1f}x on one core")


if __name__ == "__main__":
    main()
