"""The `synthesize` stage on a real (small) pretrain model: verified τ²-shaped tasks and their
database written so they port; blueprint trajectories kept as constructed ground truth; live and
simulated rollouts of the weak model judged and counted honestly; the LLM judge's agreement
measured; every kept trajectory well formed, in the chat format's round trip, and in one split."""
from __future__ import annotations

import json

import pytest

from k2core.agentic import synthesize as S
from k2core.agentic import tasks as T
from k2core.agentic.domains import DOMAINS
from k2core.stage import GateFailed
from k2core.text import chat
from tests.k2core.agentic.conftest import run_stage
from tests.k2core.agentic.test_tools import OPENAI

pytestmark = pytest.mark.slow
SMALL = ["synthesize.tasks_per_domain=8", "synthesize.coding_tasks=3", "synthesize.db_size=10",
         "synthesize.judge_sample=6", "synthesize.live.episodes=6", "synthesize.live.max_turns=2",
         "synthesize.live.max_tokens=24", "synthesize.live.simulated_tasks=2", "synthesize.heldout_fraction=0.25"]


@pytest.fixture(scope="module")
def synthesized(pretrained):
    cat = pretrained["tmp"] / "catalogue.json"
    cat.write_text(json.dumps([OPENAI]))
    tools, store = run_stage(pretrained, "tools", [f"tools.files=[{cat}]", "tools.synthetic.count=0"])
    out, store = run_stage(pretrained, "synthesize", SMALL, pins={"tools": tools.version})
    return out, store, store.artifact("synthesize", out.version), tools


def test_tasks_port_as_tau2_files(synthesized):
    out, store, art, _ = synthesized
    split = json.loads(art.path("tasks/split_tasks.json").read_text())
    assert set(split) == {"train", "test"} and not set(split["train"]) & set(split["test"])
    for name in DOMAINS:
        tasks = json.loads(art.path(f"tasks/{name}.json").read_text())
        db = DOMAINS[name].load_db(json.loads(art.path(f"domains/{name}/db.json").read_text()))
        assert len(tasks) == 8 and art.path(f"domains/{name}/policy.md").read_text() == DOMAINS[name].policy
        for t in tasks:
            crit = t["evaluation_criteria"]
            assert set(crit) >= {"actions", "env_assertions", "communicate_info", "reward_basis"}
            assert t["user_scenario"]["instructions"]["domain"] == name
            # executed again from the files alone, the gold actions reach the recorded end state
            tk = DOMAINS[name].fresh(db)
            for a in T.gold_actions(t):
                tk.use_tool(a.name, a.arguments)
            assert tk.state_hash() == t["k2"]["final_hash"]
    m = out.metrics
    assert m["tasks"] == 4 * 8 + 3 and m["tasks_train"] + m["tasks_heldout"] == m["tasks"]
    assert 0 < m["blueprint_accept_rate"] < 1 and m["blueprints_rejected"] > 0


def test_kept_trajectories_are_well_formed_and_round_trip(synthesized):
    out, store, art, _ = synthesized
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(store.artifact("pretrain", out.manifest["inputs"]["pretrain"]["version"])
                                  .path("model/tokenizer.json")))
    from k2core.text.special_tokens import SPECIAL_TOKENS

    for s in SPECIAL_TOKENS:                                     # each chat token is one token of k2's tokenizer
        assert len(tok.encode(s, add_special_tokens=False).ids) == 1
    rows = S.read_trajectories(art)
    assert rows and all(r["verdict"] == "success" for r in rows)
    from transformers import AutoTokenizer

    model_dir = store.artifact("pretrain", out.manifest["inputs"]["pretrain"]["version"]).path("model/config.json").parent
    hf = AutoTokenizer.from_pretrained(str(model_dir))                  # the checkpoint's chat template
    for r in rows:
        assert hf.apply_chat_template(r["messages"], tools=r["tools"], tokenize=False) == \
            chat.render(r["messages"], r["tools"])
    assert {r["origin"] for r in rows} >= {"blueprint"} and all(r["constructed"] == (r["origin"] == "blueprint") for r in rows)
    shapes = set()
    for r in rows:
        assert S.problems(r["messages"], r["tools"]) == []
        assert r["tokens"] == len(chat.encode(tok, r["messages"], r["tools"])[0])
        for m in r["messages"]:
            if m["role"] == "assistant":
                body = chat.render([m]).split(chat.GENERATION_PROMPT, 1)[1]
                assert chat.parse(body) == {**m, "content": m.get("content") or None}
                shapes.add(len(m.get("tool_calls") or []))
    assert {0, 1} <= shapes and max(shapes) >= 2                # no-call, one-call and parallel-call turns
    train = {r["task_id"] for r in rows if r["split"] == "train"}
    held = {r["task_id"] for r in rows if r["split"] == "heldout"}
    assert train and held and not train & held
    # the domain's tools are declared beside distractors from the repository
    retail = next(r for r in rows if r["domain"] == "retail")
    names = {t["function"]["name"] for t in retail["tools"]}
    assert set(DOMAINS["retail"].toolkit.specs()) < names


