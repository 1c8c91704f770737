"""infra/: the compose file and Kubernetes manifests are not run in CI; their syntax and wiring are
checked here — YAML, selectors, secrets, and every `k2 …` command parsed by the real CLI parser."""
from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from flows.cli import build_parser

INFRA = Path(__file__).resolve().parents[2] / "infra"


def _parses(cmd: list[str]) -> None:
    assert cmd[0] == "k2", cmd
    args = build_parser().parse_args(cmd[1:])           # SystemExit on an unknown flag
    assert args.func is not None


def test_compose_services_and_their_k2_commands():
    c = yaml.safe_load((INFRA / "compose.yaml").read_text())
    services = c["services"]
    assert {"postgres", "prefect-server", "minio", "dask-scheduler", "dask-worker", "cpu-worker",
            "gpu-worker"} <= set(services)
    for name, s in services.items():
        for dep in s.get("depends_on", []):
            assert dep in services, (name, dep)
        cmd = s.get("command")
        if cmd and cmd[0] == "k2":
            _parses([part.replace("${POSTGRES_PASSWORD}", "pw") for part in cmd])
    server = services["prefect-server"]["command"]
    assert server[server.index("--database-url") + 1].startswith("postgresql+asyncpg://")
    assert services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    env = services["cpu-worker"]["environment"]
    assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api" and env["K2_STORE"].startswith("s3://")
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"


def test_kubernetes_manifests_are_wired():
    docs = list(yaml.safe_load_all((INFRA / "k8s" / "k2.yaml").read_text()))
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    apps = {}
    for d in docs:
        assert d["apiVersion"] and d["metadata"]["name"]
        if d["kind"] in ("Deployment", "StatefulSet"):
            labels = d["spec"]["template"]["metadata"]["labels"]
            assert d["spec"]["selector"]["matchLabels"].items() <= labels.items(), d["metadata"]["name"]
            apps[labels["app"]] = d
    for d in docs:
        if d["kind"] == "Service":
            assert d["spec"]["selector"]["app"] in apps, d["metadata"]["name"]
    secret_keys, k2_commands = set(), []
    for d in apps.values():
        for ctr in d["spec"]["template"]["spec"]["containers"]:
            for e in ctr.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == "k2-secrets"
                    secret_keys.add(ref["key"])
            for ref in ctr.get("envFrom", []):
                assert ("ConfigMap", ref["configMapRef"]["name"]) in kinds
            cmd = ctr.get("command", [])
            if cmd[:2] == ["sh", "-c"]:
                cmd = shlex.split(cmd[2].replace("$(POSTGRES_PASSWORD)", "pw"))
            if cmd and cmd[0] == "k2":
                k2_commands.append(cmd)
    assert secret_keys == {"postgres-password", "minio-user", "minio-password"}   # as the header documents
    header = (INFRA / "k8s" / "k2.yaml").read_text().split("apiVersion")[0]
    assert all(f"--from-literal={k}=" in header for k in secret_keys)
    assert {c[1] for c in k2_commands} == {"server", "worker"}
    for cmd in k2_commands:
        _parses(cmd)
    gpu = apps["gpu-worker"]["spec"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] >= 1


@pytest.mark.parametrize("path", sorted(p.name for p in (INFRA / "launch").glob("*.yaml")))
def test_launch_config_files_parse(path):
    """Each shipped config loads; a GPU one (h200*) builds on the h200 profile, a CPU one on tiny."""
    from k2core.config import load_config

    assert load_config(config_file=INFRA / "launch" / path).profile == ("h200" if path.startswith("h200") else "tiny")
