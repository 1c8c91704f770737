"""Agentic pass^k on k2's executable domains (τ²-bench's metric): each held-out task is attempted
`trials` times by the model as the agent (user turns from the blueprint renderer), every attempt
graded by the task's state-hash verdict; pass^k = mean over tasks of C(c, k) / C(n, k)."""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from k2core.eval.metrics import pass_hat_k


def heldout_tasks(syn_art, heldout_ids: set[str]) -> tuple[list[tuple[str, dict]], dict[str, Any]]:
    """(domain, task) of the held-out tasks of every executable domain in a synthesize artifact,
    and each domain's database."""
    from k2core.agentic.domains import DOMAINS

    tasks, worlds = [], {}
    for name, domain in DOMAINS.items():
        rel = f"tasks/{name}.json"
        if rel not in syn_art.files("tasks/"):
            continue
        worlds[name] = domain.load_db(json.loads(Path(syn_art.path(f"domains/{name}/db.json")).read_text()))
        tasks += [(name, t) for t in json.loads(Path(syn_art.path(rel)).read_text()) if t["id"] in heldout_ids]
    return tasks, worlds


def attempts(llm, syn_art, heldout_ids: set[str], n: int, trials: int, max_turns: int, max_tokens: int,
             temperature: float, seed: int) -> list[dict[str, Any]]:
    """Up to `n` held-out tasks (seeded choice), each attempted `trials` times in one batch:
    ``{task_id, domain, successes: [bool] * trials}`` per task."""
    from k2core.agentic import blueprint as B
    from k2core.agentic.domains import DOMAINS
    from k2core.agentic.rollout import DomainEnv, Episode, run_episodes
    from k2core.agentic.tasks import grade
    from k2core.infer.llm import TextParams

    tasks, worlds = heldout_tasks(syn_art, heldout_ids)
    random.Random(seed).shuffle(tasks)
    tasks = tasks[:n]
    jobs = [(d, t) for d, t in tasks for _ in range(trials)]
    eps = [Episode(t, DomainEnv(DOMAINS[d], worlds[d]), DOMAINS[d].toolkit.openai_tools(),
                   [{"role": "system", "content": B.agent_system_prompt(DOMAINS[d])}], seed=seed + i)
           for i, (d, t) in enumerate(jobs)]
    if eps:
        run_episodes(eps, llm, TextParams(max_tokens=max_tokens, temperature=temperature, seed=seed),
                     max_turns=max_turns)
    out = []
    for j, (d, t) in enumerate(tasks):
        ok = [grade(DOMAINS[d], worlds[d], t, e.messages, e.termination).success
              for e in eps[j * trials:(j + 1) * trials]]
        out.append({"task_id": t["id"], "domain": d, "successes": ok})
    return out


def score(per_task: list[dict[str, Any]], ks: range | list[int]) -> dict[str, Any]:
    """pass^k for each k up to the trials per task; success rate over all attempts."""
    if not per_task:
        return {"suite": "agentic", "tasks": 0}
    n = min(len(t["successes"]) for t in per_task)
    out: dict[str, Any] = {"suite": "agentic", "tasks": len(per_task), "trials": n,
                           "success_rate": round(sum(sum(t["successes"]) for t in per_task)
                                                 / sum(len(t["successes"]) for t in per_task), 4)}
    for k in ks:
        if k <= n:
            out[f"pass^{k}"] = round(sum(pass_hat_k(len(t["successes"]), sum(t["successes"]), k)
                                         for t in per_task) / len(per_task), 4)
    return out
