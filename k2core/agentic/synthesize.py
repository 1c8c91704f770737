"""The `synthesize` stage (K2 §3.2): agentic trajectories, judged; only successes kept.

1. **Executable domains** (k2core/agentic/domains): a seeded database per domain; blueprints
   proposed from it and verified by executing their gold actions on a fresh copy (APIGen-MT's
   blueprint-then-verify); rejected blueprints keep their reason. Verified tasks are written in
   τ²-bench's Task JSON shape (``tasks/<domain>.json``, ``tasks/split_tasks.json``), with the
   database (``domains/<domain>/db.json``) and policy, so tasks port both ways. A domain whose
   tools are not in the tool repository (its MCP server failed) is skipped with that reason.
2. **Coding tasks** with computed unit tests; ``run_python`` runs in k2's sandbox.
3. **Blueprint trajectories** (no model needed, ``origin=blueprint``, ``constructed=true``): each
   task's conversation built from its verified gold actions and real tool outputs, then graded
   like any other (state hash + communicated facts; tests for coding).
4. **Live trajectories** (``origin=live``): the agent model (this run's pretrain model unless
   ``live.agent`` names one) in K2's chat format against a user simulator (scenario-rendered or
   the teacher), all conversations advancing together (k2core/agentic/rollout.py), judged by the
   state hash / tests. **Simulated-tool tasks** (``origin=simulated``): the teacher writes a
   request for a tool without a backend, the tool simulator answers, the LLM judge decides.
5. **Judge agreement**: a sample of executable trajectories also goes to the LLM judge; how
   often it agrees with the state verdict is reported next to the data.

Tasks are split train / heldout by a hash of their id: no task is in both (the gate checks it);
evaluation and RL report on the held-out split. With a weak agent (the embedded default's tiny
model) live and simulated successes are rare, and the report says so: the blueprint
trajectories are the ground truth of SFT and RL.
"""
from __future__ import annotations

import hashlib
import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

from k2core.agentic import blueprint as B
from k2core.agentic import coding
from k2core.agentic.domains import DOMAINS
from k2core.agentic.tasks import REJECT_REASONS, to_task, verify
from k2core.errors import K2Error
from k2core.stage import StageContext
from k2core.text import chat

COLUMNS = ["trajectory_id", "task_id", "domain", "origin", "split", "messages", "tools", "rubric", "verdict",
           "reasons", "reward", "judge", "turns", "tokens", "termination", "errors", "constructed"]
JSON_COLUMNS = ("messages", "tools", "rubric", "reasons", "errors")
PROMPTS = Path(__file__).parent / "prompts"


