"""Rephrase-vs-repeat (K2 §2.2's SimpleQA ablation in miniature): is rewriting knowledge text better
than repeating it?

The same small byte-level student is trained from the same initialisation for the same number of
steps (the token budget of the raw documents × `epochs`) on three streams:

- ``raw``: the documents, `epochs` passes;
- ``one_rephrasing``: one rephrasing of each document, `epochs` passes;
- ``many_rephrasings``: `rephrasings` different rephrasings of each document, one pass.

A stream shorter than the budget is cycled, a longer one cut, so every arm sees the same number of
tokens. The rephrasings come from the teacher the `rephrase` stage would use (by default the
store's newest model trained on raw text), through the stage's own prompts, chunking and fidelity
verifier; the report gives the teacher and its fidelity figures next to the accuracies.

The probe: cloze questions cut from the raw documents — a sentence up to a fact (a number or a
capitalised name not at the sentence start), answered by ranking the true continuation against
`choices - 1` answers of the same kind from other questions, by the student's mean log-probability
per byte. Its wording is the raw text's, which favours the raw arm (the report says so). Nothing is
canned: whatever the three accuracies are, they are reported.

``run(cfg, out_dir)`` writes ``summary.json``, ``report.md``, ``metrics.parquet`` (loss per arm and
step), ``probe.jsonl``, ``rephrasings.jsonl``, ``accuracy.png`` and ``loss.png``.
"""
from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path
from typing import Any, Callable

import torch

from k2core.config import RephraseRepeatExperimentConfig
from k2core.experiments import ExperimentError
from k2core.progress import Progress

ARMS = (("raw", "raw × {epochs}"), ("one_rephrasing", "1 rephrasing × {epochs}"),
        ("many_rephrasings", "{rephrasings} × 1 epoch"))


def _n(k: int, word: str) -> str:
    return f"{k} {word}" + ("s" if k != 1 else "")


# ---------------------------------------------------------------------------- documents
def _cut(text: str, limit: int) -> str:
    """The text up to `limit` characters, ending at a sentence end when there is one."""
    if len(text) <= limit:
        return text.strip()
    head = text[:limit]
    ends = [m.end() for m in re.finditer(r"[.!?](?=\s)", head)]
    return (head[:ends[-1]] if ends else head).strip()


def load_documents(cfg: RephraseRepeatExperimentConfig) -> list[dict[str, Any]]:
    """`cfg.docs` knowledge documents (id, text): prose of the newest curate artifact, or a JSONL file."""
    if cfg.source == "store":
        from k2core.artifacts import read_artifact_rows

        curated = cfg.store.open().newest("curate")
        if curated is None:
            raise ExperimentError(f"source = store: no curate artifact in {cfg.store.uri} "
                                  "(run `k2 run --stages ingest..curate` first, or give a JSONL file)")
        rows = [r for r in read_artifact_rows(curated, ["id", "text", "domain"]) if r["domain"] == "prose"]
    else:
        path = Path(cfg.source)
        if not path.is_file():
            raise ExperimentError(f"source = {cfg.source!r}: not 'store' and not a file")
        rows = []
        for i, line in enumerate(path.read_text().splitlines()):
            if line.strip():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ExperimentError(f"{path}:{i + 1}: not JSON ({e.msg})") from None
                if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                    raise ExperimentError(f"{path}:{i + 1}: no text field")
                rows.append({"id": str(rec.get("id", i)), "text": rec["text"]})
    docs = []
    for r in rows:
        text = _cut(r["text"], cfg.max_chars)
        if len(text) >= cfg.min_chars:
            docs.append({"id": r["id"], "text": text, "domain": "prose"})
        if len(docs) == cfg.docs:
            break
    if len(docs) < 2:
        raise ExperimentError(f"only {len(docs)} documents of at least {cfg.min_chars} characters in {cfg.source}")
    return docs


# ---------------------------------------------------------------------------- probe
_SENTENCE = re.compile(r"[^.!?\n]+[.!?]")
_FACT = re.compile(r"\b(?:\d[\d,.]*\d|\d|[A-Z][a-zA-Z]{2,})\b")
_COMMON = frozenset("The This That These Those There Then When What Which While With From For And But "
                    "However Also Its His Her Their Our Your You They She Note See".split())


