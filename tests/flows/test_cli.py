"""The `k2` command as a user runs it: a subprocess of the installed console script."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SECRET, flow_run_events, write_jsonl

K2 = str(Path(sys.executable).parent / "k2")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A user's shell with no Prefect server configured: `k2 run` starts k2's local server under
    K2_HOME (stopped at the end, as `k2 server --stop` does)."""
    e = dict(os.environ)
    e.pop("PREFECT_API_URL", None)
    e.pop("K2_LOCAL_API", None)
    e["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    e["K2_CACHE"] = str(tmp_path_factory.mktemp("k2-cache"))
    e["K2_HOME"] = str(tmp_path_factory.mktemp("k2-home"))
    yield e
    subprocess.run([K2, "server", "--stop"], env=e, capture_output=True, timeout=60)


def k2(*args, env, check=True):
    p = subprocess.run([K2, *map(str, args)], capture_output=True, text=True, env=env, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"k2 {' '.join(map(str, args))} -> {p.returncode}\n{p.stdout}\n{p.stderr[-3000:]}")
    return p


def test_help_and_stages(env):
    assert "rerun" in k2("--help", env=env).stdout
    rows = json.loads(k2("stages", "--json", env=env).stdout)
    assert rows[0]["stage"] == "ingest" and "source" in rows[0]["fields"]


def test_invalid_config_fails_before_work(tmp_path, env):
    p = k2("run", "--store", tmp_path / "s", "--set", "ingest.shard_docs=-1", env=env, check=False)
    assert p.returncode == 2
    assert p.stderr.strip() == ("k2: invalid config: ingest.shard_docs = -1: Input should be greater than "
                                "or equal to 1")
    assert not (tmp_path / "s").exists()


def test_missing_source_is_one_line(tmp_path, env):
    p = k2("run", "--stages", "ingest", "--source", tmp_path / "nope.jsonl", "--store", tmp_path / "s",
           env=env, check=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.strip() == f"k2: error: source {tmp_path / 'nope.jsonl'}: does not exist"


def _run_twice_and_inspect(store, src, env, orchestrator="prefect (local server http://127.0.0.1:"):
    first = json.loads(k2("run", "--stages", "ingest", "--source", src, "--store", store, "--json", env=env).stdout)
    assert first["status"] == "completed" and first["orchestrator"].startswith(orchestrator), first["orchestrator"]
    assert set(first["timings"]) == {"plan_s", "prefect_import_s", "api_wait_s", "pipeline_s"}
    [s] = first["stages"]
    assert s["status"] == "computed" and s["flow_run_id"] and s["metrics"]["docs"] == 30
    second = json.loads(k2("run", "--stages", "ingest", "--source", src, "--store", store, "--json", env=env).stdout)
    assert [x["status"] for x in second["stages"]] == ["cache_hit"] and second["stages"][0]["version"] == s["version"]
    shown = json.loads(k2("show", s["version"], "--store", store, "--json", env=env).stdout)
    assert shown["metrics"]["docs"] == 30 and shown["metrics"]["rejects_by_reason"] == {"invalid_json": 1}
    assert shown["quality"]["success"] is True
    lin = k2("lineage", "ingest", "--store", store, env=env).stdout
    assert f"ingest/{s['version']}" in lin and f"source: {src.resolve() if isinstance(src, Path) else src}" in lin
    runs = json.loads(k2("runs", "--store", store, "--json", env=env).stdout)
    assert {r["run_id"] for r in runs} == {first["run_id"], second["run_id"]}
    return first, s


@pytest.mark.slow
def test_run_twice_local_then_rerun(tmp_path, env):
    src = write_jsonl(tmp_path / "docs.jsonl", [{"text": f"document {i}"} for i in range(30)] + ["{broken"])
    store = tmp_path / "store"
    first, s = _run_twice_and_inspect(store, src, env)
    assert (store / "artifacts" / "ingest" / s["version"] / "manifest.json").is_file()
    human = k2("show", first["run_id"], "--store", store, env=env).stdout
    assert "ingest" in human and "computed" in human and "completed" in human
    rerun = json.loads(k2("rerun", "ingest", "--run", first["run_id"], "--store", store,
                          "--set", "ingest.max_docs=10", "--json", env=env).stdout)
    assert rerun["rerun_of"] == first["run_id"] and rerun["stages"][0]["status"] == "computed"
    assert rerun["stages"][0]["metrics"]["docs"] == 10
    assert rerun["stages"][0]["reason"] == "config changed: ingest.max_docs"


@pytest.mark.slow
def test_run_twice_on_s3(tmp_path, env, s3_endpoint, bucket):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    body = "".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(30)) + "{broken\n"
    client.put_object(Bucket=bucket, Key="raw/docs.jsonl", Body=body.encode())
    e = dict(env, K2_S3_ENDPOINT_URL=s3_endpoint, AWS_ACCESS_KEY_ID="k2-test-key", AWS_SECRET_ACCESS_KEY=SECRET,
             AWS_DEFAULT_REGION="us-east-1")
    store = f"s3://{bucket}/k2"
    e["K2_LOCAL_API"] = "ephemeral"       # Prefect's per-command API, as before the local server
    first, s = _run_twice_and_inspect(store, f"s3://{bucket}/raw/docs.jsonl", e, "prefect (ephemeral API)")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="k2/")["Contents"]]
    assert f"k2/artifacts/ingest/{s['version']}/manifest.json" in keys
    for key in keys:  # credentials appear in no manifest or run record
        if key.endswith(".json"):
            assert SECRET not in client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()


