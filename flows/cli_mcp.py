"""`k2 mcp serve DOMAIN | list`: k2's executable domains as MCP servers (stdio or streamable HTTP),
and a look at what any MCP server offers (the tools stage's harvester, one server)."""
from __future__ import annotations

import json


def cmd_mcp_serve(args) -> int:
    from k2core.agentic.domains import get_domain
    from k2core.agentic.mcp import serve

    serve(get_domain(args.domain), args.transport, args.host, args.port, args.seed, args.size)
    return 0


def cmd_mcp_list(args) -> int:
    from k2core.agentic.mcp import harvest

    server = {"name": args.target, "url": args.target} if args.target.startswith(("http://", "https://")) else \
        {"name": args.target, "command": args.target, "args": args.args}
    h = harvest([server], timeout=args.timeout)[0]
    if args.json:
        print(json.dumps({"server": h.server, "status": h.status, "detail": h.detail, "protocol": h.protocol,
                          "pages": h.pages, "seconds": h.seconds, "tools": h.tools}))
    else:
        print(f"{h.server}: {h.status} {h.detail} ({len(h.tools)} tools, {h.pages} pages, {h.seconds:.2f} s, "
              f"protocol {h.protocol})")
        for t in h.tools:
            print(f"  {t['name']}: {(t['description'] or '').splitlines()[0] if t['description'] else ''}")
    return 0 if h.status == "ok" else 1


def register(sub) -> None:
    from k2core.agentic.domains import DOMAINS

    mp = sub.add_parser("mcp", help="k2's domains as MCP servers; list an MCP server's tools")
    msub = mp.add_subparsers(dest="mcp_command", required=True, metavar="SUBCOMMAND")
    sp = msub.add_parser("serve", help="serve an executable domain's tools over MCP (stdio by default)")
    sp.add_argument("domain", choices=sorted(DOMAINS))
    sp.add_argument("--transport", choices=["stdio", "http"], default="stdio",
                    help="stdio (default) or streamable HTTP at http://HOST:PORT/mcp")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=8765)
    sp.add_argument("--seed", type=int, default=0, help="the database's seed (default 0)")
    sp.add_argument("--size", type=int, default=20, help="the database's size (users, people, customers)")
    sp.set_defaults(func=cmd_mcp_serve)
    sp = msub.add_parser("list", help="start an MCP server (a command, or an http(s) URL), list its tools")
    sp.add_argument("target", help="a command (e.g. mcp-server-time) or a streamable-HTTP URL")
    sp.add_argument("args", nargs="*", help="the command's arguments")
    sp.add_argument("--timeout", type=float, default=30.0)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_mcp_list)
