"""The `sft` stage: the pretrain model fine-tuned on the `synthesize` stage's train-split
trajectories (plus optional OpenAI-messages JSONL files) in K2's chat format, through the shared
training loop (k2core/train/loop.py: MuonClip + QK-Clip, clipping, resumable checkpoints, compile
and bf16 on GPU, torchrun data parallel with ``sft.nproc``; the loss is the per-token mean over the
global batch's assistant tokens however the rows fall into micro-batches and ranks).

- Loss on assistant tokens only; whole conversations packed into rows of ``seq_len`` tokens with
  attention confined to each (k2core/train/sft_data.py); untrainable or too-long conversations are
  dropped with their reason, never cut.
- Metrics, each for the input model and the fine-tuned one in the same report: held-out loss (the
  held-out split's trajectories), and on held-out assistant turns that call tools, through the
  native engine: tool-name accuracy, arguments that parse and validate against the schema, exact
  argument match; and task success when the model is the agent in the executable domains (the
  state-hash verdict, scenario-rendered user).
- Export: a Hugging Face checkpoint with the tokenizer and its chat template (``model/``).
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from k2core.errors import K2Error
from k2core.stage import StageContext
from k2core.train.loop import Trainer, TrainingFailed, pick_device, train_job
from k2core.train.pretrain import resume_dir, wsd_lr
from k2core.train.sft_data import REASONS, encode, pack


def read_user_data(uris: list[str]) -> list[tuple[list[dict[str, Any]], list[dict[str, Any]] | None]]:
    """OpenAI-messages JSONL ({"messages": [...], "tools": [...]} per line), local files."""
    out = []
    for uri in uris:
        for i, line in enumerate(Path(uri).expanduser().read_text().splitlines()):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                out.append((rec["messages"], rec.get("tools")))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise K2Error(f"sft.data_files: {uri} line {i + 1}: not a {{'messages': [...]}} record ({e})") from None
    return out


# ---------------------------------------------------------------------------- metrics
def call_turns(rows: list[dict[str, Any]], n: int, seed: int) -> list[tuple[list, list, dict]]:
    """Up to `n` held-out assistant turns that call tools: (conversation before it, tools, the turn)."""
    turns = [(r["messages"][:i], r["tools"], m) for r in rows for i, m in enumerate(r["messages"])
             if m["role"] == "assistant" and m.get("tool_calls")]
    random.Random(seed).shuffle(turns)
    return turns[:n]


def call_metrics(llm, turns, max_tokens: int, samples: list | None = None) -> dict[str, float | None]:
    """Greedy answers to held-out call turns: the first call's tool name right, every call's arguments
    valid against its schema, all calls exact (names and argument values). With `samples`, each
    turn's gold calls and the model's answer are appended to it (the report shows what went wrong)."""
    import jsonschema

    from k2core.infer.llm import TextParams
    from k2core.text import chat

    if not turns:
        return {"turns": 0, "tool_name_accuracy": None, "args_valid": None, "exact_call": None}
    prompts = [chat.render(prefix, tools, add_generation_prompt=True) for prefix, tools, _ in turns]
    fit = [llm.fits(p, max_tokens) for p in prompts]
    outs = iter(llm.generate([p for p, ok in zip(prompts, fit) if ok],
                             TextParams(max_tokens=max_tokens, temperature=0.0, stop=chat.STOP, keep_special=True),
                             progress=False))
    name_ok = valid = exact = 0
    for (prefix, tools, gold), ok in zip(turns, fit):
        if not ok:                 # scored as a miss: the prompt leaves no room for the answer
            if samples is not None:
                samples.append({**_sample(prefix, gold), "answer": None, "exact": False,
                                "note": f"prompt + {max_tokens} tokens exceed the model's context"})
            continue
        text = next(outs).text
        got = chat.parse(text).get("tool_calls") or []
        want = gold["tool_calls"]
        schemas = {t["function"]["name"]: t["function"].get("parameters") or {} for t in tools}
        if got and got[0]["function"]["name"] == want[0]["function"]["name"]:
            name_ok += 1
        args = [chat.arguments_of(c)[0] for c in got]
        good = bool(got) and all(a is not None and c["function"]["name"] in schemas for a, c in zip(args, got))
        if good:
            try:
                for a, c in zip(args, got):
                    jsonschema.validate(a, schemas[c["function"]["name"]])
            except jsonschema.ValidationError:
                good = False
        valid += good
        hit = [(c["function"]["name"], a) for c, a in zip(got, args)] == \
            [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in want]
        exact += hit
        if samples is not None:
            samples.append({**_sample(prefix, gold), "answer": text[:500], "exact": bool(hit)})
    n = len(turns)
    return {"turns": n, "tool_name_accuracy": round(name_ok / n, 4), "args_valid": round(valid / n, 4),
            "exact_call": round(exact / n, 4)}


def _sample(prefix: list[dict], gold: dict) -> dict[str, Any]:
    return {"last_message": str(prefix[-1].get("content", ""))[:300],
            "gold": [f"{c['function']['name']}({c['function']['arguments']})" for c in gold["tool_calls"]]}


def task_success(llm, syn_art, heldout_ids: set[str], n: int, max_turns: int, max_tokens: int, seed: int) -> dict:
    """The model as the agent on `n` held-out executable-domain tasks, greedy, once each: state-hash verdicts."""
    from k2core.eval.agentic import attempts

    got = attempts(llm, syn_art, heldout_ids, n, 1, max_turns, max_tokens, 0.0, seed)
    if not got:
        return {"tasks": 0, "task_success": None}
    return {"tasks": len(got), "task_success": round(sum(t["successes"][0] for t in got) / len(got), 4)}


def evaluate(checkpoint: Path, cfg, turns, syn_art, heldout_ids, domain_turns=None, probes=None,
             samples: list | None = None) -> dict[str, Any]:
    """Held-out tool use of the model in `checkpoint`: call metrics, task success, the held-out
    domain's call metrics (``domain_*``) and the context probe (``probe_*``) when given; the
    answers to the held-out call turns appended to `samples`."""
    from k2core.infer.llm import NativeLLM
    from k2core.train import probe as P

    with NativeLLM(checkpoint, device="cuda" if torch.cuda.is_available() and cfg.device != "cpu" else "cpu") as llm:
        out = call_metrics(llm, turns, cfg.eval_max_tokens, samples)
        out.update(task_success(llm, syn_art, heldout_ids, cfg.eval_tasks, cfg.eval_max_turns, cfg.eval_max_tokens,
                                cfg.seed))
        if domain_turns:
            out.update({f"domain_{k}": v for k, v in call_metrics(llm, domain_turns, cfg.eval_max_tokens).items()})
        if probes is not None:
            model = llm.engine.model
            with torch.no_grad():
                out.update(P.run(P.model_logits(model, next(model.parameters()).device), probes))
    return out


# ---------------------------------------------------------------------------- the stage
ENTRY = "k2core.train.sft:train_worker"          # what each torchrun rank runs


def save_rows(packed, path: Path) -> None:
    """Packed rows as one .npz (torchrun workers read it; int32: ids, labels, segment ids)."""
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **{k: np.asarray(getattr(packed, k), dtype=np.int32).reshape(-1, len(packed.input_ids[0]))
                     for k in ("input_ids", "labels", "segment_ids")},
             prefix_lens=np.asarray(packed.prefix_lens or [0] * len(packed.input_ids), dtype=np.int32))
    tmp.replace(path)


def make_job(cfg, base_dir: Path, workdir: Path, packed, val_packed, resume: Path) -> dict[str, Any]:
    """What `train_worker` runs on (in this process or each torchrun rank): the config, the base
    model, the packed train / held-out rows written to `workdir`, the resume directory."""
    save_rows(packed, workdir / "rows.npz")
    save_rows(val_packed, workdir / "val_rows.npz")
    return {"cfg": cfg.model_dump(mode="json"), "base": str(base_dir), "workdir": str(workdir),
            "train_rows": str(workdir / "rows.npz"), "val_rows": str(workdir / "val_rows.npz"), "resume": str(resume)}


def export_model(model, base_dir: Path, dest: Path) -> None:
    """A Hugging Face checkpoint of `model` with the input model's tokenizer and chat template."""
    from k2core.model.checkpoint import save_checkpoint

    save_checkpoint(model, dest)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(base_dir / f, dest / f)