def test_live_and_simulated_rollouts_are_judged_and_reported(synthesized):
    out, store, art, _ = synthesized
    m = out.metrics
    report = json.loads(art.path("report.json").read_text())
    sim = report["live"]["simulated"]
    assert m["by_origin"]["live"]["judged"] == 6
    # each simulated task is rolled out and judged, or counted as an unusable request of the teacher
    assert m["by_origin"]["simulated"]["judged"] + sim["unusable_requests"] == 2 and sim["tasks"] + sim["unusable_requests"] == 2
    assert m["agent"].startswith("native:pretrain/")
    assert sum(v for k, v in m["per_verdict"].items() if k.startswith("live/")) == 6
    assert report["judge_agreement"]["judged"] == 6 and report["judge_agreement"]["agreement"] is not None
    assert "constructed" in report["constructed_note"]
    import pyarrow.parquet as pq

    failed = pq.read_table(art.path("rejects/trajectories-rejected-00000.parquet")).to_pylist()
    live = [f for f in failed if f["origin"] == "live"]
    # the weak agent's failures keep their reasons (a 12-step model does not solve tasks)
    assert all(json.loads(f["reasons"]) for f in live)
    assert sum(m["per_domain_origin_verdict"].values()) == m["judged"]
    assert "synthesize.png" in art.files("")


def test_zero_trajectories_fail_the_gate(pretrained, synthesized):
    _, _, _, tools = synthesized
    with pytest.raises(GateFailed, match="synthesize"):
        run_stage(pretrained, "synthesize", ["synthesize.domains=[]", "synthesize.coding_tasks=0",
                                             "synthesize.live.episodes=0", "synthesize.live.simulated_tasks=0"],
                  pins={"tools": tools.version})


def test_a_domain_missing_from_the_repository_is_skipped_with_its_reason(pretrained):
    tools, _ = run_stage(pretrained, "tools", ['tools.mcp_servers=[{"name": "k2-bank", "command": "k2", '
                                               '"args": ["mcp", "serve", "bank"]}]', "tools.builtin_servers=false",
                                               "tools.synthetic.count=0"])
    out, _ = run_stage(pretrained, "synthesize", [*SMALL, "synthesize.tasks_per_domain=16",
                                                  "synthesize.domains=[bank, retail]", "synthesize.live.episodes=0",
                                                  "synthesize.live.simulated_tasks=0", "synthesize.judge_sample=0"],
                       pins={"tools": tools.version})
    assert out.metrics["skipped_domains"] == 1 and set(out.metrics["tasks_per_domain"]) == {"bank", "coding"}


def test_no_executable_domain_fails_synthesizes_own_gate_naming_the_setting(pretrained):
    """A user's own server alone (built-ins switched off): every domain is skipped and synthesize
    — not sft after it — fails, naming the cause and the setting."""
    tools, _ = run_stage(pretrained, "tools", ['tools.mcp_servers=[{"name": "time", "command": "mcp-server-time"}]',
                                               "tools.builtin_servers=false", "tools.synthetic.count=0"])
    with pytest.raises(GateFailed, match=r"metric:domains_synthesized: observed 0.*tools\.builtin_servers"):
        run_stage(pretrained, "synthesize", [*SMALL, "synthesize.live.episodes=0", "synthesize.live.simulated_tasks=0",
                                             "synthesize.judge_sample=0"], pins={"tools": tools.version})
