"""MCP over the ``mcp`` SDK 2.x (POSTTRAIN_REFERENCE.md §4): k2's domains as real MCP servers, and
the harvester the ``tools`` stage runs against any server.

- :func:`domain_server` — an executable domain as an MCP server (``k2 mcp serve DOMAIN``, stdio or
  streamable HTTP): ``tools/list`` gives each toolkit tool's schema (paginated, with a cursor),
  read / write annotations and, for object results, its output schema; ``tools/call`` runs the
  toolkit on the server's database (seeded), a refusal coming back as ``is_error`` with the
  tool's message. One definition of each tool: the toolkit.
- :func:`harvest` — start each configured server (``{name, command, args, env}`` over stdio,
  ``{name, url}`` over streamable HTTP), initialise, ``tools/list`` following ``next_cursor``,
  shut it down, all under a per-server timeout; a server that fails, hangs or answers garbage is
  reported with a reason (``server_failed`` / ``server_timeout``) and the others are harvested.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from k2core.agentic.domains.base import Domain, ToolError, ToolType
from k2core.errors import K2Error


def domain_server(domain: type[Domain], seed: int = 0, size: int = 20, page_size: int = 5):
    """A low-level ``mcp`` Server over a fresh toolkit on the domain's seeded database."""
    import mcp_types as types
    from mcp.server.lowlevel import Server

    toolkit = domain.toolkit(domain.make_db(seed, size))
    specs = list(domain.toolkit.specs().values())

    def as_tool(s) -> types.Tool:
        obj = s.returns.get("type") == "object" or "$ref" in s.returns
        return types.Tool(name=s.name, description=s.description, input_schema=s.parameters,
                          output_schema=s.returns if obj else None,
                          annotations=types.ToolAnnotations(read_only_hint=s.kind is ToolType.READ,
                                                            destructive_hint=s.mutates_state,
                                                            idempotent_hint=s.kind is ToolType.READ))

    async def list_tools(ctx, params) -> types.ListToolsResult:
        start = int(params.cursor) if params is not None and params.cursor else 0
        page = specs[start:start + page_size]
        nxt = str(start + page_size) if start + page_size < len(specs) else None
        return types.ListToolsResult(tools=[as_tool(s) for s in page], next_cursor=nxt)

    async def call_tool(ctx, params) -> types.CallToolResult:
        try:
            out = toolkit.use_tool(params.name, params.arguments or {})
        except ToolError as e:
            return types.CallToolResult(content=[types.TextContent(text=str(e))], is_error=True)
        text = out if isinstance(out, str) else json.dumps(out, ensure_ascii=False, sort_keys=True)
        return types.CallToolResult(content=[types.TextContent(text=text)],
                                    structured_content=out if isinstance(out, dict) else None)

    return Server(f"k2-{domain.name}", version="1", instructions=domain.policy, on_list_tools=list_tools,
                  on_call_tool=call_tool)


def serve(domain: type[Domain], transport: str = "stdio", host: str = "127.0.0.1", port: int = 8765,
          seed: int = 0, size: int = 20) -> None:
    import anyio

    server = domain_server(domain, seed, size)
    if transport == "stdio":
        from mcp.server.stdio import stdio_server

        async def main() -> None:
            async with stdio_server() as (read, write):
                await server.run(read, write, server.create_initialization_options())
        anyio.run(main)
    elif transport == "http":
        import uvicorn

        uvicorn.run(server.streamable_http_app(), host=host, port=port, log_level="warning")
    else:
        raise K2Error(f"mcp serve: transport {transport!r}; expected stdio or http")


# ---------------------------------------------------------------------------- harvesting
@dataclass
class Harvest:
    server: str
    tools: list[dict[str, Any]] = field(default_factory=list)   # {name, description, input_schema, output_schema, annotations}
    status: str = "ok"                 # ok | server_failed | server_timeout
    detail: str = ""
    seconds: float = 0.0
    pages: int = 0
    protocol: str | None = None


def _tool_dict(t) -> dict[str, Any]:
    ann = t.annotations.model_dump(exclude_none=True, by_alias=True) if t.annotations is not None else None
    return {"name": t.name, "description": t.description or "", "input_schema": t.input_schema,
            "output_schema": t.output_schema, "annotations": ann}


def k2_server(domain: str) -> dict[str, Any]:
    """The config entry that starts k2's own MCP server for `domain` over stdio."""
    exe = shutil.which("k2")
    if exe and os.path.dirname(exe) == os.path.dirname(sys.executable):
        return {"name": f"k2-{domain}", "command": exe, "args": ["mcp", "serve", domain]}
    return {"name": f"k2-{domain}", "command": sys.executable, "args": ["-m", "flows.cli", "mcp", "serve", domain]}


async def _harvest_one(server: dict[str, Any], timeout: float, max_pages: int) -> Harvest:
    import anyio
    from mcp import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client
    from mcp_types import PaginatedRequestParams
    from mcp.client.streamable_http import streamable_http_client

    name = server.get("name") or server.get("command") or server.get("url") or "?"
    h = Harvest(str(name))
    t0 = time.monotonic()
    try:
        with anyio.fail_after(timeout):
            if server.get("url"):
                transport = streamable_http_client(server["url"])
            else:
                env = {**os.environ, **(server.get("env") or {})}
                command, args = server.get("command") or "", list(server.get("args") or [])
                resolved = shutil.which(command) or shutil.which(command, path=os.path.dirname(sys.executable))
                if resolved is None and command == "k2":      # k2 itself, not installed as a script
                    resolved, args = sys.executable, ["-m", "flows.cli", *args]
                params = StdioServerParameters(command=resolved or command, args=args, env=env)
                transport = stdio_client(params, errlog=open(os.devnull, "w"))
            async with transport as streams:
                read, write = streams[0], streams[1]
                async with ClientSession(read, write) as session:
                    init = await session.initialize()
                    h.protocol = getattr(init, "protocol_version", None)
                    cursor = None
                    while True:
                        res = await session.list_tools(params=PaginatedRequestParams(cursor=cursor) if cursor else None)
                        h.pages += 1
                        h.tools += [_tool_dict(t) for t in res.tools]
                        cursor = res.next_cursor
                        if not cursor or h.pages >= max_pages:
                            break
    except TimeoutError:
        h.status, h.detail = "server_timeout", f"no complete answer within {timeout:g} s"
        h.tools = []
    except Exception as e:  # noqa: BLE001 — any failure of a foreign server is a reason, not a crash
        h.status = "server_failed"
        h.detail = _describe_error(e)
        h.tools = []
    h.seconds = round(time.monotonic() - t0, 3)
    return h


def _describe_error(e: BaseException) -> str:
    inner = getattr(e, "exceptions", None)
    if inner:                                   # anyio task groups wrap the cause
        return _describe_error(inner[0])
    return f"{type(e).__name__}: {e}"[:300]


def harvest(servers: list[dict[str, Any]], timeout: float = 30.0, max_pages: int = 100) -> list[Harvest]:
    """Harvest each server in turn (each in its own event loop: a crash stays contained)."""
    import anyio

    return [anyio.run(_harvest_one, s, timeout, max_pages) for s in servers]