def _state(env) -> dict:
    return json.loads((Path(env["K2_HOME"]) / "prefect" / "api.json").read_text())


@pytest.mark.slow
def test_runs_share_the_local_server_that_k2_server_stop_stops(tmp_path, env):
    """No server configured: the first `k2 run` starts k2's local Prefect server (K2_HOME) and
    the next one reuses it; both runs' flow runs are on it, with no flow heartbeats (nothing on
    that server watches for them); `k2 server --stop` stops it."""
    import httpx

    src = write_jsonl(tmp_path / "docs.jsonl", [{"text": f"document {i}"} for i in range(20)])
    runs = []
    for store in ("a", "b"):
        runs.append(json.loads(k2("run", "--stages", "ingest", "--source", src, "--store", tmp_path / store,
                                  "--json", env=env).stdout))
        if store == "a":
            state = _state(env)
    assert _state(env)["pid"] == state["pid"] and runs[0]["orchestrator"] == runs[1]["orchestrator"]
    api = state["url"]
    assert runs[0]["orchestrator"] == f"prefect (local server {api.removesuffix('/api')})"
    for run in runs:
        for fr in (run["flow_run_id"], run["stages"][0]["flow_run_id"]):
            got = httpx.get(f"{api}/flow_runs/{fr}", timeout=10).json()
            assert got["state_type"] == "COMPLETED", got
    for fr in (runs[1]["flow_run_id"], runs[1]["stages"][0]["flow_run_id"]):
        events = flow_run_events(api, fr)
        assert "prefect.flow-run.Completed" in events and "prefect.flow-run.heartbeat" not in events, events
    # `k2 server` sees the running one instead of starting a second on the same database
    port = api.removesuffix("/api").rsplit(":", 1)[1]         # 4200, or a free port if that was taken
    assert "already running" in k2("server", "--port", port, env=env).stdout
    out = k2("server", "--stop", env=env).stdout
    assert f"stopped the Prefect server at {api.removesuffix('/api')} (pid {state['pid']})" in out
    assert not (Path(env["K2_HOME"]) / "prefect" / "api.json").exists()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{api}/health", timeout=2)
    assert k2("server", "--stop", env=env).stdout.strip() == "k2: no local Prefect server is running"


def _without_prefect(tmp_path, env) -> dict:
    """An environment in which `import prefect` fails, as on a bare GPU box."""
    site = tmp_path / "no-prefect"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\n"
        "class _NoPrefect:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'prefect' or name.startswith('prefect.'):\n"
        "            raise ImportError(f'prefect is not installed here ({name})')\n"
        "sys.meta_path.insert(0, _NoPrefect())\n")
    return dict(env, PYTHONPATH=os.pathsep.join([str(site), env.get("PYTHONPATH", "")]))


def test_run_without_prefect(tmp_path, env):
    """`k2 run --no-prefect` runs the stages in its own process — same run record, cache and gates —
    where Prefect cannot even be imported; a failed gate fails the run and names the stage."""
    e = _without_prefect(tmp_path, env)
    assert "ImportError" in subprocess.run([sys.executable, "-c", "import prefect"], env=e, capture_output=True,
                                           text=True).stderr
    src = write_jsonl(tmp_path / "docs.jsonl", [{"text": f"document {i}"} for i in range(30)] + ["{broken"])
    store = tmp_path / "store"
    run = json.loads(k2("run", "--no-prefect", "--stages", "ingest", "--source", src, "--store", store, "--json",
                        env=e).stdout)
    assert run["status"] == "completed" and run["orchestrator"].startswith("none (--no-prefect")
    [s] = run["stages"]
    assert s["status"] == "computed" and s["metrics"]["docs"] == 30 and s["flow_run_id"] is None
    assert (store / "artifacts" / "ingest" / s["version"] / "manifest.json").is_file()
    again = json.loads(k2("run", "--no-prefect", "--stages", "ingest", "--source", src, "--store", store, "--json",
                          env=e).stdout)
    assert [(x["status"], x["version"]) for x in again["stages"]] == [("cache_hit", s["version"])]
    # a gate that cannot pass: the run fails at ingest, its output kept under rejected/, nothing committed
    bad = k2("run", "--no-prefect", "--stages", "ingest", "--source", src, "--store", store,
             "--set", "ingest.max_reject_fraction=0", env=e, check=False)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr, bad.stderr[-2000:]
    assert "k2: error: ingest/" in bad.stderr and "gate_failed" in bad.stdout
    runs = json.loads(k2("runs", "--store", store, "--json", env=e).stdout)
    assert sorted(r["status"] for r in runs) == ["completed", "completed", "failed"]