def build_probe(docs: list[dict[str, Any]], n_items: int, choices: int, seed: int) -> list[dict[str, Any]]:
    """Cloze items: {doc, prefix, answer, kind, options}. The prefix is the sentence up to the fact,
    and ``prefix + answer`` is a substring of the document (tests check it)."""
    items = []
    for d in docs:
        per_doc = 0
        for m in _SENTENCE.finditer(d["text"]):
            sent = m.group()
            start = len(sent) - len(sent.lstrip())
            for f in _FACT.finditer(sent):
                if f.start() <= start + 1 or f.group() in _COMMON or f.start() - start < 20:
                    continue            # the sentence's first word, common capitals, too little context
                kind = "number" if f.group()[0].isdigit() else "name"
                items.append({"doc": d["id"], "prefix": sent[start:f.start()], "answer": f.group(), "kind": kind})
                per_doc += 1
                break                   # one fact per sentence
            if per_doc == 5:
                break
    rng = random.Random(seed)
    rng.shuffle(items)
    items = items[:n_items]
    for it in items:
        pool = sorted({o["answer"] for o in items if o["kind"] == it["kind"] and o["answer"] != it["answer"]})
        if len(pool) < choices - 1:
            pool = sorted({o["answer"] for o in items if o["answer"] != it["answer"]})
        opts = rng.sample(pool, choices - 1) + [it["answer"]]
        rng.shuffle(opts)
        it["options"] = opts
    if len(items) < 4:
        raise ExperimentError(f"only {len(items)} cloze questions could be cut from {len(docs)} documents")
    return items


@torch.no_grad()
def probe_accuracy(model, items: list[dict[str, Any]], device: torch.device) -> tuple[float, list[bool]]:
    """Fraction of items whose true answer has the highest mean log-probability per byte."""
    model.eval()
    right = []
    for it in items:
        ctx = list(it["prefix"].encode())[-200:]
        seqs = [ctx + list(o.encode()) for o in it["options"]]
        width = max(map(len, seqs))
        x = torch.tensor([s + [0] * (width - len(s)) for s in seqs], device=device)
        logp = model(x).logits.float().log_softmax(-1)
        scores = []
        for row, (s, o) in enumerate(zip(seqs, it["options"])):
            n = len(o.encode())
            pos = torch.arange(len(ctx) - 1, len(s) - 1, device=device)
            scores.append(float(logp[row, pos, x[row, pos + 1]].mean()) if n else float("-inf"))
        right.append(it["options"][max(range(len(scores)), key=scores.__getitem__)] == it["answer"])
    model.train()
    return sum(right) / len(right), right


# ---------------------------------------------------------------------------- streams
def stream(texts_per_pass: list[list[str]], seed: int) -> torch.Tensor:
    """Byte tokens of the passes in order, each pass's documents shuffled, separated by blank lines."""
    rng = random.Random(seed)
    out = bytearray()
    for texts in texts_per_pass:
        order = list(texts)
        rng.shuffle(order)
        for t in order:
            out += t.encode() + b"\n\n"
    return torch.frombuffer(out, dtype=torch.uint8).long()


def arm_streams(docs, reph: dict[str, list[str]], cfg) -> dict[str, torch.Tensor]:
    raw = [d["text"] for d in docs]
    return {"raw": stream([raw] * cfg.epochs, cfg.seed),
            "one_rephrasing": stream([[reph[d["id"]][0] for d in docs]] * cfg.epochs, cfg.seed),
            "many_rephrasings": stream([[reph[d["id"]][k] for d in docs] for k in range(cfg.rephrasings)], cfg.seed)}


