"""The `rl` stage: the sft model trained on the verifiable-rewards gym with K1.5's loss, through the
shared loop — an RL step is `Trainer.train_step` (micro-batches, clipping, MuonClip + QK-Clip, the
routing-bias update, resumable checkpoints) with `K15Objective` instead of the language-model loss,
and its batch source (`Rollouts`) samples the responses.

An iteration (``updates_per_iteration`` optimizer steps on the same rollouts):
  1. the rollout model gets the policy's weights (the engine interface: the native engine over a
     copy of the policy, as vLLM would load new weights each iteration);
  2. every ``eval_every`` steps, held-out prompts (seeds never trained on) are answered greedily
     and scored: the held-out reward curve, starting with the input model's;
  3. per task type ``prompts_per_task`` prompts, K = ``samples`` responses each at the iteration's
     temperature (``temperature_start`` → ``temperature_end``), each within its task's token budget;
     a response cut at its budget gets ``truncation_reward`` (budget control);
  4. groups whose K rewards are all equal carry no signal (their advantages are 0 — for 0/1
     rewards, prompts the policy always or never solves: K1.5's difficulty filter); up to
     ``max_draws`` prompt draws are made while no group has spread;
  5. log π_old(y|x) from the training model's forward before the update (the engine's own sampling
     log-probs are compared with it: ``engine_logprob_gap``), log π_start for the log-ratio to the
     input model;
  6. the step minimises mean_i (r_i − r̄ − τ·log(π_θ/π_old))² + ptx_weight · LM loss on the
     synthesize train trajectories (assistant tokens; PTX).

A micro-batch holds B sampled responses with their prompts:
    input_ids [B, T]       prompt + response, right-padded
    response_mask [B, T]   1 on response tokens (what log π(y|x) sums over)
    logp_old [B]           Σ log π_old(y|x)
    advantage [B]          r − r̄ over the K responses to the same prompt
    weight [B] (optional)  1 for a response, 0 for a filler row (a step without an informative group)
    ptx_ids / ptx_labels / ptx_segment_ids (optional)  a packed row of the PTX set
"""
from __future__ import annotations

import copy
import json
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from k2core.rl.loss import advantages, budget_penalty, k15_terms, length_penalty, response_logprobs, temperature
from k2core.train.loop import Batch, Objective


class K15Objective(Objective):
    """mean_i (adv_i − τ·(log π_θ(y_i|x) − log π_old(y_i|x)))² + ptx_weight · LM loss on ``ptx_ids``;
    units = responses, so a step's loss is the mean over every response of the global batch."""

    def __init__(self, tau: float, ptx_weight: float = 0.0):
        self.tau, self.ptx_weight = tau, ptx_weight

    def loss(self, net, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        out = net(batch["input_ids"], want_max_logits=True)
        logp = response_logprobs(out.logits, batch["input_ids"], batch["response_mask"])
        terms = k15_terms(logp, batch["logp_old"].to(logp.dtype), batch["advantage"].to(logp.dtype), self.tau)
        if "weight" in batch:
            w = batch["weight"].to(terms.dtype)
            loss = (terms * w).sum() / w.sum().clamp(min=1.0)
        else:
            loss = terms.mean()
        max_logits = out.max_logits
        if self.ptx_weight and "ptx_ids" in batch:
            ptx = net(batch["ptx_ids"], labels=batch.get("ptx_labels", batch["ptx_ids"]),
                      segment_ids=batch.get("ptx_segment_ids"), want_max_logits=True)
            loss = loss + self.ptx_weight * ptx.loss
            max_logits = torch.maximum(max_logits, ptx.max_logits)
        return loss, max_logits

    def units(self, batch: Batch) -> torch.Tensor:
        if "weight" in batch:
            return batch["weight"].sum()
        return torch.tensor(batch["input_ids"].shape[0])


# ---------------------------------------------------------------------------- the batch source
HELDOUT_SEED = 1_000_003          # held-out prompts: seeds no training iteration uses (those are < 10^6)
PAD_TO = 64                       # sequence lengths rounded up: fewer shapes for torch.compile


def _seed(*parts: Any) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode()) % 999_983


