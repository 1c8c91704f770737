"""The tool repository: normalisation of MCP / OpenAI / bare tools, jsonschema validation with
reasons, catalogue files (JSON, JSONL, MCP dumps; broken ones counted), exact and near dedup, and
the `tools` stage end to end — real MCP servers harvested beside a crashing one, files local and
on S3, the teacher's synthetic proposals judged honestly, the gate on an empty repository."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from k2core.agentic import tools as T
from k2core.stage import GateFailed
from tests.k2core.agentic.conftest import run_stage

OPENAI = {"type": "function", "function": {"name": "get_stock", "description": "Stock price of a ticker.",
                                           "parameters": {"type": "object", "properties": {"ticker": {"type": "string"}},
                                                          "required": ["ticker"]}}}
MCP = {"name": "read_file", "description": "Read a file.", "inputSchema": {"type": "object", "properties": {
    "path": {"type": "string"}}}, "outputSchema": {"type": "object", "properties": {"text": {"type": "string"}}},
    "annotations": {"readOnlyHint": True}}


def test_normalise_and_check():
    a = T.normalise(OPENAI)
    assert a["name"] == "get_stock" and a["parameters"]["required"] == ["ticker"] and a["returns"] is None
    b = T.normalise(MCP)
    assert b["returns"]["properties"]["text"] == {"type": "string"} and b["annotations"] == {"readOnlyHint": True}
    assert T.check(a) is None and T.check(b) is None
    assert T.check({**a, "name": "has space"})[0] == "bad_name"
    assert T.check({**a, "name": "x" * 65})[0] == "bad_name"
    assert T.check({**a, "parameters": {"type": "array", "items": {}}})[0] == "invalid_schema"
    reason, detail = T.check({**a, "parameters": {"type": "object", "properties": {"n": {"type": "integr"}}}})
    assert reason == "invalid_schema" and "integr" in detail
    assert T.check({**a, "parameters": "not a schema"})[0] == "invalid_schema"
    with pytest.raises(ValueError, match="needs a name"):
        T.normalise({"description": "nameless"})


def test_read_catalogue_formats(tmp_path):
    (tmp_path / "dump.json").write_text(json.dumps({"tools": [MCP]}))
    (tmp_path / "list.json").write_text(json.dumps([OPENAI, OPENAI["function"]]))
    (tmp_path / "lines.jsonl").write_text(json.dumps(OPENAI) + "\n{broken\n\n" + json.dumps(MCP) + "\n")
    (tmp_path / "bad.json").write_text("[{")
    assert T.read_catalogue(str(tmp_path / "dump.json")) == ([MCP], [])
    assert len(T.read_catalogue(str(tmp_path / "list.json"))[0]) == 2
    items, bad = T.read_catalogue(str(tmp_path / "lines.jsonl"))
    assert len(items) == 2 and len(bad) == 1 and bad[0].startswith("line 2")
    assert T.read_catalogue(str(tmp_path / "bad.json"))[0] == []
    from k2core.errors import K2Error

    with pytest.raises(K2Error, match="cannot read"):
        T.read_catalogue(str(tmp_path / "missing.json"))


def test_first_json_object_stops_at_the_balanced_end():
    assert T.first_json_object('{"a": {"b": "}"}} and then rambling {') == {"a": {"b": "}"}}
    with pytest.raises(json.JSONDecodeError):
        T.first_json_object('{"a": 1')


@pytest.mark.slow
def test_tools_stage_end_to_end(pretrained, tmp_path, s3_endpoint, bucket):
    import boto3

    near = {"type": "function", "function": {"name": "fetch_stock_price", "description": "Stock price of a ticker.",
                                             "parameters": OPENAI["function"]["parameters"]}}
    local = tmp_path / "catalogue.jsonl"
    local.write_text("\n".join([json.dumps(OPENAI), json.dumps(OPENAI), "{broken", json.dumps(near),
                                json.dumps({**OPENAI["function"], "name": "bad name!"}),
                                json.dumps({"name": "weird", "parameters": {"type": "object", "properties": 3}})]) + "\n")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.put_object(Bucket=bucket, Key="tools/dump.json", Body=json.dumps({"tools": [MCP]}).encode())
    servers = json.dumps([{"name": "time", "command": "mcp-server-time"},
                          {"name": "k2-retail", "command": "k2", "args": ["mcp", "serve", "retail"]},
                          {"name": "dies", "command": "python3", "args": ["-c", "raise SystemExit(1)"]}])
    sets = [f"tools.mcp_servers={servers}", "tools.builtin_servers=false", f"tools.files=[{local}, s3://{bucket}/tools/dump.json]",
            f"store.s3_endpoint_url={s3_endpoint}", "tools.synthetic.count=4", "tools.synthetic.batch=4",
            "tools.synthetic.max_tokens=48", "tools.near_dup_threshold=0.9", "tools.server_timeout_s=20"]
    out, store = run_stage(pretrained, "tools", sets)
    m = out.metrics
    assert m["per_source"]["mcp:time"] == 2 and m["per_source"]["mcp:k2-retail"] == 9
    assert m["per_source"][f"file:{local}"] == 1 and m["per_source"][f"file:s3://{bucket}/tools/dump.json"] == 1
    assert m["servers_failed"] == 1 and m["rejected_server_failed"] == 1
    assert m["rejected_duplicate"] == 1 and m["rejected_near_duplicate"] == 1 and m["rejected_bad_name"] == 1
    assert m["rejected_invalid_json"] >= 1 and m["rejected_invalid_schema"] == 1
    # the teacher (a 12-step model) proposed 4 tools; each is counted, accepted or rejected with a reason
    assert m["synthetic_proposals"] == 4 and m["teacher"].startswith("native:pretrain/")
    art = store.artifact("tools", out.version)
    rows = pd.read_parquet(art.path(art.files("data/")[0]))
    rejects = pd.read_parquet(art.path(art.files("rejects/")[0]))
    assert len(rows) == m["tools"] and rows["tool_id"].is_unique
    assert (rejects["source"] == "synthetic").sum() + m["synthetic_tools"] == 4
    near_row = rejects[rejects.reason == "near_duplicate"].iloc[0]
    assert near_row["name"] == "fetch_stock_price" and "get_stock" in near_row["detail"]
    from schemas.agentic import validate

    assert all(validate("tool", r) is None for r in T.read_repository(art))
    assert m["schema_errors"] == 0
    assert "tools.png" in art.files("")


@pytest.mark.slow
def test_an_empty_repository_fails_the_gate(pretrained):
    with pytest.raises(GateFailed, match="tools"):
        run_stage(pretrained, "tools", ['tools.mcp_servers=[{"name": "dies", "command": "false"}]',
                                        "tools.builtin_servers=false",
                                        "tools.synthetic.count=0"])


def test_a_users_servers_add_to_the_builtin_ones():
    from k2core.config import load_config

    def names(*sets):
        return [s["name"] for s in T.servers_to_harvest(load_config(overrides=list(sets)).tools)]

    mine = 'tools.mcp_servers=[{"name": "mine", "command": "python3", "args": ["server.py"]}]'
    assert sorted(names()) == sorted([f"k2-{d}" for d in ("bank", "retail", "travel", "calendar")] + ["time", "git"])
    assert names(mine) == [*names(), "mine"]                       # added, not replacing
    assert names(mine, "tools.builtin_servers=false") == ["mine"]  # the switch drops the built-ins
    own_time = 'tools.mcp_servers=[{"name": "time", "command": "my-time"}]'
    got = T.servers_to_harvest(load_config(overrides=[own_time]).tools)
    assert [s["command"] for s in got if s["name"] == "time"] == ["my-time"] and len(got) == len(names())
    with pytest.raises(Exception, match="server names must be unique; repeated: a"):
        load_config(overrides=['tools.mcp_servers=[{"name": "a", "command": "x"}, {"name": "a", "command": "y"}]'])


def test_hierarchical_evolution_with_a_scripted_teacher():
    """categories -> domains -> tools, each level one batched call; the proposals parse from the
    teacher's continuation of `{"name": "`; the count is honoured. (A scripted LLM: a test double.)"""
    from k2core.config import SyntheticToolsConfig
    from k2core.infer.llm import LLM, Completion

    tool = 'get_rate", "description": "FX rate.", "parameters": {"type": "object", "properties": {}}} then junk'

    class Teacher(LLM):
        backend, model = "scripted", "t"

        def __init__(self):
            self.calls = []

        def generate(self, prompts, params=None, progress=True):
            self.calls.append(len(prompts))
            out = []
            for p in prompts:
                if p.startswith("Top-level"):
                    out.append(" banking\n- shipping\n- 123 not a name!\n")
                elif p.startswith("Software products"):
                    out.append(" currency exchange\n- payments\n")
                else:
                    out.append(tool if "payments" not in p else "oops no json")
            return [Completion(t, "stop", 1, 1) for t in out]

    t = Teacher()
    cfg = SyntheticToolsConfig(count=5, categories=[], domains_per_category=2, batch=4)
    proposals, stats = T.evolve(t, cfg, lambda *_: None)
    assert stats["categories"] == 2 and stats["domains"] == 4 and stats["tool_calls"] == 5 and t.calls == [1, 2, 4, 1]
    assert len(proposals) == 5
    good = [p for p in proposals if "raw" in p]
    bad = [p for p in proposals if "error" in p]
    assert good and bad and all(T.check(T.normalise(p["raw"])) is None for p in good)
    assert {p["category"] for p in proposals} <= {"banking", "shipping"}
