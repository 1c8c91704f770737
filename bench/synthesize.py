"""Agentic synthesis throughput (issue 20). Prints one JSON line, then tables.

    .venv/bin/python bench/synthesize.py [--preset tiny|h200] [--checkpoint DIR] [--conversations 64]
                                         [--repeat 3] [--skip-openai] [--skip-harvest]

1. **Rollouts, batched vs one at a time**: the same episodes (k2's executable domains, the
   scenario-rendered user, greedy decoding, K2 chat format) on the same native engine, once with
   every live conversation in one batched agent call per round (k2's loop) and once one
   conversation after another (the τ²-bench way: each conversation runs its own loop). Repeats
   alternate the order; conversations/s medians and their ratio. Without ``--checkpoint`` the
   model is the preset, randomly initialised, with a tokenizer trained on this Python's docs; a
   random model rarely ends a turn early, so turns run to max_tokens in both arms alike.
2. The same through the **openai backend against k2 serve** (loopback): batched = every live
   conversation's request in flight at once (16 at a time), sequential = one conversation after
   another. k2 serve answers one request at a time (one engine behind a lock): the ratio shows
   what concurrency alone buys without server-side batching.
3. **Blueprint trajectories verified per minute on one core**: propose -> execute the gold actions
   on a fresh database (verify) -> build the conversation from real tool outputs -> grade it.
4. **Tools harvested per second** from the real MCP servers (k2's four domain servers,
   mcp-server-time, mcp-server-git), each started, initialised, listed and shut down.
5. **Synthetic tools accepted per teacher call** (only with ``--checkpoint``: the teacher).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from k2core.report import table  # noqa: E402


def build_checkpoint(preset: str, out: Path, device: str) -> Path:
    import torch

    from k2core.data.tokenize import save_tokenizer, train_tokenizer
    from k2core.model import K2ForCausalLM, ModelConfig
    from k2core.model.checkpoint import save_checkpoint
    from k2core.sources import list_source, iter_records

    texts = []
    for sf in list_source("stdlib")[:300]:
        for _, rec, _ in iter_records(sf, text_field="text", min_doc_chars=200):
            if isinstance(rec.get("text"), str):
                texts.append(rec["text"])
    tok = train_tokenizer(texts, vocab_size=4096, min_frequency=2)
    cfg = ModelConfig.preset(preset, vocab_size=tok.get_vocab_size(), max_position_embeddings=8192)
    torch.manual_seed(0)
    model = K2ForCausalLM(cfg).init_weights(0)
    save_checkpoint(model, out)
    save_tokenizer(tok, out, seq_len=128)
    return out


def episodes(n: int, seed: int = 0):
    from k2core.agentic import blueprint as B
    from k2core.agentic import tasks as T
    from k2core.agentic.domains import DOMAINS
    from k2core.agentic.rollout import DomainEnv, Episode

    out = []
    worlds = {name: d.make_db(seed, 20) for name, d in DOMAINS.items()}
    rng = random.Random(seed)
    names = list(DOMAINS)
    while len(out) < n:
        name = names[len(out) % len(names)]
        d = DOMAINS[name]
        v = T.verify(d, worlds[name], d.propose(worlds[name], rng))
        if not v.ok:
            continue
        task = T.to_task(d, v, f"{name}-{len(out)}")
        out.append(Episode(task, DomainEnv(d, worlds[name]), d.toolkit.openai_tools(),
                           [{"role": "system", "content": B.agent_system_prompt(d)}], seed=len(out)))
    return out


def rollouts(llm, n: int, max_turns: int, max_tokens: int, batched: bool) -> dict:
    from k2core.agentic.rollout import run_episodes
    from k2core.infer.llm import TextParams

    eps = episodes(n)
    params = TextParams(max_tokens=max_tokens, temperature=0.0)
    t0 = time.perf_counter()
    if batched:
        run_episodes(eps, llm, params, max_turns=max_turns)
    else:
        for e in eps:
            run_episodes([e], llm, params, max_turns=max_turns)
    s = time.perf_counter() - t0
    return {"seconds": s, "conv_per_s": n / s, "turns": sum(e.turns for e in eps),
            "tokens": sum(e.completion_tokens for e in eps),
            "outcome": [(e.termination, e.turns, len(e.messages)) for e in eps]}


def compare(make_llm, label: str, n: int, repeat: int, max_turns: int, max_tokens: int) -> dict:
    runs = {"batched": [], "sequential": []}
    outcomes = {}
    with make_llm() as llm:
        for arm in (True, False):        # untimed warm-up of both arms: compiled steps, CUDA graphs per shape
            rollouts(llm, n, max_turns, max_tokens, arm)
        for r in range(repeat):
            order = ["batched", "sequential"] if r % 2 == 0 else ["sequential", "batched"]
            for arm in order:
                res = rollouts(llm, n, max_turns, max_tokens, arm == "batched")
                runs[arm].append(res)
                outcomes[arm] = res["outcome"]
                print(f"  {label} {arm}: {res['conv_per_s']:.3f} conv/s ({res['seconds']:.1f} s, {res['turns']} turns, "
                      f"{res['tokens']} tokens)", file=sys.stderr)
    med = {a: statistics.median(x["conv_per_s"] for x in v) for a, v in runs.items()}
    same = sum(a == b for a, b in zip(outcomes["batched"], outcomes["sequential"])) / n
    return {"backend": label, "conversations": n, "batched_conv_per_s": round(med["batched"], 3),
            "sequential_conv_per_s": round(med["sequential"], 3), "ratio": round(med["batched"] / med["sequential"], 2),
            "turns_per_conv": round(statistics.mean(x["turns"] for x in runs["batched"]) / n, 2),
            "tokens_per_conv": round(statistics.mean(x["tokens"] for x in runs["batched"]) / n, 1),
            "same_outcomes": round(same, 3), "repeats": repeat}


def blueprint_rate(n: int) -> dict:
    from k2core.agentic import blueprint as B
    from k2core.agentic import tasks as T
    from k2core.agentic.domains import DOMAINS

    worlds = {name: d.make_db(0, 30) for name, d in DOMAINS.items()}
    rng = random.Random(0)
    ok = proposed = 0
    t0 = time.perf_counter()
    while ok < n:
        name = list(DOMAINS)[proposed % len(DOMAINS)]
        d = DOMAINS[name]
        proposed += 1
        v = T.verify(d, worlds[name], d.propose(worlds[name], rng))
        if not v.ok:
            continue
        task = T.to_task(d, v, f"{name}-{proposed}")
        conv = B.build(d, worlds[name], task, proposed)
        assert T.grade(d, worlds[name], task, conv["messages"], "user_stop").success
        ok += 1
    s = time.perf_counter() - t0
    return {"verified_trajectories": ok, "proposals": proposed, "seconds": round(s, 3),
            "per_min_one_core": round(ok / s * 60), "accept_rate": round(ok / proposed, 3)}


def harvest_rate(repeat: int) -> dict:
    from k2core.agentic.mcp import harvest
    from k2core.agentic.tools import default_servers

    rates, per = [], {}
    for _ in range(repeat):
        t0 = time.perf_counter()
        hs = harvest(default_servers(), timeout=60)
        s = time.perf_counter() - t0
        tools = sum(len(h.tools) for h in hs)
        rates.append(tools / s)
        per = {h.server: {"status": h.status, "tools": len(h.tools), "seconds": h.seconds} for h in hs}
    return {"servers": len(per), "tools": sum(v["tools"] for v in per.values()),
            "tools_per_s": round(statistics.median(rates), 2), "per_server": per}


def synthetic_rate(checkpoint: str, count: int) -> dict:
    from k2core.agentic import tools as T
    from k2core.config import SyntheticToolsConfig
    from k2core.infer.llm import NativeLLM

    cfg = SyntheticToolsConfig(count=count, batch=min(count, 32))
    with NativeLLM(checkpoint) as llm:
        t0 = time.perf_counter()
        proposals, stats = T.evolve(llm, cfg, lambda *_: None)
        s = time.perf_counter() - t0
    ok = 0
    for p in proposals:
        if "raw" in p:
            try:
                ok += T.check(T.normalise(p["raw"])) is None
            except ValueError:
                pass
    calls = stats["category_calls"] + stats["domain_calls"] + stats["tool_calls"]
    return {"teacher": checkpoint, "proposals": len(proposals), "teacher_calls": calls, "valid": ok,
            "accepted_per_call": round(ok / calls, 4) if calls else None, "seconds": round(s, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--checkpoint", help="a k2 checkpoint with tokenizer.json (default: the preset, random init)")
    ap.add_argument("--conversations", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--max-turns", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--device", default=None)
    ap.add_argument("--blueprints", type=int, default=2000)
    ap.add_argument("--skip-openai", action="store_true")
    ap.add_argument("--skip-harvest", action="store_true")
    ap.add_argument("--synthetic", type=int, default=32, help="tool proposals asked of --checkpoint")
    a = ap.parse_args()
    import torch

    from k2core.infer.llm import NativeLLM, OpenAILLM

    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 2)
    ckpt = a.checkpoint or str(build_checkpoint(a.preset, Path(tempfile.mkdtemp(prefix="k2-bench-")) / "model", device))
    out = {"bench": "synthesize", "machine": platform.node(), "device": torch.cuda.get_device_name() if device == "cuda"
           else f"cpu x{os.cpu_count()}", "preset": a.preset if not a.checkpoint else None, "checkpoint": a.checkpoint,
           "max_turns": a.max_turns, "max_tokens": a.max_tokens}
    out["rollouts"] = [compare(lambda: NativeLLM(ckpt, device=device, max_batch=max(64, a.conversations)), "native",
                               a.conversations, a.repeat, a.max_turns, a.max_tokens)]
    if not a.skip_openai:
        native = NativeLLM(ckpt, device=device, max_batch=max(64, a.conversations))
        from k2core.infer.server import serve_in_thread

        server, url = serve_in_thread(native, "k2-bench")
        n = max(4, a.conversations // 4)
        out["rollouts"].append(compare(lambda: OpenAILLM(url, "k2-bench", api_key_env=None, concurrency=16),
                                       "openai -> k2 serve (16 in flight)", n, 1, a.max_turns, a.max_tokens))
        server.should_exit = True
    out["blueprints"] = blueprint_rate(a.blueprints)
    if not a.skip_harvest:
        out["harvest"] = harvest_rate(2)
    if a.checkpoint and a.synthetic:
        out["synthetic"] = synthetic_rate(a.checkpoint, a.synthetic)
    print(json.dumps(out))
    print(table(out["rollouts"], ["backend", "conversations", "batched_conv_per_s", "sequential_conv_per_s", "ratio",
                                  "turns_per_conv", "tokens_per_conv", "same_outcomes"]))
    print(table([out["blueprints"]], ["verified_trajectories", "proposals", "accept_rate", "seconds", "per_min_one_core"]))
    if "harvest" in out:
        print(table([{"server": k, **v} for k, v in out["harvest"]["per_server"].items()],
                    ["server", "status", "tools", "seconds"]))
        print(f"harvest: {out['harvest']['tools']} tools from {out['harvest']['servers']} servers, "
              f"{out['harvest']['tools_per_s']} tools/s (median of 2)")
    if "synthetic" in out:
        print(table([out["synthetic"]], ["proposals", "teacher_calls", "valid", "accepted_per_call", "seconds"]))


if __name__ == "__main__":
    main()