class Rows:
    """Packed rows as model arguments; micro-batch k is a pure function of k (resume = step). Under
    torchrun every rank builds the same micro-batch and the loop hands each its share of the rows."""

    def __init__(self, arrays, micro: int, seed: int, world: int = 1):
        self.ids, self.labels, self.seg = (torch.from_numpy(np.asarray(arrays[k], dtype=np.int64))
                                           for k in ("input_ids", "labels", "segment_ids"))
        plens = arrays["prefix_lens"] if "prefix_lens" in arrays else None
        self.plens = torch.from_numpy(np.asarray(plens, dtype=np.int64)) if plens is not None and len(plens) \
            and np.asarray(plens).any() else None
        self.micro, self.seed = micro, seed
        if len(self.ids) < micro:
            raise TrainingFailed(f"sft: {len(self.ids)} packed rows, fewer than one micro-batch ({micro}); "
                                 "lower sft.micro_batch or add data")
        if micro % world:
            raise TrainingFailed(f"sft.micro_batch = {micro} must divide by the {world} processes")

    def batch(self, index: int) -> dict[str, torch.Tensor]:
        per_epoch = len(self.ids) // self.micro
        epoch, k = divmod(index, per_epoch)
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.ids))
        idx = torch.from_numpy(np.sort(perm[k * self.micro:(k + 1) * self.micro]))
        out = {"input_ids": self.ids[idx], "labels": self.labels[idx], "segment_ids": self.seg[idx]}
        if self.plens is not None:
            out["prefix_lens"] = self.plens[idx]
        return out


