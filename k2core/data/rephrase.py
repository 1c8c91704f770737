"""The `rephrase` stage (K2 §2.2): knowledge and math documents rewritten by a teacher LLM, chunk by
chunk and autoregressively, each rewrite verified against its source.

- Documents of the domains in ``per_domain`` get that many rephrasings; each rephrasing takes a
  style (knowledge: ``styles`` in turn, offset by the document id; math: ``math_style``).
- Long documents are cut at paragraph, then sentence boundaries into chunks of ≤ ``chunk_chars``;
  chunk k is rewritten with the end of the rewrite of chunks < k in its prompt; the rewrites are
  concatenated. All rephrasings advance together, one batched generate call per chunk index.
- Every chunk goes through :class:`~k2core.infer.fidelity.Verifier`; a rephrasing is accepted when
  all its chunks pass. Rejected ones are kept in ``rejects/`` with their reasons.
- The teacher: ``teacher`` (a :class:`~k2core.config.ModelRef`, resolved by k2core/models.py) —
  native or vllm on ``checkpoint`` / ``artifact``, by default the newest committed pretrain model
  trained on raw text (so a nightly rerun settles into cache hits instead of each model teaching
  the next), or openai (``base_url`` + ``model``). With no teacher the stage
  writes an empty output and records ``skipped: no teacher model``; the pipeline continues on raw
  text. Nothing is ever canned.
"""
from __future__ import annotations

import hashlib
import json
import string
import time
from pathlib import Path
from typing import Any

from k2core.artifacts import read_documents
from k2core.config import PipelineConfig
from k2core.errors import K2Error
from k2core.models import ResolvedModel, raw_text_teacher, resolve_model
from k2core.stage import StageContext
from k2core.text.chunks import split_chunks

PROMPTS = Path(__file__).parent / "prompts" / "rephrase"
STOPS = ["\n\nPassage:", "<|endoftext|>", "\n\nBelow is"]
COLUMNS = ["id", "text", "domain", "source_id", "style", "rephrasing", "n_chunks", "similarity_min",
           "similarity_mean", "number_recall_min", "entity_recall_min", "accepted", "reasons", "teacher"]


# ---------------------------------------------------------------------------- teacher
def resolve_teacher(cfg: PipelineConfig) -> ResolvedModel | None:
    """Which model rewrites (its identity goes into the stage version: a new teacher, a new
    version), or None when there is none."""
    if not cfg.rephrase.enabled:
        return None
    return resolve_model(cfg.rephrase.teacher, cfg.store.open(), default=raw_text_teacher, where="rephrase.teacher")


def fingerprint(cfg: PipelineConfig) -> dict[str, Any]:
    teacher = resolve_teacher(cfg)
    return {"teacher": teacher.identity if teacher is not None else None}


def describe(teacher: ResolvedModel | None) -> str:
    return "none" if teacher is None else teacher.describe()


# ---------------------------------------------------------------------------- prompts
def load_templates(cfg) -> dict[str, string.Template]:
    names = {*cfg.styles, cfg.math_style}
    out = {}
    for name in sorted(names):
        for folder in ([Path(cfg.prompts_dir)] if cfg.prompts_dir else []) + [PROMPTS]:
            f = folder / f"{name}.txt"
            if f.exists():
                out[name] = string.Template(f.read_text())
                break
        else:
            raise K2Error(f"rephrase: no template {name}.txt in "
                          f"{cfg.prompts_dir + ' or ' if cfg.prompts_dir else ''}{PROMPTS}")
    return out


def _pick(doc_id: str, k: int, styles: list[str]) -> str:
    return styles[(int(hashlib.sha256(doc_id.encode()).hexdigest()[:8], 16) + k) % len(styles)]


def new_job(doc: dict[str, Any], k: int, cfg) -> dict[str, Any]:
    """Rephrasing `k` of `doc`: its style (math: the learning note; else the styles in turn) and
    source chunks; :func:`rewrite` fills ``out``."""
    style = cfg.math_style if doc.get("domain") == "math" else _pick(doc["id"], k, cfg.styles)
    return {"doc": doc, "k": k, "style": style, "src": split_chunks(doc["text"], cfg.chunk_chars), "out": []}


def rewrite(llm, jobs: list[dict[str, Any]], cfg, templates: dict[str, string.Template], bar) -> int:
    """Rewrite every job's chunks in place, autoregressively: round r sends chunk r of every job
    that has one, with the end of that job's rewrite so far, as one batch. Returns the tokens
    generated."""
    from k2core.infer.llm import TextParams

    generated = 0
    for r in range(max((len(j["src"]) for j in jobs), default=0)):
        live = [j for j in jobs if r < len(j["src"])]
        prompts = [templates[j["style"]].safe_substitute(
            passage=j["src"][r], previous=" ".join(j["out"])[-cfg.context_chars:] if j["out"] else "the start")
            for j in live]
        params = TextParams(max_tokens=cfg.max_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                            seed=cfg.seed + r, stop=STOPS)
        for j, c in zip(live, llm.generate(prompts, params, progress=False)):
            j["out"].append(c.text.strip())
            generated += c.completion_tokens or 0
        bar.update(len(live))
    return generated


def check_jobs(verifier, jobs: list[dict[str, Any]]) -> list[list[Any]]:
    """Every job's chunk verdicts (source chunk against its rewrite), in job order, checked as one batch."""
    pairs = [(src, out) for j in jobs for src, out in zip(j["src"], j["out"])]
    verdicts = iter(verifier.check([a for a, _ in pairs], [b for _, b in pairs]))
    return [[next(verdicts) for _ in j["src"]] for j in jobs]