@dataclass
class Episodic:
    """One multi-turn rollout as the loop trains on it: the conversation's ids, its loss mask
    (assistant-written tokens), finish ("length": cut at the turn limit or the context), verdict."""
    token_ids: list[int]
    mask: list[int]
    finish_reason: str
    verdict: Any
    logprobs: None = None


def _gen_len(x) -> int:
    """Generated tokens of a response (an episode: its assistant-written tokens)."""
    return sum(x.mask) if isinstance(x, Episodic) else len(x.token_ids)


def _row_tokens(row: tuple[list[int], Any]) -> int:
    r, p = row
    return len(r) - p if isinstance(p, int) else sum(p)


class Rollouts:
    """RL's batch source for `Trainer.fit`: micro-batch k of step k // grad_accum, rollouts made
    when a new iteration begins (a pure function of the policy's weights and the step: exact resume
    from a checkpoint at an iteration boundary); `stats(step)` are that step's telemetry columns."""

    def __init__(self, cfg, policy, start_policy, tokenizer, envs: dict, heldout: dict, ptx, device, log):
        from k2core.infer import Engine
        from k2core.text.special_tokens import IM_END, PAD

        self.cfg, self.policy, self.start, self.tok, self.envs = cfg, policy, start_policy, tokenizer, envs
        self.heldout, self.ptx, self.device, self.log = heldout, ptx, device, log
        self.heldout_prompts = {p.prompt for ps in heldout.values() for p in ps}
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        self.engine = Engine(copy.deepcopy(policy).to(dtype))
        self.stop = [tokenizer.token_to_id(IM_END)]
        self.pad = tokenizer.token_to_id(PAD) or 0
        from k2core.train.loop import autocast

        self.amp = autocast(device)
        self._it: int | None = None
        self._micro: list[Batch] = []
        self._stats: dict[str, Any] = {}
        self.samples: list[dict[str, Any]] = []          # a few responses per iteration, for the report
        self._llm = None                                 # the LLM interface over the engine (episodes)
        self.heldout_skipped = 0                         # generated train prompts equal to a held-out one
        self.heldout_trained = 0                         # held-out prompts among the trained groups (must stay 0)

    # ------------------------------------------------------------------ generation
    def _prompt_ids(self, problems) -> list[list[int]]:
        from k2core.text import chat

        return [chat.encode(self.tok, [{"role": "user", "content": p.prompt}], add_generation_prompt=True)[0]
                for p in problems]

    def _generate(self, task: str, problems, k: int, temp: float, seed: int | None):
        from k2core.infer import SamplingParams
        from k2core.text import chat

        env = self.envs[task]
        budget = self.cfg.max_tokens.get(task, env.max_tokens)
        if getattr(env, "episodic", False):
            return self._episodes(env, problems, k, budget, temp, seed)
        ids = [x for x in self._prompt_ids(problems) for _ in range(k)]
        params = SamplingParams(max_tokens=budget, temperature=temp, top_p=self.cfg.top_p if temp else 1.0,
                                stop_token_ids=self.stop, seed=seed, logprobs=True)
        gens = self.engine.generate(ids, params, progress=False)
        texts = [chat.parse(self.tok.decode([t for t in g.token_ids if t not in self.stop],
                                            skip_special_tokens=False)).get("content") or "" for g in gens]
        return ids, gens, texts

    def _episodes(self, env, problems, k: int, budget: int, temp: float, seed: int | None):
        """Multi-turn rollouts (the tool-use environment): each episode re-encoded in K2's chat
        format, trained on every assistant-written token (its loss mask)."""
        from k2core.infer.llm import NativeLLM, TextParams
        from k2core.text import chat

        if self._llm is None:
            self._llm = NativeLLM.over(self.engine, self.tok)
        eps = env.rollout(self._llm, problems, k, TextParams(max_tokens=budget, temperature=temp,
                                                              top_p=self.cfg.top_p if temp else 1.0, seed=seed))
        gens, texts = [], []
        for e in eps:
            ids, mask = chat.encode(self.tok, e["messages"], e["tools"])
            gens.append(Episodic(ids, mask, "length" if e["cut"] else "stop", e["verdict"]))
            texts.append(next((m.get("content") or "" for m in reversed(e["messages"]) if m["role"] == "assistant"), ""))
        return [[] for _ in eps], gens, texts

    def _score(self, task: str, problems, texts: list[str], k: int, gens=None) -> list:
        if gens and isinstance(gens[0], Episodic):
            return [g.verdict for g in gens]
        return self.envs[task].score([p for p in problems for _ in range(k)], texts)

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Greedy answers to the held-out prompts with the current weights: reward and pass rate per task."""
        self._sync()
        out: dict[str, Any] = {}
        total = []
        for task, problems in self.heldout.items():
            _, gens, texts = self._generate(task, problems, 1, 0.0, None)
            verdicts = self._score(task, problems, texts, 1, gens)
            rewards = budget_penalty([v.reward for v in verdicts], [g.finish_reason == "length" for g in gens],
                                     self.cfg.truncation_reward)
            out[f"heldout_reward_{task}"] = float(np.mean(rewards))
            out[f"heldout_pass_{task}"] = float(np.mean([v.reward >= 1.0 for v in verdicts]))
            total += rewards
        out["heldout_reward"] = float(np.mean(total))
        return out

    def _sync(self) -> None:
        """The rollout engine's model gets the policy's current weights (copied in place)."""
        self.engine.model.load_state_dict(self.policy.state_dict())

    # ------------------------------------------------------------------ an iteration
    def _logprobs(self, model, rows: list[tuple[list[int], int]]) -> torch.Tensor:
        """Σ log p of each row's response tokens under `model` (eval mode, the training autocast)."""
        out = []
        was = model.training
        model.eval()
        with torch.no_grad(), self.amp:
            for i in range(0, len(rows), 16):
                ids, mask = self._pad(rows[i:i + 16])
                out.append(response_logprobs(model(ids).logits, ids, mask).float().cpu())
        model.train(was)
        return torch.cat(out) if out else torch.zeros(0)

    def _pad(self, rows: list[tuple[list[int], Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        T = -(-max(len(r) for r, _ in rows) // PAD_TO) * PAD_TO
        ids = torch.full((len(rows), T), self.pad, dtype=torch.long)
        mask = torch.zeros(len(rows), T, dtype=torch.long)
        for i, (r, p) in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
            if isinstance(p, int):
                mask[i, p:len(r)] = 1          # a response after its prompt
            else:
                mask[i, :len(r)] = torch.tensor(p)  # an episode: its assistant-written tokens
        return ids.to(self.device), mask.to(self.device)

    def _iterate(self, step: int) -> None:
        cfg = self.cfg
        it = step // cfg.updates_per_iteration
        t0 = time.perf_counter()
        stats: dict[str, Any] = {"iteration": it}
        if step % cfg.eval_every == 0:
            stats.update(self.evaluate())
        else:
            self._sync()
        t_eval = time.perf_counter() - t0
        temp = temperature(it, cfg.steps // cfg.updates_per_iteration, cfg.temperature_start, cfg.temperature_end,
                           cfg.temperature_shape)       # per iteration: the last one samples at the end temperature
        stats["temperature"] = temp
        groups: list[dict[str, Any]] = []
        k = cfg.samples
        t_gen = t_score = 0.0
        per_task: dict[str, list] = {t: [] for t in self.envs}
        draws = 0
        for draw in range(cfg.max_draws):
            draws += 1
            for ti, (task, env) in enumerate(self.envs.items()):
                drawn = env.generate(_seed(cfg.seed, it, draw, task), cfg.prompts_per_task, cfg.difficulty.get(task, 1))
                problems = [p for p in drawn if p.prompt not in self.heldout_prompts]
                self.heldout_skipped += len(drawn) - len(problems)
                if not problems:
                    continue
                g0 = time.perf_counter()
                ids, gens, texts = self._generate(task, problems, k, temp, _seed(cfg.seed, it, draw, task, "sample"))
                g1 = time.perf_counter()
                verdicts = self._score(task, problems, texts, k, gens)
                t_gen, t_score = t_gen + g1 - g0, t_score + time.perf_counter() - g1
                for j, p in enumerate(problems):
                    sl = slice(j * k, (j + 1) * k)
                    gs, vs = gens[sl], verdicts[sl]
                    cut = [g.finish_reason == "length" for g in gs]
                    raw = [v.reward for v in vs]
                    rewards = budget_penalty(raw, cut, cfg.truncation_reward)
                    if cfg.length_penalty and step >= cfg.length_penalty_warmup:
                        bonus = length_penalty([_gen_len(g) for g in gs], [r >= 1.0 for r in raw])
                        rewards = [r + cfg.length_penalty * b for r, b in zip(rewards, bonus)]
                    group = {"task": task, "problem": p, "prompt_ids": ids[j * k], "gens": gs, "texts": texts[sl],
                             "rewards": rewards, "raw": raw, "cut": cut, "reasons": [v.reason for v in vs]}
                    groups.append(group)
                    per_task[task].append(group)
            if any(max(g["rewards"]) > min(g["rewards"]) for g in groups):
                break
        informative = [g for g in groups if max(g["rewards"]) > min(g["rewards"])]
        # telemetry per task (train prompts), TRL's names where they exist
        for task, gs in per_task.items():
            if not gs:
                continue
            stats[f"reward_{task}"] = float(np.mean([r for g in gs for r in g["rewards"]]))
            stats[f"pass_{task}"] = float(np.mean([r >= 1.0 for g in gs for r in g["raw"]]))
            stats[f"length_{task}"] = float(np.mean([_gen_len(x) for g in gs for x in g["gens"]]))
            stats[f"truncated_{task}"] = float(np.mean([c for g in gs for c in g["cut"]]))
        stats["reward"] = float(np.mean([r for g in groups for r in g["rewards"]]))
        stats["completions/mean_length"] = float(np.mean([_gen_len(x) for g in groups for x in g["gens"]]))
        stats["completions/clipped_ratio"] = float(np.mean([c for g in groups for c in g["cut"]]))
        stats["frac_reward_zero_std"] = 1 - len(informative) / len(groups)
        stats["groups"], stats["informative_groups"], stats["draws"] = len(groups), len(informative), draws
        stats["unparsable"] = float(np.mean([r.startswith("unparsable") for g in groups for r in g["reasons"]]))
        stats["verifier_errors"] = int(sum(r.startswith(("verifier_", "sandbox_")) for g in groups for r in g["reasons"]))
        # rows to train on: every response of an informative group (a filler row, weight 0, when none)
        use = informative or groups[:1]
        self.heldout_trained += sum(g["problem"].prompt in self.heldout_prompts for g in use)
        rows, adv, weight, engine_lp = [], [], [], []
        for g in use:
            a = advantages(torch.tensor([g["rewards"]], dtype=torch.float32))[0].tolist()
            for x, ai in zip(g["gens"], a):
                rows.append((g["prompt_ids"] + x.token_ids, x.mask if isinstance(x, Episodic) else len(g["prompt_ids"])))
                adv.append(ai)
                weight.append(1.0 if informative else 0.0)
                engine_lp.append(sum(x.logprobs) if x.logprobs is not None else None)   # episodes: re-encoded
        l0 = time.perf_counter()
        logp_old = self._logprobs(self.policy, rows)
        logp_start = self._logprobs(self.start, rows)
        stats["logprob_s"] = time.perf_counter() - l0
        # how far the engine's sampling log-probs (bf16 decode on GPU) are from the training forward's
        # (single-turn responses; an episode is re-encoded from its messages, so it has none)
        has = [i for i, v in enumerate(engine_lp) if v is not None]
        n_tok = sum(_row_tokens(rows[i]) for i in has)
        stats["engine_logprob_gap"] = float((torch.tensor([engine_lp[i] for i in has]) - logp_old[has]).abs().sum()
                                            / max(n_tok, 1)) if has else float("nan")
        real = torch.tensor(weight) > 0
        stats["log_ratio_to_start"] = float((logp_old - logp_start)[real].sum() / max(1, sum(
            _row_tokens(r) for r, w in zip(rows, weight) if w))) if bool(real.any()) else 0.0
        stats.update(eval_s=t_eval, generate_s=t_gen, score_s=t_score,
                     tokens=int(sum(len(r) for r, _ in rows)) * cfg.updates_per_iteration,
                     responses=int(sum(weight)))
        # micro-batches: responses sorted by length (less padding), split over grad_accum; a part left
        # empty (fewer responses than micro-batches) gets a filler row of weight 0
        order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
        self._micro = []
        for part in np.array_split(np.array(order), cfg.grad_accum):
            part, w = (list(part), [weight[i] for i in part]) if len(part) else ([order[0]], [0.0])
            ids, mask = self._pad([rows[i] for i in part])
            self._micro.append({"input_ids": ids, "response_mask": mask, "logp_old": logp_old[part].to(self.device),
                                "advantage": torch.tensor([adv[i] for i in part], device=self.device),
                                "weight": torch.tensor(w, device=self.device)})
        self.samples += [{"iteration": it, "task": g["task"], "prompt": g["problem"].prompt, "response": g["texts"][0],
                          "reward": g["rewards"][0], "reason": g["reasons"][0]} for g in groups[:: max(1, len(groups) // 4)]]
        self._stats, self._it = stats, it

    def batch(self, index: int) -> Batch:
        cfg = self.cfg
        step, m = divmod(index, cfg.grad_accum)
        if self._it != step // cfg.updates_per_iteration:
            self._iterate(step)
        b = dict(self._micro[m])
        if self.ptx is not None and cfg.ptx_weight:
            r = index % len(self.ptx["ids"])
            b.update({f"ptx_{k}": self.ptx[k][r:r + 1].to(self.device) for k in ("ids", "labels", "segment_ids")})
        return b

    def stats(self, step: int) -> dict[str, Any]:
        out = dict(self._stats)
        if step % self.cfg.updates_per_iteration:        # a later update on the same rollouts
            out = {k: v for k, v in out.items() if not k.startswith("heldout_")}
            out.update(eval_s=0.0, generate_s=0.0, score_s=0.0, logprob_s=0.0)
        out["update"] = step % self.cfg.updates_per_iteration
        return out


# ---------------------------------------------------------------------------- the stage
def packed_rows(tok, rows: list[dict[str, Any]], seq_len: int) -> dict[str, torch.Tensor] | None:
    """Trajectories as packed rows with assistant-only labels (sft's packing): the PTX set."""
    from k2core.text.special_tokens import PAD
    from k2core.train.sft_data import encode, pack

    kept, _ = encode(tok, [(r["messages"], r["tools"]) for r in rows], seq_len)
    if not kept:
        return None
    p = pack(kept, seq_len, tok.token_to_id(PAD))
    return {"ids": torch.tensor(p.input_ids), "labels": torch.tensor(p.labels), "segment_ids": torch.tensor(p.segment_ids)}


def make_envs(cfg, synthesize=None) -> dict[str, Any]:
    from k2core.rl.gym import make

    def options(t: str) -> dict[str, Any]:
        if t == "logic" and cfg.logic_tasks:
            return {"tasks": cfg.logic_tasks}
        if t == "tools":
            return {"synthesize": synthesize, "max_turns": cfg.tool_max_turns}
        return {}
    return {t: make(t, **options(t)) for t in cfg.tasks}


def heldout_problems(cfg, envs: dict[str, Any]) -> dict[str, list]:
    """Held-out prompts per environment: seeds no iteration uses; the tool-use tasks' held-out split."""
    return {t: (env.heldout if hasattr(env, "heldout") else env.generate)(
        HELDOUT_SEED + cfg.seed, cfg.heldout_prompts, cfg.difficulty.get(t, 1)) for t, env in envs.items()}


def train(cfg, base: Path, tok, envs: dict, heldout: dict, ptx, val_rows, resume: Path, log, progress):
    """The RL loop on the model in `base`: (policy, rollouts, fit result). The stage and
    bench/rl.py both call it."""
    from k2core.model.checkpoint import load_checkpoint
    from k2core.train.loop import Trainer, pick_device
    from k2core.train.pretrain import wsd_lr

    device = pick_device(cfg.device, 1)
    torch.manual_seed(cfg.seed)
    policy = load_checkpoint(base, device=device, dtype=torch.float32).train()
    start = load_checkpoint(base, device=device, dtype=torch.float32).eval()
    val = [] if val_rows is None else [
        {"input_ids": val_rows["ids"][i:i + 1].to(device), "labels": val_rows["labels"][i:i + 1].to(device),
         "segment_ids": val_rows["segment_ids"][i:i + 1].to(device)}
        for i in range(min(cfg.eval_batches, len(val_rows["ids"])))]
    trainer = Trainer(cfg, policy, device, name="rl", resume_dir=resume, log=log, progress=progress,
                      objective=K15Objective(cfg.tau, cfg.ptx_weight))
    src = Rollouts(cfg, policy, start, tok, envs, heldout, ptx, device, log)
    log(f"rl: {cfg.steps} steps on {', '.join(envs)} ({cfg.prompts_per_task} prompts × K={cfg.samples} per task "
        f"and iteration), held-out {sum(map(len, heldout.values()))} prompts")
    result = trainer.fit(src.batch, val, lambda s: wsd_lr(s, cfg), tokens_per_step=0, seq_len=512, extra=src.stats)
    trainer.checkpointer.clear()
    return policy, src, result


def run(ctx) -> dict[str, Any]:
    import pandas as pd
    from tokenizers import Tokenizer

    from k2core.agentic.synthesize import read_trajectories
    from k2core.models import model_dir
    from k2core.train.loop import TrainingFailed
    from k2core.train.pretrain import resume_dir
    from k2core.train.sft import export_model

    cfg, wd = ctx.cfg, ctx.workdir
    base = model_dir(ctx.inputs["sft"])
    syn = ctx.inputs["synthesize"]
    tok = Tokenizer.from_file(str(base / "tokenizer.json"))
    envs = make_envs(cfg, syn)
    heldout = heldout_problems(cfg, envs)
    ptx = packed_rows(tok, read_trajectories(syn, "train"), cfg.ptx_seq_len) if cfg.ptx_weight else None
    if cfg.ptx_weight and ptx is None:
        raise TrainingFailed("rl: ptx_weight > 0 but no synthesize train trajectory fits rl.ptx_seq_len")
    val_rows = packed_rows(tok, read_trajectories(syn, "heldout"), cfg.ptx_seq_len)
    policy, src, result = train(cfg, base, tok, envs, heldout, ptx, val_rows, resume_dir(ctx), ctx.log, ctx.progress)
    val = val_rows is not None
    after = src.evaluate()
    df = pd.DataFrame(result.telemetry)
    before = {k: float(df[k].iloc[0]) for k in after if k in df}
    export_model(policy.eval(), base, wd / "model")
    df.to_parquet(wd / "telemetry.parquet")
    plot(df, before, after, list(envs), wd / "rl.png")
    (wd / "report.json").write_text(json.dumps({"before": before, "after": after, "samples": src.samples[-64:]},
                                               indent=1, default=str))
    metrics = {
        "steps": len(df), "iterations": int(df.iteration.nunique()), "tasks": ",".join(envs),
        "initial_loss": float(df.loss.iloc[0]), "final_loss": float(df.loss.iloc[-1]),
        "nan_steps": int((~np.isfinite(df.loss)).sum()),
        "final_val_loss": result.final_val_loss if val else None,
        "initial_val_loss": float(df.val_loss.dropna().iloc[0]) if val and df.val_loss.notna().any() else None,
        **{f"before_{k}": v for k, v in before.items()}, **{f"after_{k}": v for k, v in after.items()},
        "reward_gain": after["heldout_reward"] - before.get("heldout_reward", float("nan")),
        "heldout_in_train": src.heldout_trained, "heldout_duplicates_skipped": src.heldout_skipped,
        "mean_frac_reward_zero_std": float(df.frac_reward_zero_std.mean()),
        "mean_truncated": float(df["completions/clipped_ratio"].mean()),
        "engine_logprob_gap_median": float(df.engine_logprob_gap.median()),
        "final_log_ratio_to_start": float(df.log_ratio_to_start.iloc[-1]),
        "rollout_seconds": float((df.eval_s + df.generate_s + df.score_s + df.logprob_s).sum()),
        "verifier_errors": int(df.verifier_errors.sum()), "base": f"sft/{ctx.inputs['sft'].version}",
        "metrics_computed": int("heldout_reward" in before),
    }
    return metrics


def plot(df, before: dict, after: dict, tasks: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(16, 8), dpi=110)
    (a, b, c), (d, e, f) = axes
    for t in tasks:
        if f"reward_{t}" in df:
            a.plot(df.step, df[f"reward_{t}"], lw=0.8, label=f"{t} (train, sampled)")
    ev = df.dropna(subset=["heldout_reward"]) if "heldout_reward" in df else df.iloc[:0]
    a.plot([*ev.step, len(df)], [*ev.heldout_reward, after["heldout_reward"]], "ko-", ms=3, label="held-out (greedy)")
    a.set(xlabel="step", ylabel="reward", title="Reward")
    a.legend(fontsize=7)
    x = np.arange(len(tasks))
    for off, vals, label in ((-0.2, before, "input model"), (0.2, after, "after RL")):
        ys = [vals.get(f"heldout_reward_{t}", 0.0) for t in tasks]
        b.bar(x + off, ys, 0.4, label=label)
        for xi, y in zip(x, ys):
            b.text(xi + off, y + 0.01, f"{y:.2f}", ha="center", fontsize=8)
    b.set_xticks(x, tasks)
    b.set(title="Held-out reward per task (greedy)")
    b.legend(fontsize=7)
    c.plot(df.step, df["completions/mean_length"], lw=0.8, label="mean response tokens")
    c2 = c.twinx()
    c2.plot(df.step, df.temperature, "g--", lw=0.8, label="temperature")
    c2.plot(df.step, df["completions/clipped_ratio"], "r:", lw=0.8, label="truncated share")
    c.set(xlabel="step", title="Lengths, temperature, truncation")
    c.legend(loc="upper left", fontsize=7)
    c2.legend(loc="upper right", fontsize=7)
    d.plot(df.step, df.log_ratio_to_start, lw=0.8, label="log π_θ / π_start per response token")
    d.plot(df.step, df.engine_logprob_gap, lw=0.8, label="|engine − training| log-prob per token")
    d.set(xlabel="step", title="Drift from the input model")
    d.legend(fontsize=7)
    e.plot(df.step, df.max_logit, lw=0.8, label="max attention logit")
    e.plot(df.step, df.clipped_heads, lw=0.8, label="heads clipped (QK-Clip)")
    e.set(xlabel="step", title="MuonClip")
    e.legend(fontsize=7)
    rollout = df.eval_s + df.generate_s + df.score_s + df.logprob_s
    f.bar(df.step, rollout, label="rollout (eval, generate, score, log-probs)")
    f.bar(df.step, (df.step_s - rollout).clip(lower=0), bottom=rollout, label="update")
    f.set(xlabel="step", ylabel="seconds", title="Seconds per step")
    f.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