def train_worker(job: dict[str, Any], log, progress) -> dict[str, Any]:
    """Fine-tuning in this process: single, or one rank of a torchrun job (rank 0 exports the model,
    the telemetry and ``summary.json``)."""
    from k2core.config import SFTConfig
    from k2core.model.checkpoint import load_checkpoint
    from k2core.train.loop import dist_info

    cfg = SFTConfig.model_validate(job["cfg"])
    rank, world = dist_info()
    wd, base_dir = Path(job["workdir"]), Path(job["base"])
    rows = Rows(np.load(job["train_rows"]), cfg.micro_batch, cfg.seed, world)
    val_rows = Rows(np.load(job["val_rows"]), 1, cfg.seed)
    device = pick_device(cfg.device, world)
    torch.manual_seed(cfg.seed)
    model = load_checkpoint(base_dir, device=device, dtype=torch.float32).train()
    trainer = Trainer(cfg, model, device, name="sft", resume_dir=Path(job["resume"]), log=log, progress=progress,
                      progress_file=wd / "progress.json")
    val = [{k: v.to(device) for k, v in val_rows.batch(i).items()} for i in range(min(cfg.eval_batches, len(val_rows.ids)))]
    result = trainer.fit(rows.batch, val, lambda step: wsd_lr(step, cfg), tokens_per_step=cfg.micro_batch *
                         cfg.grad_accum * len(rows.ids[0]), seq_len=len(rows.ids[0]))
    if rank != 0:
        return {}
    export_model(model.eval(), base_dir, wd / "model")
    trainer.checkpointer.clear()
    import pandas as pd

    pd.DataFrame(result.telemetry).to_parquet(wd / "telemetry.parquet")
    out = {"final_val_loss": result.final_val_loss}
    (wd / "summary.json").write_text(json.dumps(out))
    return out