# ---------------------------------------------------------------------------- the stage
def run(ctx: StageContext) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from k2core.infer.llm import open_model

    cfg = ctx.cfg
    t0 = time.monotonic()
    (ctx.workdir / "data").mkdir()
    (ctx.workdir / "rejects").mkdir()
    docs = read_documents(ctx)
    eligible = [d for d in docs if cfg.per_domain.get(d["domain"], 0) > 0][: cfg.max_docs]
    teacher = resolve_teacher(ctx.pipeline)
    schema = pa.schema([(c, pa.bool_() if c == "accepted" else pa.int64() if c in ("rephrasing", "n_chunks")
                         else pa.float64() if c.endswith(("_min", "_mean")) else pa.string()) for c in COLUMNS])
    base = {"documents_in": len(docs), "eligible_documents": len(eligible), "teacher": describe(teacher)}
    if teacher is None or not eligible:
        why = ("skipped: rephrase.enabled = false" if not cfg.enabled else
               "skipped: no teacher model (no pretrain artifact yet; the run continues on raw text)"
               if teacher is None else "skipped: no documents of the rephrased domains")
        ctx.log(f"rephrase: {why}")
        pq.write_table(pa.Table.from_pylist([], schema), ctx.workdir / "data" / "rephrased-00000.parquet")
        return {**base, "status": why, "rephrasings": 0, "accepted": 0, "accept_rate_shortfall": 0.0}

    from k2core.infer.fidelity import REASONS, Verifier

    templates = load_templates(cfg)
    llm = open_model(teacher, cfg.teacher, ctx.store)
    ctx.log(f"rephrase: teacher {describe(teacher)}; {len(eligible)} documents")
    # one job per rephrasing: source doc, style, source chunks, rewritten chunks
    jobs = [new_job(d, k, cfg) for d in eligible for k in range(cfg.per_domain[d["domain"]])]
    with llm:
        with ctx.progress(total=sum(len(j["src"]) for j in jobs), desc="rephrase: chunks", unit="chunk") as bar:
            generated = rewrite(llm, jobs, cfg, templates, bar)
        # the teacher judges too when fidelity.judge is on
        per_job = check_jobs(Verifier(cfg.fidelity, judge=llm), jobs)
    verdicts = [v for vs in per_job for v in vs]
    rows, reason_counts = [], {r: 0 for r in REASONS}
    for v in verdicts:
        for r in v.reasons:
            reason_counts[r] += 1
    desc = describe(teacher)
    for j, vs in zip(jobs, per_job):
        sims = [v.similarity for v in vs if v.similarity is not None]
        text = "\n\n".join(j["out"])
        reasons = sorted({r for v in vs for r in v.reasons})
        rows.append({"id": hashlib.sha256(f"{j['doc']['id']}:{j['style']}:{j['k']}:{text}".encode()).hexdigest()[:32],
                     "text": text, "domain": j["doc"]["domain"], "source_id": j["doc"]["id"], "style": j["style"],
                     "rephrasing": j["k"], "n_chunks": len(vs), "similarity_min": min(sims) if sims else None,
                     "similarity_mean": sum(sims) / len(sims) if sims else None,
                     "number_recall_min": min(v.number_recall for v in vs),
                     "entity_recall_min": min(v.entity_recall for v in vs),
                     "accepted": not reasons, "reasons": ",".join(reasons), "teacher": desc})
    ok = [r for r in rows if r["accepted"]]
    pq.write_table(pa.Table.from_pylist(ok, schema), ctx.workdir / "data" / "rephrased-00000.parquet")
    pq.write_table(pa.Table.from_pylist([r for r in rows if not r["accepted"]], schema),
                   ctx.workdir / "rejects" / "rejected-00000.parquet")
    chunk_sims = [v.similarity for v in verdicts if v.similarity is not None]
    rate = len(ok) / len(rows)
    plot(chunk_sims, reason_counts, cfg.fidelity.min_similarity, ctx.workdir / "rephrase.png", desc)
    qs = _quantiles(chunk_sims)
    (ctx.workdir / "report.json").write_text(json.dumps({"teacher": teacher.identity, "reasons": reason_counts,
                                                         "similarity_quantiles": qs}, indent=1))
    return {**base, "status": "rephrased", "rephrasings": len(rows), "accepted": len(ok), "accept_rate": rate,
            "accept_rate_shortfall": max(0.0, cfg.min_accept_rate - rate), "chunks": len(verdicts),
            "generated_tokens": generated, "seconds": round(time.monotonic() - t0, 1),
            **{f"rejected_chunks_{r}": n for r, n in reason_counts.items()},
            **{f"similarity_{k}": v for k, v in qs.items()}}


def _quantiles(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {}
    s = sorted(xs)
    return {name: round(s[min(len(s) - 1, int(q * len(s)))], 4) for name, q in
            (("p10", 0.1), ("p50", 0.5), ("p90", 0.9))}


def plot(sims: list[float], reasons: dict[str, int], threshold: float, out: Path, teacher: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8), dpi=110)
    a.hist(sims, bins=30, range=(-0.2, 1.0), color="tab:blue")
    a.axvline(threshold, color="tab:red", ls="--", label=f"threshold {threshold}")
    a.set(xlabel="cosine similarity to the source chunk", ylabel="chunks", title=f"Fidelity ({teacher})")
    a.legend()
    b.barh(list(reasons), list(reasons.values()), color="tab:orange")
    b.set(xlabel="chunks", title="Rejections by reason")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def gate_frame(workdir: Path, columns: list[str]):
    import pandas as pd

    return pd.read_parquet(workdir / "data", columns=columns) if (workdir / "data").exists() \
        else pd.DataFrame({c: [] for c in columns})
