"""Which Prefect API a `k2 run` records on, decided without importing Prefect; the local server's
state file (the server itself is started and stopped in tests/flows/test_cli.py)."""
import json
import os
import subprocess
import sys

import pytest


def _configured(env: dict[str, str]) -> str:
    code = "import sys; from flows.common import configured_api; print(configured_api()); " \
           "assert 'prefect' not in sys.modules"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_configured_api_from_the_environment_or_the_active_profile(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path)
    assert _configured(env) == "None"                         # no profiles.toml: nothing configured
    (tmp_path / "profiles.toml").write_text(
        'active = "team"\n[profiles.ephemeral]\nPREFECT_SERVER_ALLOW_EPHEMERAL_MODE = "true"\n'
        '[profiles.team]\nPREFECT_API_URL = "http://prefect.team:4200/api"\n')
    assert _configured(env) == "http://prefect.team:4200/api"
    assert _configured(dict(env, PREFECT_PROFILE="ephemeral")) == "None"
    assert _configured(dict(env, PREFECT_API_URL="http://127.0.0.1:9/api")) == "http://127.0.0.1:9/api"
    (tmp_path / "profiles.toml").write_text("not [ toml")
    assert _configured(env) == "None"                         # an unreadable profile is no server


def test_a_stale_state_file_is_no_server(tmp_path, monkeypatch):
    from flows import local_api

    monkeypatch.setenv("K2_HOME", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    local_api.write_state("http://127.0.0.1:9/api", dead.pid, tmp_path / "server.log")
    assert json.loads(local_api.state_file().read_text())["pid"] == dead.pid
    assert local_api.find() is None
    assert local_api.stop() is None and not local_api.state_file().exists()


def test_a_server_that_dies_while_starting_is_named_with_its_log(tmp_path):
    from flows.local_api import LocalAPI
    from k2core.errors import K2Error

    log = tmp_path / "server.log"
    log.write_text("Traceback ...\nOSError: [Errno 98] address already in use\n")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    with pytest.raises(K2Error, match=r"(?s)exited while starting; its log .*address already in use"):
        LocalAPI("http://127.0.0.1:9/api", proc.pid, log).wait(timeout=5)