def run(ctx: StageContext) -> dict[str, Any]:
    import pandas as pd
    from tokenizers import Tokenizer

    from k2core.agentic.synthesize import read_trajectories
    from k2core.models import model_dir
    from k2core.text.special_tokens import IM_USER, PAD

    cfg = ctx.cfg
    wd = ctx.workdir
    base_dir = model_dir(ctx.inputs["pretrain"])
    syn = ctx.inputs["synthesize"]
    train_rows, held_rows = read_trajectories(syn, "train"), read_trajectories(syn, "heldout")
    dom = cfg.heldout_domain
    if dom is not None:
        from k2core.agentic.domains import DOMAINS

        if dom not in DOMAINS:
            raise K2Error(f"sft.heldout_domain = {dom!r}: not an executable domain; domains: {', '.join(DOMAINS)}")
    dom_rows = [r for r in train_rows + held_rows if r.get("domain") == dom] if dom else []
    if dom:
        if not dom_rows:
            raise TrainingFailed(f"sft.heldout_domain = {dom!r}: synthesize made no {dom} trajectory "
                                 f"(synthesize.domains); unset sft.heldout_domain or add the domain")
        train_rows = [r for r in train_rows if r.get("domain") != dom]
        held_rows = [r for r in held_rows if r.get("domain") != dom]
    heldout_ids = {r["task_id"] for r in held_rows}
    leaked = sorted({r["task_id"] for r in train_rows} & heldout_ids)
    convs = [(r["messages"], r["tools"]) for r in train_rows] + read_user_data(cfg.data_files)
    tok = Tokenizer.from_file(str(base_dir / "tokenizer.json"))
    kept, dropped = encode(tok, convs, cfg.seq_len)
    val_kept, val_dropped = encode(tok, [(r["messages"], r["tools"]) for r in held_rows], cfg.seq_len)
    if not kept:
        raise TrainingFailed(f"sft: no trainable conversation among {len(convs)} ({len(dropped)} dropped: "
                             f"{sorted({d['reason'] for d in dropped})})")
    if not val_kept:
        raise TrainingFailed("sft: no held-out trajectory to measure the held-out loss on")
    pad, user = tok.token_to_id(PAD), tok.token_to_id(IM_USER)
    packed = pack(kept, cfg.seq_len, pad, cfg.share_prefix, user)
    val_packed = pack(val_kept, cfg.seq_len, pad, cfg.share_prefix, user)
    (wd / "rejects").mkdir()
    pd.DataFrame(dropped or [], columns=["index", "reason", "detail"]).to_parquet(wd / "rejects" / "dropped.parquet")
    job = make_job(cfg, base_dir, wd, packed, val_packed, resume_dir(ctx))
    result = train_job(ENTRY, job, wd, cfg.nproc, cfg.steps, "sft", ctx.log, ctx.progress)
    for f in ("rows.npz", "val_rows.npz", "progress.json", "summary.json"):
        (wd / f).unlink(missing_ok=True)
    df = pd.read_parquet(wd / "telemetry.parquet")
    turns = call_turns(held_rows, cfg.eval_turns, cfg.seed)
    domain_turns = call_turns(dom_rows, cfg.eval_turns, cfg.seed) if dom else None
    probes = conversation_probe(cfg, tok, val_kept, ctx.log)
    samples: dict[str, list] = {"before": [], "after": []}
    before = evaluate(base_dir, cfg, turns, syn, heldout_ids, domain_turns, probes, samples["before"])
    after = evaluate(wd / "model", cfg, turns, syn, heldout_ids, domain_turns, probes, samples["after"])
    context = max(base_context(base_dir), max(len(e.ids) for e in kept))
    from k2core.train.pretrain import set_model_max_length

    set_model_max_length(wd / "model", context)
    vals = df.val_loss.dropna()
    initial_val, final_val = float(vals.iloc[0]), result["final_val_loss"]
    plot(df, final_val, before, after, wd / "sft.png")
    trained_tokens = sum(sum(e.mask) for e in kept)
    computed = int((np.asarray(packed.segment_ids) != -1).sum())      # tokens the forward runs on (no padding)
    metrics = {
        "conversations": len(convs), "trained_conversations": len(kept), "dropped": len(dropped),
        **{f"dropped_{r}": sum(d["reason"] == r for d in dropped) for r in REASONS},
        "heldout_conversations": len(val_kept), "heldout_dropped": len(val_dropped), "packed_rows": len(packed.input_ids),
        "packing_fill": round(computed / (len(packed.input_ids) * cfg.seq_len), 4),
        "shared_prefix_rows": sum(1 for n in packed.prefix_lens if n),
        "tokens_per_computed_token": round(packed.represented_tokens / computed, 3),
        "trained_tokens": trained_tokens, "steps": len(df), "processes": cfg.nproc, "initial_loss": float(df.loss.iloc[0]),
        "final_loss": float(df.loss.iloc[-5:].mean()), "initial_val_loss": initial_val,
        "final_val_loss": final_val, "val_loss_drop": initial_val - final_val,
        "nan_steps": int((~np.isfinite(df.loss)).sum()), "heldout_in_train": len(leaked),
        "tokens_per_s_median": float(df.tokens_per_s.median()), "base": f"pretrain/{ctx.inputs['pretrain'].version}",
        **{f"before_{k}": v for k, v in before.items()}, **{f"after_{k}": v for k, v in after.items()},
        "metrics_computed": int(before.get("turns", 0) > 0 and after.get("turns", 0) > 0),
        "heldout_domain": dom or "", "trained_context": context,
    }
    (wd / "report.json").write_text(json.dumps({"before": before, "after": after, "samples": samples,
                                                "dropped": dropped[:200]}, indent=1, ensure_ascii=False))
    return metrics


