"""Shared fixtures: local and S3 stores (moto's real HTTP server on loopback), Prefect harness."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.pop("PREFECT_API_URL", None)
os.environ["K2_PROGRESS"] = "0"

SECRET = "k2-test-secret-never-printed"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 HTTP API on loopback (moto server mode); boto3 talks to it unchanged."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update(AWS_ACCESS_KEY_ID="k2-test-key", AWS_SECRET_ACCESS_KEY=SECRET,
                      AWS_DEFAULT_REGION="us-east-1")
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_endpoint, request):
    import boto3

    import hashlib

    name = "k2-" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:16]
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    from k2core.store import open_store

    if request.param == "local":
        return open_store(str(tmp_path / "store"))
    endpoint = request.getfixturevalue("s3_endpoint")
    name = request.getfixturevalue("bucket")
    os.environ["K2_CACHE"] = str(tmp_path / "cache")
    return open_store(f"s3://{name}/k2", endpoint_url=endpoint, region="us-east-1")


def write_jsonl(path: Path, rows: list) -> Path:
    """Rows are dicts (JSON-encoded) or raw bytes/str lines written as they are."""
    with open(path, "wb") as f:
        for r in rows:
            if isinstance(r, bytes):
                f.write(r + b"\n")
            elif isinstance(r, str):
                f.write(r.encode() + b"\n")
            else:
                f.write(json.dumps(r).encode() + b"\n")
    return path


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


# ---------------------------------------------------------------------------- toy stages
# Test doubles downstream of the real `ingest`: they exercise the contract (inputs, gates,
# crashes, skips) without waiting for the later issues' stages. Unit tests only.
def _wc_run(ctx):
    import pyarrow as pa
    import pyarrow.parquet as pq

    art = next(iter(ctx.inputs.values()))  # toy stages take one input
    ids, chars = [], []
    for rel in art.files("data/"):
        t = pq.read_table(art.path(rel), columns=["id", "n_chars"])
        ids += t.column("id").to_pylist()
        chars += t.column("n_chars").to_pylist()
    if os.environ.get("K2_TEST_CRASH") == ctx.stage:
        (ctx.workdir / "data").mkdir()
        pq.write_table(pa.table({"id": ids[:1], "n_chars": chars[:1]}), ctx.workdir / "data" / "half.parquet")
        os._exit(9)  # like kill -9: no cleanup, no exception handling
    (ctx.workdir / "data").mkdir()
    pq.write_table(pa.table({"id": ids, "n_chars": chars}), ctx.workdir / "data" / "counts.parquet")
    (ctx.workdir / "counts.png").write_bytes(_png_1x1())      # a "plot", published to the UI
    return {"rows": len(ids), "chars": sum(chars)}


def _png_1x1() -> bytes:
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00\x80")) + chunk(b"IEND", b""))


def _suite(min_rows):
    def suite(cfg):
        return {"name": "toy", "columns": ["id"],
                "expectations": [{"type": "ExpectColumnValuesToBeUnique", "column": "id"}],
                "metric_checks": [{"metric": "rows", "min": min_rows}]}
    return suite


@pytest.fixture
def toy_stages():
    """toy_wc (ingest -> counts), toy_strict (a gate that always fails), toy_after (downstream)."""
    from k2core.pipeline import register, stages, unregister
    from k2core.stage import StageSpec

    stages()  # built-ins first
    specs = [
        StageSpec("toy_wc", "ingest", ("ingest",), _wc_run, _suite(1), "1", description="toy"),
        StageSpec("toy_strict", "ingest", ("toy_wc",), _wc_run, _suite(10**9), "1", description="toy"),
        StageSpec("toy_after", "ingest", ("toy_strict",), _wc_run, _suite(1), "1", description="toy"),
    ]
    for s in specs:
        register(s)
    yield specs
    for s in reversed(specs):
        unregister(s.name)


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need CUDA: skipped (with the reason) on machines without it, like CI."""
    if not any("gpu" in item.keywords for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the device machine; figures in docs/benchmarks.md)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


class JSONHandler:
    """Mixin for test HTTP servers (http.server handlers): read a JSON body, answer JSON, stay quiet."""

    def read_json(self) -> dict:
        return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

    def answer(self, status: int, obj) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


def flow_run_events(api: str, flow_run_id, wait: float = 30.0, until: str = "prefect.flow-run.Completed") -> list[str]:
    """Names of the events a Prefect server stored for a flow run, once `until` is among them (the
    server stores events asynchronously), or whatever is there after `wait` seconds."""
    import time

    import httpx

    deadline = time.monotonic() + wait
    while True:
        r = httpx.post(f"{api}/events/filter", json={"filter": {
            "resource": {"id": [f"prefect.flow-run.{flow_run_id}"]}}, "limit": 50}, timeout=10)
        r.raise_for_status()
        names = [e["event"] for e in r.json()["events"]]
        if until in names or time.monotonic() > deadline:
            return names
        time.sleep(0.5)
