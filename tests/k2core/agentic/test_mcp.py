"""MCP: `k2 mcp serve DOMAIN` answers a real MCP client's tools/list (paginated) and tools/call
over stdio and streamable HTTP; the harvester follows cursors, harvests the real PyPI servers,
and turns a server that dies, hangs or speaks garbage into a reason while the others go on."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import pytest

from k2core.agentic.domains.retail import Retail
from k2core.agentic.mcp import harvest, k2_server
from tests.conftest import free_port

K2 = str(Path(sys.executable).parent / "k2")


async def _session_calls(transport):
    from mcp import ClientSession

    async with transport as streams:
        async with ClientSession(streams[0], streams[1]) as s:
            await s.initialize()
            first = await s.list_tools()
            from mcp_types import PaginatedRequestParams

            second = await s.list_tools(params=PaginatedRequestParams(cursor=first.next_cursor))
            db = Retail.make_db(0, 20)
            user = next(iter(db.users.values()))
            found = await s.call_tool("find_user_id_by_name_zip", {"first_name": user.first_name,
                                                                   "last_name": user.last_name, "zip": user.zip})
            order = await s.call_tool("get_order_details", {"order_id": user.orders[0]})
            refused = await s.call_tool("get_order_details", {"order_id": "#nope"})
            return first, second, user, found, order, refused


def _check(first, second, user, found, order, refused):
    names = [t.name for t in first.tools + second.tools]
    assert first.next_cursor and len(first.tools) == 5 and sorted(names) == sorted(Retail.toolkit.specs())
    cancel = next(t for t in first.tools + second.tools if t.name == "cancel_pending_order")
    assert cancel.input_schema == Retail.toolkit.specs()["cancel_pending_order"].parameters   # one definition
    assert cancel.annotations.destructive_hint is True and cancel.output_schema is not None
    assert found.content[0].text == user.user_id and not found.is_error
    assert order.structured_content["order_id"] == user.orders[0]
    assert refused.is_error and "not found" in refused.content[0].text


def test_k2_mcp_serve_over_stdio():
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(command=K2, args=["mcp", "serve", "retail"])
    _check(*anyio.run(_session_calls, stdio_client(params)))


def test_k2_mcp_serve_over_streamable_http(tmp_path):
    from mcp.client.streamable_http import streamable_http_client

    port = free_port()
    proc = subprocess.Popen([K2, "mcp", "serve", "retail", "--transport", "http", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=(tmp_path / "log").open("w"))
    try:
        for _ in range(100):
            try:
                httpx.get(f"http://127.0.0.1:{port}/mcp", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/mcp"
        _check(*anyio.run(_session_calls, streamable_http_client(url)))
        [h] = harvest([{"name": "k2-retail-http", "url": url}], timeout=30)
        assert h.status == "ok" and h.pages == 2 and len(h.tools) == 9
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_harvest_real_servers_and_survive_broken_ones(tmp_path):
    garbage = tmp_path / "garbage.py"
    garbage.write_text("import sys\nfor line in sys.stdin:\n    print('this is not JSON-RPC', flush=True)\n")
    servers = [{"name": "time", "command": "mcp-server-time"}, k2_server("bank"),
               {"name": "dies", "command": sys.executable, "args": ["-c", "import sys; sys.exit(3)"]},
               {"name": "hangs", "command": sys.executable, "args": ["-c", "import time; time.sleep(60)"]},
               {"name": "garbage", "command": sys.executable, "args": [str(garbage)]},
               {"name": "missing", "command": "no-such-mcp-server-binary"},
               {"name": "git", "command": "mcp-server-git"}]
    t0 = time.monotonic()
    out = {h.server: h for h in harvest(servers, timeout=4)}
    assert time.monotonic() - t0 < 60
    assert out["time"].status == "ok" and {t["name"] for t in out["time"].tools} == {"get_current_time", "convert_time"}
    assert out["time"].tools[0]["annotations"]["readOnlyHint"] is True and out["time"].protocol
    assert out["git"].status == "ok" and len(out["git"].tools) == 12
    assert out["k2-bank"].status == "ok" and out["k2-bank"].pages == 1 and len(out["k2-bank"].tools) == 5
    assert out["dies"].status == "server_failed" and out["missing"].status == "server_failed"
    assert out["hangs"].status == "server_timeout" and "4 s" in out["hangs"].detail
    assert out["garbage"].status in ("server_failed", "server_timeout") and not out["garbage"].tools


def test_k2_mcp_list_cli():
    p = subprocess.run([K2, "mcp", "list", "mcp-server-time", "--json"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    import json

    d = json.loads(p.stdout)
    assert d["status"] == "ok" and len(d["tools"]) == 2
    bad = subprocess.run([K2, "mcp", "list", "no-such-mcp-server-binary"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "server_failed" in bad.stdout


@pytest.mark.parametrize("domain", ["travel", "calendar"])
def test_every_domain_serves(domain):
    [h] = harvest([k2_server(domain)], timeout=60)
    from k2core.agentic.domains import DOMAINS

    assert h.status == "ok" and sorted(t["name"] for t in h.tools) == sorted(DOMAINS[domain].toolkit.specs())