def conversation_probe(cfg, tok, val_kept, log):
    """The context probe over the held-out conversations' tokens (None when off or not buildable)."""
    from k2core.text.special_tokens import SPECIAL_TOKENS
    from k2core.train import probe as P

    if not cfg.probe.enabled:
        return None
    stream = np.asarray([t for e in val_kept for t in e.ids])
    try:
        return P.build(stream, cfg.probe, tok.get_vocab_size(), len(SPECIAL_TOKENS),
                       "the held-out conversations (set sft.probe.length lower, or sft.probe.enabled=false)")
    except K2Error as e:
        log(f"sft: context probe skipped: {e}")
        return None


def base_context(model_dir: Path) -> int:
    """The context the input model states it was trained for (0 when it states none)."""
    try:
        return int(json.loads((model_dir / "tokenizer_config.json").read_text()).get("model_max_length") or 0)
    except (OSError, ValueError):
        return 0


def plot(df, final_val: float, before: dict, after: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(14, 4.5), dpi=110)
    a.plot(df.step, df.loss, lw=0.8, label="train (assistant tokens)")
    v = df.dropna(subset=["val_loss"])
    a.plot([*v.step, len(df)], [*v.val_loss, final_val], "o-", ms=3, label="held-out")
    a.set(xlabel="step", ylabel="loss (nats / token)", title="SFT loss")
    a.legend()
    keys = ["tool_name_accuracy", "args_valid", "exact_call", "task_success",
            *(k for k in ("domain_tool_name_accuracy", "domain_exact_call", "probe_copy_accuracy") if k in before)]
    x = np.arange(len(keys))
    for off, vals, label in ((-0.2, before, "input model"), (0.2, after, "after SFT")):
        ys = [vals.get(k) or 0 for k in keys]
        b.bar(x + off, ys, 0.4, label=label)
        for xi, y, k in zip(x, ys, keys):        # the values written out: a 0 is a result, not a missing bar
            b.text(xi + off, y + 0.02, "n/a" if vals.get(k) is None else f"{y:.2f}", ha="center", fontsize=8)
    b.set_xticks(x, keys, rotation=15)
    b.set(ylim=(0, 1), title="Held-out tool use (native engine, greedy); domain_*: a domain never trained on")
    b.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