def split_of(task_id: str, heldout_fraction: float) -> str:
    h = int(hashlib.sha256(task_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "heldout" if h < heldout_fraction else "train"


def distractors(repo: list[dict[str, Any]], exclude_source: str, k: int, rng: random.Random,
                taken: set[str]) -> list[dict[str, Any]]:
    from k2core.agentic.tools import openai_tool

    pool = [r for r in repo if r["source"] != exclude_source and r["name"] not in taken]
    return [openai_tool(r) for r in rng.sample(pool, min(k, len(pool)))]


def count_tokens(tokenizer, messages, tools) -> int | None:
    if tokenizer is None:
        return None
    return len(chat.encode(tokenizer, messages, tools)[0])


def problems(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[str]:
    """The gate's structural checks on one kept trajectory: roles, call ids, declared tools, and
    every call's arguments valid against its tool's schema."""
    import jsonschema

    out = chat.check_conversation(messages, tools)
    declared = {t["function"]["name"]: t["function"].get("parameters") or {} for t in tools}
    for m in messages:
        for c in m.get("tool_calls") or []:
            args, why = chat.arguments_of(c)
            name = c["function"]["name"]
            if args is None:
                out.append(f"call {c['id']}: {why}")
            elif name in declared:
                try:
                    jsonschema.validate(args, declared[name])
                except jsonschema.ValidationError as e:
                    out.append(f"call {c['id']} to {name}: {e.message}")
    return out


# ---------------------------------------------------------------------------- tasks
def make_tasks(cfg, log) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """Per domain: database, verified tasks; and the rejected blueprints."""
    worlds: dict[str, Any] = {}
    tasks: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    for name in cfg.domains:
        domain = DOMAINS[name]
        db = domain.make_db(cfg.db_seed, cfg.db_size)
        worlds[name] = db
        rng = random.Random(f"{cfg.db_seed}:{name}")
        got, seen = 0, set()
        for i in range(cfg.tasks_per_domain * cfg.max_proposals):
            if got >= cfg.tasks_per_domain:
                break
            bp = domain.propose(db, rng)
            key = json.dumps([bp.kind, [[a.name, a.arguments] for a in bp.actions]], sort_keys=True)
            if key in seen:
                rejected.append({"domain": name, "kind": bp.kind, "reason": "duplicate_task", "detail": "",
                                 "blueprint": key})
                continue
            seen.add(key)
            v = verify(domain, db, bp)
            if not v.ok:
                rejected.append({"domain": name, "kind": bp.kind, "reason": v.reason.split(":")[0], "detail": v.reason,
                                 "blueprint": key})
                continue
            tasks.append(to_task(domain, v, f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"))
            got += 1
        if got < cfg.tasks_per_domain:
            log(f"synthesize: {name}: {got} of {cfg.tasks_per_domain} tasks verified "
                f"after {cfg.tasks_per_domain * cfg.max_proposals} proposals")
    for i in range(cfg.coding_tasks):
        tasks.append(coding.make_task(i, cfg.db_seed))
    for t in tasks:
        t["k2"]["split"] = split_of(t["id"], cfg.heldout_fraction)
    return worlds, tasks, rejected


def domain_of(task: dict[str, Any]) -> str:
    return task["user_scenario"]["instructions"]["domain"]


def judge_one(task, messages, termination, worlds) -> tuple[bool, list[str], float, str]:
    from k2core.agentic.judge import StateJudge, TestsJudge

    d = domain_of(task)
    if d == "coding":
        v = TestsJudge()(task, coding.final_code(messages))
        if v.success and termination not in ("user_stop", "agent_stop"):
            return False, [f"not_terminated: {termination}"], 0.0, v.judge
    else:
        v = StateJudge(DOMAINS[d], worlds[d])(task, messages, termination)
    return v.success, v.reasons, v.reward, v.judge


# ---------------------------------------------------------------------------- the stage
def run(ctx: StageContext) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from k2core.agentic.tools import read_repository

    cfg = ctx.cfg
    t0 = time.monotonic()
    for d in ("data", "rejects", "tasks", "domains"):
        (ctx.workdir / d).mkdir()
    repo = read_repository(ctx.inputs["tools"])
    sources = Counter(r["source"] for r in repo)
    skipped = {d: f"domain_not_in_repository: no tools from mcp:k2-{d}" for d in cfg.domains
               if not sources.get(f"mcp:k2-{d}")}
    for d, why in skipped.items():
        ctx.log(f"synthesize: {d} skipped ({why})")
    run_cfg = cfg.model_copy(update={"domains": [d for d in cfg.domains if d not in skipped]})
    worlds, tasks, rejected_bp = make_tasks(run_cfg, ctx.log)
    t_tasks = time.monotonic() - t0
    for name, db in worlds.items():
        folder = ctx.workdir / "domains" / name
        folder.mkdir()
        (folder / "db.json").write_text(json.dumps(db.model_dump(mode="json"), sort_keys=True))
        (folder / "policy.md").write_text(DOMAINS[name].policy)
    by_domain: dict[str, list] = {}
    for t in tasks:
        by_domain.setdefault(domain_of(t), []).append(t)
    for name, ts in by_domain.items():
        (ctx.workdir / "tasks" / f"{name}.json").write_text(json.dumps(ts, ensure_ascii=False, indent=1))
    (ctx.workdir / "tasks" / "split_tasks.json").write_text(json.dumps(
        {"train": [t["id"] for t in tasks if t["k2"]["split"] == "train"],
         "test": [t["id"] for t in tasks if t["k2"]["split"] == "heldout"]}, indent=1))

    tokenizer = _tokenizer(ctx)
    trajectories: list[dict[str, Any]] = []

    def record(task, origin, messages, tools, ok, reasons, reward, judge, turns, termination, errors, constructed):
        tid = hashlib.sha256(f"{task['id']}:{origin}:{len(trajectories)}".encode()).hexdigest()[:20]
        trajectories.append({
            "trajectory_id": tid, "task_id": task["id"], "domain": domain_of(task), "origin": origin,
            "split": task["k2"]["split"], "messages": messages, "tools": tools,
            "rubric": task["k2"].get("rubric", {}), "verdict": "success" if ok else "failure", "reasons": reasons,
            "reward": float(reward), "judge": judge, "turns": turns, "tokens": count_tokens(tokenizer, messages, tools),
            "termination": termination, "errors": errors, "constructed": constructed})

    # blueprint trajectories
    t1 = time.monotonic()
    sandbox_failed = 0
    with ctx.progress(total=len(tasks) * cfg.phrasings, desc="synthesize: blueprints", unit="traj") as bar:
        for t in tasks:
            d = domain_of(t)
            for k in range(cfg.phrasings):
                seed = int(hashlib.sha256(f"{t['id']}:{k}".encode()).hexdigest()[:8], 16)
                if d == "coding":
                    conv = coding.build(t, seed)
                    if not _checks_passed(conv["sandbox_output"]):
                        sandbox_failed += 1
                        rejected_bp.append({"domain": "coding", "kind": t["k2"]["kind"], "reason": "sandbox_check_failed",
                                            "detail": conv["sandbox_output"][:300], "blueprint": t["id"]})
                        bar.update(1)
                        continue
                    tools = conv["tools"]
                else:
                    conv = B.build(DOMAINS[d], worlds[d], t, seed)
                    tools = conv["tools"] + distractors(repo, f"mcp:k2-{d}", cfg.live.distractors, random.Random(seed),
                                                        {x["function"]["name"] for x in conv["tools"]})
                    if cfg.tool_order == "shuffled":
                        random.Random(seed).shuffle(tools)
                ok, reasons, reward, judge = judge_one(t, conv["messages"], "user_stop", worlds)
                turns = sum(m["role"] == "assistant" for m in conv["messages"])
                record(t, "blueprint", conv["messages"], tools, ok, reasons, reward, judge, turns, "user_stop", [], True)
                bar.update(1)
    t_blueprint = time.monotonic() - t1

    # live and simulated rollouts
    live_stats = _live(ctx, cfg, tasks, worlds, repo, record)
    t_live = live_stats.pop("seconds", 0.0)

    # LLM judge agreement on executable trajectories
    agreement = _agreement(ctx, cfg, tasks, trajectories)

    # checks + write
    schema_errors = call_problems = 0
    from schemas.agentic import validate

    for tr in trajectories:
        if tr["verdict"] == "success":
            p = problems(tr["messages"], tr["tools"])
            why = validate("trajectory", tr)
            if p or why:
                call_problems += bool(p)
                schema_errors += bool(why)
                tr["verdict"] = "failure"
                tr["reasons"] = tr["reasons"] + [f"malformed: {(p or [why])[0]}"]
    for t in tasks:
        why = validate("task", t)
        if why:
            raise K2Error(f"synthesize: task {t['id']} is not a valid Task record: {why}")
    kept = [tr for tr in trajectories if tr["verdict"] == "success"]
    failed = [tr for tr in trajectories if tr["verdict"] != "success"]
    schema = pa.schema([(c, pa.bool_() if c == "constructed" else pa.float64() if c == "reward"
                         else pa.int64() if c in ("turns", "tokens") else pa.string()) for c in COLUMNS])

    def table(rows):
        return pa.Table.from_pylist([{**r, **{c: json.dumps(r[c], ensure_ascii=False) for c in JSON_COLUMNS}}
                                     for r in rows], schema)
    pq.write_table(table(kept), ctx.workdir / "data" / "trajectories-00000.parquet")
    pq.write_table(table(failed), ctx.workdir / "rejects" / "trajectories-rejected-00000.parquet")
    bschema = pa.schema([(c, pa.string()) for c in ("domain", "kind", "reason", "detail", "blueprint")])
    pq.write_table(pa.Table.from_pylist(rejected_bp, bschema), ctx.workdir / "rejects" / "blueprints-rejected-00000.parquet")

    # metrics, report, plots
    def counts(rows, key):
        return dict(sorted(Counter(key(r) for r in rows).items()))
    train_ids = {t["id"] for t in tasks if t["k2"]["split"] == "train"}
    held_ids = {t["id"] for t in tasks if t["k2"]["split"] == "heldout"}
    split_of_task = {t["id"]: t["k2"]["split"] for t in tasks}
    kept_split_overlap = len({tr["task_id"] for tr in kept if tr["split"] == "train"} &
                             {tr["task_id"] for tr in kept if tr["split"] == "heldout"}) + \
        sum(tr["split"] != split_of_task[tr["task_id"]] for tr in kept if tr["task_id"] in split_of_task)
    by_origin = {o: {"judged": sum(tr["origin"] == o for tr in trajectories),
                     "success": sum(tr["origin"] == o for tr in kept)} for o in ("blueprint", "live", "simulated")}
    for o in by_origin.values():
        o["success_rate"] = round(o["success"] / o["judged"], 4) if o["judged"] else None
    reasons = Counter(r.split(":")[0] for tr in failed for r in tr["reasons"])
    errors = Counter(e["kind"] for tr in trajectories for e in tr["errors"])
    blueprints_verified = len(tasks) - cfg.coding_tasks
    bp_rate = blueprints_verified / (blueprints_verified + sum(r["reason"] in REJECT_REASONS for r in rejected_bp)) \
        if blueprints_verified else 0.0
    report = {
        "domains": {d: {"tasks": sum(domain_of(t) == d for t in tasks)} for d in [*worlds, "coding"]},
        "skipped_domains": skipped, "blueprint_rejects": counts(rejected_bp, lambda r: r["reason"]),
        "trajectories": {"per_domain_origin_verdict": counts(trajectories, lambda r: f"{r['domain']}/{r['origin']}/{r['verdict']}")},
        "by_origin": by_origin, "failure_reasons": dict(reasons), "agent_errors": dict(errors),
        "judge_agreement": agreement, "live": live_stats,
        "constructed_note": "blueprint trajectories are constructed from verified gold actions and real tool outputs, "
                            "not generated by a model",
    }
    (ctx.workdir / "report.json").write_text(json.dumps(report, indent=1))
    plot(trajectories, ctx.workdir / "synthesize.png")
    judged = len(trajectories)
    rate = len(kept) / judged if judged else 0.0
    return {
        "tasks": len(tasks), "tasks_train": len(train_ids), "tasks_heldout": len(held_ids),
        "tasks_per_domain": counts(tasks, domain_of), "blueprints_rejected": len(rejected_bp),
        "blueprint_accept_rate": round(bp_rate, 4), "skipped_domains": len(skipped),
        "domains_synthesized": len({domain_of(t) for t in tasks} - {"coding"}),
        "trajectories_train": sum(tr["split"] == "train" for tr in kept),
        "trajectories_heldout": sum(tr["split"] == "heldout" for tr in kept),
        "trajectories": len(kept), "judged": judged, "success_rate": round(rate, 4),
        "success_rate_low": max(0.0, cfg.min_success_rate - rate), "success_rate_high": max(0.0, rate - cfg.max_success_rate),
        "per_domain": counts(kept, lambda r: r["domain"]), "per_origin": counts(kept, lambda r: r["origin"]),
        "per_verdict": counts(trajectories, lambda r: f"{r['origin']}/{r['verdict']}"),
        "per_domain_origin_verdict": counts(trajectories, lambda r: f"{r['domain']}/{r['origin']}/{r['verdict']}"),
        "by_origin": by_origin, "judge_agreement": agreement.get("agreement"), "judge_judged": agreement.get("judged", 0),
        "judge_parsed": agreement.get("parsed", 0), "live_success_rate": by_origin["live"]["success_rate"],
        "split_overlap": kept_split_overlap, "call_problems": call_problems, "schema_errors": schema_errors,
        "sandbox_check_failed": sandbox_failed, "agent_errors": dict(errors),
        "blueprints_per_min": round(by_origin["blueprint"]["judged"] / max(t_blueprint + t_tasks, 1e-9) * 60, 1),
        "agent": live_stats.get("agent", "none"), "seconds": round(time.monotonic() - t0, 2),
        "seconds_tasks": round(t_tasks, 2), "seconds_blueprint": round(t_blueprint, 2), "seconds_live": round(t_live, 2),
    }


def _checks_passed(output: str) -> bool:
    """The blueprint's self-check ran in the sandbox and printed True for each check."""
    try:
        out = json.loads(output)
    except json.JSONDecodeError:
        return False
    return out.get("exit_code") == 0 and out.get("stdout", "").split() == ["True", "True"]


def _tokenizer(ctx: StageContext):
    art = ctx.inputs.get("pretrain")
    if art is None or "model/tokenizer.json" not in art.files("model/"):
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(art.path("model/tokenizer.json")))


def _models(ctx: StageContext, cfg):
    """(agent, user model) ResolvedModels: named ones, else this run's pretrain model."""
    from k2core.models import artifact_model, named_model

    agent = named_model(cfg.live.agent, ctx.store, "synthesize.live.agent") or \
        artifact_model(ctx.inputs.get("pretrain"), cfg.live.agent.engine)
    user = named_model(cfg.live.user_model, ctx.store, "synthesize.live.user_model") or agent
    return agent, user


def _live(ctx, cfg, tasks, worlds, repo, record) -> dict[str, Any]:
    from k2core.agentic.rollout import DomainEnv, Episode, SandboxEnv, run_episodes
    from k2core.infer.llm import TextParams, open_model

    live = cfg.live
    want = live.episodes + live.simulated_tasks
    if not want:
        return {"agent": "none", "status": "skipped: live.episodes = 0"}
    agent_m, user_m = _models(ctx, cfg)
    if agent_m is None:
        ctx.log("synthesize: live rollouts skipped — no agent model")
        return {"agent": "none", "status": "skipped: no agent model"}
    t0 = time.monotonic()
    train = [t for t in tasks if t["k2"]["split"] == "train"]
    picked = random.Random(live.seed).sample(train, min(live.episodes, len(train)))
    episodes = []
    for i, t in enumerate(picked):
        d = domain_of(t)
        if d == "coding":
            env, tools, system = SandboxEnv(), [SandboxEnv.TOOL], coding.SYSTEM
        else:
            env = DomainEnv(DOMAINS[d], worlds[d])
            tools = DOMAINS[d].toolkit.openai_tools() + distractors(repo, f"mcp:k2-{d}", live.distractors,
                                                                   random.Random(i), set(env.names))
            system = B.agent_system_prompt(DOMAINS[d])
        episodes.append(Episode(t, env, tools, [{"role": "system", "content": system}], seed=live.seed + i))
    params = TextParams(max_tokens=live.max_tokens, temperature=live.temperature, top_p=0.95, seed=live.seed)
    stats: dict[str, Any] = {"agent": agent_m.describe()}
    with open_model(agent_m, live.agent, ctx.store) as agent:
        user_llm = agent if user_m is agent_m else open_model(user_m, live.user_model, ctx.store)
        try:
            if live.user == "teacher":
                from k2core.agentic.user import TeacherUser

                user = TeacherUser(user_llm, TextParams(max_tokens=64, temperature=0.7, seed=live.seed, stop=chat.STOP))
            else:
                user = None
            with ctx.progress(total=len(episodes), desc="synthesize: live rollouts", unit="conv") as bar:
                stats.update(run_episodes(episodes, agent, params, user=user, max_turns=live.max_turns, bar=bar))
            for e in episodes:
                ok, reasons, reward, judge = judge_one(e.task, e.messages, e.termination, worlds)
                record(e.task, "live", e.messages, e.tools, ok, reasons, reward, judge, e.turns, e.termination,
                       e.errors, False)
            if live.simulated_tasks:
                stats["simulated"] = _simulated(ctx, cfg, repo, agent, user_llm, params, record)
        finally:
            if user_llm is not agent:
                user_llm.close()
    stats["seconds"] = round(time.monotonic() - t0, 2)
    return stats


def _simulated(ctx, cfg, repo, agent, teacher, params, record) -> dict[str, Any]:
    """Tasks on tools without a backend: the teacher writes the request, simulates the tool and judges."""
    import string

    from k2core.agentic.judge import LLMJudge
    from k2core.agentic.rollout import Episode, run_episodes
    from k2core.agentic.simulator import ToolSimulator
    from k2core.agentic.tools import openai_tool
    from k2core.agentic.user import TeacherUser
    from k2core.infer.llm import TextParams

    live = cfg.live
    pool = [r for r in repo if not r["executable"]]
    if not pool:
        return {"status": "skipped: no tool without a backend in the repository"}
    rng = random.Random(live.seed + 7)
    picks = [rng.choice(pool) for _ in range(live.simulated_tasks)]
    template = string.Template((PROMPTS / "simulated_task.txt").read_text())
    outs = teacher.generate([template.safe_substitute(tool=json.dumps(openai_tool(r)["function"])) for r in picks],
                            TextParams(max_tokens=48, temperature=0.7, seed=live.seed, stop=["\n"]), progress=False)
    episodes, unusable = [], 0
    for i, (r, o) in enumerate(zip(picks, outs)):
        request = o.text.strip()
        if len(request) < 8:
            unusable += 1
            continue
        tool = openai_tool(r)
        tool["function"]["returns"] = json.loads(r["returns"]) if r["returns"] else None
        task = {"id": f"sim-{hashlib.sha256((r['tool_id'] + request).encode()).hexdigest()[:10]}",
                "description": {"purpose": request, "notes": f"request written by the teacher for {r['name']}"},
                "user_scenario": {"persona": "a user", "instructions": {
                    "domain": "simulated", "reason_for_call": request, "known_info": request, "unknown_info": None,
                    "task_instructions": "Ask for what the request says."}},
                "initial_state": None,
                "evaluation_criteria": {"actions": [], "env_assertions": [], "communicate_info": [],
                                        "nl_assertions": None, "reward_basis": ["NL_ASSERTION"]},
                "k2": {"split": "train", "known_info": {"request": request},
                       "rubric": {"success_criteria": f"the agent calls {r['name']} with arguments that fit the request "
                                                      "and tells the user the result",
                                  "expected_tools": [r["name"]], "checkpoints": ["tool called", "result reported"]}}}
        episodes.append(Episode(task, None, [tool], [{"role": "system", "content": "You are a helpful assistant "
                                                      "with tools. Use them to answer the user."}], seed=live.seed + i))
    sim = ToolSimulator(teacher, TextParams(max_tokens=128, temperature=0.3, seed=live.seed, stop=["\n\n"]),
                        live.failure_rate, live.edge_rate, live.seed)
    user = TeacherUser(teacher, TextParams(max_tokens=64, temperature=0.7, seed=live.seed, stop=chat.STOP))
    if episodes:
        run_episodes(episodes, agent, params, user=user, simulator=sim, max_turns=live.max_turns)
    judge = LLMJudge(teacher, TextParams(max_tokens=32, temperature=0.0, seed=live.seed, stop=["\n\n"]))
    verdicts = judge.judge_batch([(e.task, e.messages) for e in episodes])
    for e, v in zip(episodes, verdicts):
        ok = v.success and e.termination in ("user_stop", "agent_stop")
        reasons = v.reasons + ([] if e.termination in ("user_stop", "agent_stop") else [f"not_terminated: {e.termination}"])
        record(e.task, "simulated", e.messages, e.tools, ok, reasons, float(ok), v.judge, e.turns, e.termination,
               e.errors, False)
    return {"tasks": len(episodes), "unusable_requests": unusable, "simulator_calls": sim.calls,
            "simulator_valid": sim.valid}


def _agreement(ctx, cfg, tasks, trajectories) -> dict[str, Any]:
    from k2core.agentic.judge import LLMJudge, agreement
    from k2core.infer.llm import TextParams, open_model

    sample = [tr for tr in trajectories if tr["judge"] == "state"]
    if not cfg.judge_sample or not sample:
        return {"judged": 0, "agreement": None, "status": "skipped"}
    _, judge_m = _models(ctx, cfg)
    if judge_m is None:
        return {"judged": 0, "agreement": None, "status": "skipped: no judge model"}
    # both verdicts in the sample: failures first (rare in blueprints), then successes
    sample = sorted(random.Random(cfg.db_seed).sample(sample, min(cfg.judge_sample, len(sample))),
                    key=lambda tr: tr["verdict"])
    by_id = {t["id"]: t for t in tasks}
    with open_model(judge_m, cfg.live.user_model, ctx.store) as llm:
        judge = LLMJudge(llm, TextParams(max_tokens=32, temperature=0.0, seed=cfg.db_seed, stop=["\n\n"]))
        verdicts = judge.judge_batch([(by_id[tr["task_id"]], tr["messages"]) for tr in sample])
    out = agreement([(tr["verdict"] == "success", v) for tr, v in zip(sample, verdicts)])
    out["judge"] = judge_m.describe()
    return out


def plot(trajectories: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2), dpi=110)
    keys = sorted({(t["domain"], t["origin"]) for t in trajectories})
    labels = [f"{d}/{o}" for d, o in keys]
    ok = [sum(t["domain"] == d and t["origin"] == o and t["verdict"] == "success" for t in trajectories) for d, o in keys]
    bad = [sum(t["domain"] == d and t["origin"] == o and t["verdict"] != "success" for t in trajectories) for d, o in keys]
    axes[0].barh(labels, ok, color="tab:green", label="success")
    axes[0].barh(labels, bad, left=ok, color="tab:red", label="failure")
    axes[0].set(title="Trajectories per domain / origin and verdict", xlabel="trajectories")
    axes[0].legend()
    axes[1].hist([t["turns"] for t in trajectories], bins=range(0, 1 + max([t["turns"] for t in trajectories] + [1]) + 1),
                 color="tab:blue")
    axes[1].set(title="Assistant turns per trajectory", xlabel="turns", ylabel="trajectories")
    toks = [t["tokens"] for t in trajectories if t["tokens"] is not None]
    axes[2].hist(toks or [0], bins=30, color="tab:purple")
    axes[2].set(title="Tokens per trajectory (K2 chat format)", xlabel="tokens", ylabel="trajectories")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def gate_frame(workdir: Path, columns: list[str]):
    import pandas as pd

    return pd.read_parquet(workdir / "data", columns=columns)


def read_trajectories(art, split: str | None = None) -> list[dict[str, Any]]:
    """A committed synthesize artifact's kept trajectories, JSON fields decoded."""
    from k2core.artifacts import read_artifact_rows

    rows = read_artifact_rows(art, COLUMNS, key="trajectory_id")
    for r in rows:
        for c in JSON_COLUMNS:
            r[c] = json.loads(r[c])
    return [r for r in rows if split is None or r["split"] == split]


def fingerprint(cfg) -> dict[str, Any]:
    """Explicitly named agent / user models (the default, this run's pretrain model, is an input)."""
    from k2core.models import named_model

    store = cfg.store.open()
    agent = named_model(cfg.synthesize.live.agent, store, "synthesize.live.agent")
    user = named_model(cfg.synthesize.live.user_model, store, "synthesize.live.user_model")
    return {"agent": agent.identity if agent else None, "user": user.identity if user else None}
