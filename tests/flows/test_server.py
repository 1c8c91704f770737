"""k2 from the Prefect UI: `k2 server` on a free loopback port, `k2 deploy`, a `k2 worker`; runs
triggered through the API and through the UI in headless Chromium (Playwright)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from k2core.runs import list_runs
from k2core.store import open_store
from tests.conftest import flow_run_events, free_port

pytestmark = pytest.mark.slow

K2 = [sys.executable, "-m", "flows.cli"]
ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-artifacts" / "ui"
# small but real: the tiny profile, fewer documents and steps
SMALL = ["ingest.max_docs=300", "pretrain.steps=30", "pretrain.eval_every=10", "pretrain.min_loss_drop=0.1",
         "curate.dask_workers=1", "rephrase.enabled=false",     # (rephrase: tests/k2core/data/test_rephrase.py)
         "tools.synthetic.count=4", "synthesize.tasks_per_domain=6", "synthesize.coding_tasks=2",
         "synthesize.db_size=8", "synthesize.judge_sample=4", "synthesize.live.episodes=4",
         "synthesize.live.max_turns=2", "synthesize.live.max_tokens=32", "synthesize.live.simulated_tasks=0",
         "sft.steps=4", "sft.micro_batch=1", "sft.eval_every=2", "sft.eval_batches=2", "sft.checkpoint_every=2",
         "sft.warmup_steps=1", "sft.eval_turns=2", "sft.eval_tasks=1", "sft.eval_max_turns=1", "sft.eval_max_tokens=16",
         "rl.steps=2", "rl.eval_every=2", "rl.checkpoint_every=2", "rl.tasks=[instructions,math]",
         "rl.prompts_per_task=2", "rl.samples=2", "rl.heldout_prompts=2", "rl.max_draws=1",
         "rl.max_tokens={instructions: 12, math: 12}", "rl.ptx_seq_len=8192",
         "pretrain.probe.sequences=4", "sft.probe.sequences=4",
         "evaluate.humaneval.limit=3", "evaluate.humaneval.max_tokens=16", "evaluate.bfcl.limit=1",
         "evaluate.bfcl.max_tokens=16", "evaluate.agentic.tasks=1", "evaluate.agentic.trials=1",
         "evaluate.agentic.max_turns=1", "evaluate.agentic.max_tokens=16",
         "evaluate.suites=[humaneval,bfcl,agentic]"]   # the other suites: tests/k2core/eval (this test times the nightly)
STAGES = ["ingest", "curate", "rephrase", "tokenize", "pretrain", "tools", "synthesize", "sft", "rl", "evaluate"]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("k2-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, K2_HOME=str(tmp / "home"), K2_PROGRESS="0")
    env.pop("PREFECT_API_URL", None)
    procs = [_start([*K2, "server", "--port", str(port)], env, tmp / "server.log")]
    try:
        for _ in range(240):
            try:
                if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if procs[0].poll() is not None:
                pytest.fail("k2 server exited:\n" + (tmp / "server.log").read_text()[-3000:])
            time.sleep(0.5)
        else:
            pytest.fail("k2 server did not answer in 120 s:\n" + (tmp / "server.log").read_text()[-3000:])
        env["PREFECT_API_URL"] = f"{url}/api"
        store = tmp / "store"
        r = subprocess.run([*K2, "deploy", "--store", str(store), *[f"--set={s}" for s in SMALL]], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        assert "k2-pipeline/nightly" in r.stdout and "pretrain/on-demand" in r.stdout
        procs.append(_start([*K2, "worker"], env, tmp / "worker.log"))
        yield {"url": url, "api": f"{url}/api", "store": store, "tmp": tmp, "env": env}
    finally:
        for p in reversed(procs):
            _stop(p)


def _client(api: str):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    class _Ctx:
        def __enter__(self):
            self._s = temporary_settings({PREFECT_API_URL: api})
            self._s.__enter__()
            self._c = get_client(sync_client=True)
            return self._c.__enter__()

        def __exit__(self, *exc):
            self._c.__exit__(*exc)
            self._s.__exit__(*exc)

    return _Ctx()


def _wait(api: str, fr_id, timeout: float = 600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with _client(api) as c:
            fr = c.read_flow_run(fr_id)
        if fr.state is not None and fr.state.is_final():
            return fr
        time.sleep(2)
    raise AssertionError(f"flow run {fr_id} did not finish in {timeout} s")


def _children(api: str, parent_id) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with _client(api) as c:
        return c.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(
            any_=[parent_id])))


def test_deployments_schedule_and_typed_parameters(server):
    from prefect.exceptions import PrefectHTTPStatusError

    with _client(server["api"]) as c:
        dep = c.read_deployment_by_name("k2-pipeline/nightly")
        assert dep.work_pool_name == "k2-process"
        assert [s.schedule.cron for s in dep.schedules] == ["0 2 * * *"]
        assert dep.schedules[0].schedule.timezone == "UTC" and dep.schedules[0].active
        cfg = dep.parameters["config"]
        assert cfg["store"]["uri"] == str(server["store"]) and cfg["ingest"]["max_docs"] == 300
        schema = dep.parameter_openapi_schema
        assert "config" in schema["properties"] and schema["definitions"]["PretrainConfig"]["properties"]["steps"]
        for stage in STAGES:
            assert c.read_deployment_by_name(f"{stage}/on-demand").work_pool_name == "k2-process"
        # an invalid value is refused by the server before anything runs
        bad = {**cfg, "pretrain": {**cfg["pretrain"], "steps": 0}}
        with pytest.raises(PrefectHTTPStatusError, match="409|422") as e:
            c.create_flow_run_from_deployment(dep.id, parameters={"config": bad})
        assert "steps" in str(e.value.response.text)


def test_pipeline_deployment_runs_on_the_worker_then_a_nightly_rerun_is_incremental(server):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    api = server["api"]
    with _client(api) as c:
        dep = c.read_deployment_by_name("k2-pipeline/nightly")
        fr = c.create_flow_run_from_deployment(dep.id)
    fr = _wait(api, fr.id)
    assert fr.state.is_completed(), (fr.state.message, (server["tmp"] / "worker.log").read_text()[-4000:])
    kids = {k.flow_id: k for k in _children(api, fr.id)}
    assert len(kids) == len(STAGES) and all(k.state.is_completed() for k in kids.values())
    with _client(api) as c:
        names = {c.read_flow(k.flow_id).name for k in kids.values()}
        keys = {a.key for a in c.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[k.id for k in kids.values()])))}
    assert names == set(STAGES)
    assert {"k2-pretrain-summary", "k2-pretrain-gate", "k2-pretrain-plots", "k2-ingest-summary",
            "k2-tools-summary", "k2-synthesize-gate", "k2-synthesize-plots", "k2-rl-gate", "k2-rl-plots"} <= keys
    # a configured server keeps Prefect's flow heartbeats on the pipeline flow; its stage flows,
    # in the same process, send none (each heartbeat thread costs up to 1 s to join)
    assert "prefect.flow-run.heartbeat" in flow_run_events(api, fr.id, until="prefect.flow-run.heartbeat")
    for k in kids.values():
        events = flow_run_events(api, k.id)
        assert "prefect.flow-run.Completed" in events and "prefect.flow-run.heartbeat" not in events, events
    store = open_store(str(server["store"]))
    [rec] = [r for r in list_runs(store) if r.flow_run_id == str(fr.id)]
    assert rec.status == "completed" and [s.status for s in rec.stages] == ["computed"] * len(STAGES)
    # the nightly deployment decides promotion at the end of the run (the first one promotes)
    assert rec.promotion["promoted"] and rec.promotion["reason"].startswith("first promotion"), rec.promotion
    m = rec.stage("tools").metrics                          # the real MCP servers were harvested by the worker
    assert m["per_source"]["mcp:time"] == 2 and m["per_source"]["mcp:git"] == 12 and m["servers_failed"] == 0
    assert rec.stage("synthesize").metrics["per_origin"]["blueprint"] > 0

    # the nightly schedule's next run, now: nothing changed -> every stage a cache hit; then a
    # changed pretrain setting recomputes pretrain alone, and the record says why
    with _client(api) as c:
        again = c.create_flow_run_from_deployment(dep.id)
        changed = {**dep.parameters["config"]}
        changed["pretrain"] = {**changed["pretrain"], "steps": 31}
    again = _wait(api, again.id)
    assert again.state.is_completed()
    [rec] = [r for r in list_runs(store) if r.flow_run_id == str(again.id)]
    assert [s.status for s in rec.stages] == ["cache_hit"] * len(STAGES)
    with _client(api) as c:
        third = c.create_flow_run_from_deployment(dep.id, parameters={"config": changed})
    third = _wait(api, third.id)
    assert third.state.is_completed()
    [rec] = [r for r in list_runs(store) if r.flow_run_id == str(third.id)]
    # pretrain recomputes, and the stages that take its model (tools, synthesize, sft, rl, evaluate) with it
    assert [s.status for s in rec.stages] == ["cache_hit"] * 4 + ["computed"] * 6
    assert rec.stage("pretrain").reason == "config changed: pretrain.steps"
    assert rec.stage("synthesize").reason == "new input: pretrain, tools"


def test_ui_in_chromium_shows_the_schedule_and_runs_a_changed_parameter(server):
    from playwright.sync_api import expect, sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed (make test installs Debian's chromium)")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    url = server["url"]
    args = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(30_000)
        failures: list[str] = []
        page.on("response", lambda r: failures.append(f"{r.status} {r.request.method} {r.url}: {r.text()[:500]}")
                if r.status >= 400 else None)
        try:
            page.goto(f"{url}/deployments", wait_until="networkidle")
            row = page.get_by_role("row").filter(has_text="k2-pipeline")
            expect(row).to_contain_text("nightly")
            expect(row).to_contain_text("At 02:00 AM every day")
            page.screenshot(path=str(SCREENSHOTS / "deployments.png"))
            row.get_by_text("nightly", exact=True).click()
            page.get_by_role("button", name="Run", exact=True).click()
            page.get_by_text("Custom run").click()
            max_docs = page.locator(":text-is('Max Docs (Optional)')").locator(
                "xpath=ancestor::div[.//input][1]").locator("input").first
            expect(max_docs).to_have_value("300")
            max_docs.fill("120")
            page.screenshot(path=str(SCREENSHOTS / "custom-run.png"))
            # SQLite answers a write that meets a busy database with 503 (Prefect's Python client retries;
            # the UI shows "Something went wrong"): like a user, submit again
            for attempt in range(4):
                with page.expect_response(lambda r: r.url.endswith("/create_flow_run")) as created:
                    page.get_by_role("button", name="Submit").click()
                if created.value.status < 400:
                    break
                page.wait_for_timeout(2000)
            assert created.value.status < 400, failures
            fr = _wait(server["api"], _run_with_max_docs(server["api"], 120))   # the UI created it
            assert fr.state.is_completed(), fr.state.message
            page.goto(f"{url}/runs/flow-run/{fr.id}", wait_until="networkidle")
            expect(page.get_by_text("Completed").first).to_be_visible()
            page.screenshot(path=str(SCREENSHOTS / "flow-run.png"))
            pretrain = next(k for k in _children(server["api"], fr.id) if "pretrain" in _flow_name(server, k))
            page.goto(f"{url}/runs/flow-run/{pretrain.id}", wait_until="networkidle")
            page.get_by_role("tab", name="Artifacts").or_(page.get_by_text("Artifacts", exact=True)).first.click()
            for key in ("k2-pretrain-summary", "k2-pretrain-plots", "k2-pretrain-gate"):
                expect(page.get_by_text(key).first).to_be_visible()
            page.screenshot(path=str(SCREENSHOTS / "artifacts.png"))
            page.get_by_text("k2-pretrain-plots").first.click()          # the loss curve, as an image
            img = page.locator("img[alt='training.png']")
            expect(img).to_be_visible()
            assert img.evaluate("e => e.naturalWidth") > 500
            page.screenshot(path=str(SCREENSHOTS / "loss-curve.png"))
            synth = next(k for k in _children(server["api"], fr.id) if _flow_name(server, k) == "synthesize")
            page.goto(f"{url}/runs/flow-run/{synth.id}", wait_until="networkidle")
            page.get_by_role("tab", name="Artifacts").or_(page.get_by_text("Artifacts", exact=True)).first.click()
            page.get_by_text("k2-synthesize-plots").first.click()     # trajectories per domain / verdict, turns, tokens
            img = page.locator("img[alt='synthesize.png']")
            expect(img).to_be_visible()
            assert img.evaluate("e => e.naturalWidth") > 500
            page.screenshot(path=str(SCREENSHOTS / "synthesize.png"))
        except Exception as e:
            page.screenshot(path=str(SCREENSHOTS / "failure.png"))
            raise AssertionError(f"{e}\nfailed API calls from the UI: {failures}") from e
        finally:
            browser.close()


def _flow_name(server, fr) -> str:
    with _client(server["api"]) as c:
        return c.read_flow(fr.flow_id).name


def _run_with_max_docs(api: str, n: int, timeout: float = 60):
    """The id of the flow run whose config has ingest.max_docs == n (created from the UI form)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with _client(api) as c:
            for fr in c.read_flow_runs(limit=50):
                if (fr.parameters.get("config") or {}).get("ingest", {}).get("max_docs") == n:
                    return fr.id
        time.sleep(1)
    raise AssertionError(f"no flow run with ingest.max_docs = {n} was created")


def test_deploy_without_a_server_names_the_fix(monkeypatch, capsys):
    from flows.cli import main

    monkeypatch.setattr(os, "execvpe", lambda *a: pytest.fail(f"exec'd {a[1]} without a server"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert main(["deploy"]) == 1
    err = capsys.readouterr().err
    assert "no Prefect server" in err and "k2 server" in err and "PREFECT_API_URL" in err
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{free_port()}/api")   # nothing listens there
    assert main(["worker"]) == 1
    assert "does not answer" in capsys.readouterr().err


def test_a_bad_schedule_is_a_usage_error_before_any_server_call(monkeypatch, capsys):
    from flows.cli import main

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert main(["deploy", "--cron", "every night"]) == 2
    assert 'Invalid cron string: "every night"' in capsys.readouterr().err
    assert main(["deploy", "--timezone", "Mars/Olympus"]) == 2
    assert 'Invalid timezone: "Mars/Olympus"' in capsys.readouterr().err


def test_every_registered_stage_has_a_deployable_flow():
    import flows.stages
    from k2core.pipeline import stages

    for spec in stages():
        assert getattr(flows.stages, spec.name).name == spec.name