def train_arm(cfg, data: torch.Tensor, steps: int, device: torch.device, bar) -> tuple[Any, list[float]]:
    """A fresh student (same seed for every arm) trained `steps` steps on consecutive rows of `data`."""
    from k2core.optim.config import OptimConfig
    from k2core.train.loop import autocast, build_model, train_step

    model = build_model(cfg, None, device)
    if model.config.vocab_size < 256:
        raise ExperimentError(f"model.vocab_size = {model.config.vocab_size}: byte tokens need at least 256")
    opt = OptimConfig(lr=cfg.lr, weight_decay=0.0).build(model)
    amp = autocast(device)
    rows = len(data) // cfg.seq
    table = data[:rows * cfg.seq].view(rows, cfg.seq)
    losses = []
    for step in range(steps):
        idx = torch.arange(step * cfg.batch, (step + 1) * cfg.batch) % rows      # cycles a short stream
        x = table[idx].to(device)
        losses.append(train_step(model, opt, [{"input_ids": x, "labels": x}], amp=amp, grad_clip=1.0,
                                 device=device, check_finite=False).loss)
        bar.update(1)
    return model, losses


# ---------------------------------------------------------------------------- run
def rephrase_documents(cfg, docs, out_dir: Path, log: Callable[[str], None]) -> tuple[dict, dict, str]:
    """`cfg.rephrasings` rewrites of every document by the stage's teacher, prompts and verifier."""
    from k2core.data.rephrase import check_jobs, load_templates, new_job, rewrite
    from k2core.infer.fidelity import Verifier
    from k2core.infer.llm import open_model
    from k2core.models import raw_text_teacher, resolve_model

    rc = cfg.rephrase
    store = cfg.store.open()
    teacher = resolve_model(rc.teacher, store, default=raw_text_teacher, where="rephrase.teacher")
    if teacher is None:
        raise ExperimentError(f"no teacher: no model trained on raw text in {cfg.store.uri} (run the pipeline "
                              "once, or set rephrase.teacher.checkpoint / rephrase.teacher.engine=openai)")
    desc = teacher.describe()
    log(f"rephrase-vs-repeat: teacher {desc}; {len(docs)} documents × {cfg.rephrasings} rephrasings")
    jobs = [new_job(d, k, rc) for d in docs for k in range(cfg.rephrasings)]
    with open_model(teacher, rc.teacher, store) as llm:
        with Progress(sum(len(j["src"]) for j in jobs), "rephrase-vs-repeat: teacher chunks", unit="chunk") as bar:
            generated = rewrite(llm, jobs, rc, load_templates(rc), bar)
        per_job = check_jobs(Verifier(rc.fidelity, judge=llm), jobs)
    ok = [all(not v.reasons for v in vs) for vs in per_job]
    verdicts = [v for vs in per_job for v in vs]
    reph: dict[str, list[str]] = {d["id"]: [] for d in docs}
    with open(out_dir / "rephrasings.jsonl", "w") as f:
        for j, passes in zip(jobs, ok):
            text = "\n\n".join(j["out"])
            reph[j["doc"]["id"]].append(text)
            f.write(json.dumps({"source_id": j["doc"]["id"], "k": j["k"], "style": j["style"], "text": text,
                                "passes_fidelity": passes}) + "\n")
    sims = sorted(v.similarity for v in verdicts if v.similarity is not None)
    fid = {"rephrasings": len(jobs), "passing_fidelity": sum(ok), "chunks": len(verdicts),
           "generated_tokens": generated,
           "similarity_median": sims[len(sims) // 2] if sims else None,
           "min_similarity": rc.fidelity.min_similarity}
    return reph, fid, desc


def run(cfg: RephraseRepeatExperimentConfig, out_dir: str | Path,
        hooks: tuple[Callable[[float, float | None, str], None], ...] = (),
        log: Callable[[str], None] = print) -> dict[str, Any]:
    import pandas as pd

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    device = torch.device(cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    docs = load_documents(cfg)
    probe = build_probe(docs, cfg.probe_items, cfg.choices, cfg.seed)
    with open(out / "probe.jsonl", "w") as f:
        for it in probe:
            f.write(json.dumps(it) + "\n")
    reph, fidelity, teacher = rephrase_documents(cfg, docs, out, log)
    streams = arm_streams(docs, reph, cfg)
    steps = max(1, len(streams["raw"]) // (cfg.batch * cfg.seq))
    budget = steps * cfg.batch * cfg.seq
    log(f"rephrase-vs-repeat: {steps} steps ({budget:,} byte tokens) per arm; {len(probe)} cloze questions")
    arms, metrics = {}, []
    with Progress(3 * steps, "rephrase-vs-repeat: training", unit="step", hooks=hooks) as bar:
        for name, label in ARMS:
            model, losses = train_arm(cfg, streams[name], steps, device, bar)
            acc, right = probe_accuracy(model, probe, device)
            arms[name] = {"label": label.format(epochs=_n(cfg.epochs, "epoch"),
                                                rephrasings=_n(cfg.rephrasings, "rephrasing")),
                          "accuracy": acc, "correct": sum(right), "stream_tokens": len(streams[name]),
                          "passes_over_stream": round(budget / max(1, len(streams[name])), 2),
                          "final_loss": sum(losses[-10:]) / len(losses[-10:])}
            metrics += [{"arm": name, "step": i, "loss": v} for i, v in enumerate(losses)]
            log(f"rephrase-vs-repeat: {arms[name]['label']}: accuracy {acc:.3f} ({sum(right)}/{len(probe)})")
    pd.DataFrame(metrics).to_parquet(out / "metrics.parquet")
    summary = {"teacher": teacher, "documents": len(docs), "probe_items": len(probe), "choices": cfg.choices,
               "chance": 1 / cfg.choices, "steps": steps, "budget_tokens": budget, "arms": arms,
               "fidelity": fidelity, "device": str(device), "seconds": round(time.time() - t0, 1),
               "config": cfg.model_dump(mode="json")}
    plot(summary, metrics, out)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "report.md").write_text(markdown(summary, {"accuracy": "accuracy.png", "loss": "loss.png"}))
    return summary


# ---------------------------------------------------------------------------- report
def plot(summary: dict[str, Any], metrics: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, _ in ARMS]
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    accs = [summary["arms"][n]["accuracy"] for n in names]
    ax.bar([summary["arms"][n]["label"] for n in names], accs, color=["tab:gray", "tab:blue", "tab:green"])
    ax.axhline(summary["chance"], color="tab:red", ls="--", label=f"chance {summary['chance']:.2f}")
    for i, a in enumerate(accs):
        ax.text(i, a, f"{a:.3f}", ha="center", va="bottom")
    ax.set(ylabel="cloze accuracy", ylim=(0, 1), title=f"Knowledge recall (teacher {summary['teacher']})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "accuracy.png")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    for n in names:
        ys = [m["loss"] for m in metrics if m["arm"] == n]
        ax.plot(range(len(ys)), ys, label=summary["arms"][n]["label"])
    ax.set(xlabel="step", ylabel="training loss (nats / byte)", title="Training loss, same token budget")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss.png")
    plt.close(fig)


def markdown(summary: dict[str, Any], images: dict[str, str]) -> str:
    f = summary["fidelity"]
    lines = [
        "# Rephrase vs repeat",
        "",
        f"Teacher: **{summary['teacher']}**. {summary['documents']} documents; every arm trains "
        f"{summary['steps']} steps = {summary['budget_tokens']:,} byte tokens from the same initialisation.",
        "",
        "| arm | cloze accuracy | correct | stream tokens | passes over its stream | final loss |",
        "|---|---|---|---|---|---|",
    ]
    for a in summary["arms"].values():
        lines.append(f"| {a['label']} | {a['accuracy']:.3f} | {a['correct']}/{summary['probe_items']} | "
                     f"{a['stream_tokens']:,} | {a['passes_over_stream']} | {a['final_loss']:.3f} |")
    lines += [
        "",
        f"Chance: {summary['chance']:.3f} ({summary['choices']} options). The questions keep the raw "
        "documents' wording, which favours the raw arm.",
        "",
        f"Teacher fidelity: {f['passing_fidelity']} of {f['rephrasings']} rephrasings pass the rephrase stage's "
        f"checks; median chunk similarity {f['similarity_median'] if f['similarity_median'] is None else round(f['similarity_median'], 3)} "
        f"(threshold {f['min_similarity']}); {f['generated_tokens']:,} tokens generated. All rephrasings are "
        "used, as the ablation trains on what the teacher wrote.",
        "",
        f"![accuracy]({images['accuracy']})",
        "",
        f"![loss]({images['loss']})",
        "",
    ]
    return "\n".join(lines)
