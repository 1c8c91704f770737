"""The `tools` stage: the tool repository (K2 §3.2: real MCP tools + synthetic tools).

Sources, in priority order (an earlier source wins a duplicate):
1. **MCP servers**: each started, initialised, ``tools/list``-ed following cursors and shut down,
   with a timeout (k2core/agentic/mcp.py). Built in (``tools.builtin_servers``, on by default): k2's
   own domain servers (``k2 mcp serve DOMAIN``) and the real PyPI servers ``mcp-server-time`` and
   ``mcp-server-git``; a user's ``tools.mcp_servers`` are harvested beside them.
2. **Catalogue files** (``tools.files``, local or ``s3://``): MCP ``tools/list`` dumps (``{"tools":
   [...]}``) and OpenAI function schemas (``{"type": "function", "function": {...}}`` or the bare
   function object), as a JSON list / object or JSON Lines.
3. **Synthetic tools** by hierarchical evolution with the teacher (same engine interface as
   rephrasing): categories (``tools.synthetic.categories``, or, when that list is empty, named
   by the teacher: prompt ``categories.txt``) → application domains (prompt ``domains.txt``) →
   tools with name, description, parameters and returns (prompt ``tool.txt``), until
   ``tools.synthetic.count`` proposals.

Every tool is normalised to the OpenAI function schema (MCP's ``inputSchema``, ``outputSchema`` and
``annotations`` kept), validated with ``jsonschema`` (the parameters against the meta-schema and an
object at the root; names ``^[A-Za-z0-9_-]{1,64}$``), deduplicated exactly (name + canonical
parameters) and nearly (all-MiniLM-L6-v2 embeddings of name + description, cosine ≥
``near_dup_threshold``). Rejects keep their reason: invalid_json, invalid_schema, bad_name,
duplicate, near_duplicate, server_failed, server_timeout, unreadable_file.
"""
from __future__ import annotations

import hashlib
import json
import re
import string
import time
from pathlib import Path
from typing import Any

from k2core.errors import K2Error
from k2core.stage import StageContext, canonical

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
PROMPTS = Path(__file__).parent / "prompts" / "tools"
COLUMNS = ["tool_id", "name", "description", "parameters", "returns", "annotations", "source", "category", "domain",
           "executable"]
REASONS = ("invalid_json", "invalid_schema", "bad_name", "duplicate", "near_duplicate", "server_failed",
           "server_timeout", "unreadable_file")


# ---------------------------------------------------------------------------- normalise + validate
def normalise(raw: Any) -> dict[str, Any]:
    """An MCP tool, an OpenAI tool or a bare function object -> {name, description, parameters,
    returns, annotations}; raises ValueError when it is none of them."""
    if not isinstance(raw, dict):
        raise ValueError(f"a tool must be a JSON object, got {type(raw).__name__}")
    if raw.get("type") == "function" and isinstance(raw.get("function"), dict):
        raw = raw["function"]
    if "name" not in raw:
        raise ValueError("a tool needs a name")
    params = raw.get("parameters", raw.get("inputSchema", raw.get("input_schema")))
    returns = raw.get("returns", raw.get("outputSchema", raw.get("output_schema")))
    return {"name": raw["name"], "description": raw.get("description") or "",
            "parameters": params if params is not None else {"type": "object", "properties": {}},
            "returns": returns, "annotations": raw.get("annotations")}


def check(tool: dict[str, Any]) -> tuple[str, str] | None:
    """(reason, detail) when the normalised tool is not acceptable, else None."""
    import jsonschema

    name = tool["name"]
    if not isinstance(name, str) or not NAME.match(name):
        return "bad_name", f"{name!r} does not match {NAME.pattern}"
    for key in ("parameters", "returns"):
        schema = tool[key]
        if schema is None and key == "returns":
            continue
        if not isinstance(schema, dict):
            return "invalid_schema", f"{key} must be a JSON Schema object, got {type(schema).__name__}"
        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError as e:
            return "invalid_schema", f"{key}: {e.message}"[:300]
    if tool["parameters"].get("type") != "object":
        return "invalid_schema", f"parameters must have type object at the root, got {tool['parameters'].get('type')!r}"
    if not isinstance(tool["description"], str):
        return "invalid_schema", "description must be a string"
    return None


def tool_id(source: str, tool: dict[str, Any]) -> str:
    return hashlib.sha256(f"{source}\0{tool['name']}\0{canonical(tool['parameters'])}".encode()).hexdigest()[:16]


def openai_tool(row: dict[str, Any]) -> dict[str, Any]:
    """A repository row as an OpenAI tool (what an agent is offered)."""
    return {"type": "function", "function": {"name": row["name"], "description": row["description"],
                                             "parameters": json.loads(row["parameters"])}}


# ---------------------------------------------------------------------------- sources
def default_servers() -> list[dict[str, Any]]:
    from k2core.agentic.domains import DOMAINS

    return ([{"name": f"k2-{d}", "command": "k2", "args": ["mcp", "serve", d]} for d in DOMAINS]
            + [{"name": "time", "command": "mcp-server-time", "args": []},
               {"name": "git", "command": "mcp-server-git", "args": []}])


def servers_to_harvest(cfg) -> list[dict[str, Any]]:
    """The built-in servers (unless `tools.builtin_servers` is off) and the user's own
    (`tools.mcp_servers`), in that order; a user's server named like a built-in one replaces it."""
    own = [s.model_dump() for s in cfg.mcp_servers]
    names = {s["name"] for s in own}
    builtin = [s for s in default_servers() if s["name"] not in names] if cfg.builtin_servers else []
    return builtin + own


def read_catalogue(uri: str, endpoint_url: str | None = None, region: str | None = None) -> tuple[list[Any], list[str]]:
    """A catalogue file's tool objects, and the reasons for records that did not parse."""
    try:
        if uri.startswith("s3://"):
            from k2core.store import s3_client

            bucket, _, key = uri[5:].partition("/")
            data = s3_client(endpoint_url, region).get_object(Bucket=bucket, Key=key)["Body"].read().decode()
        else:
            data = Path(uri).expanduser().read_text()
    except Exception as e:  # noqa: BLE001 — a missing or unreadable file is a reject, the others go on
        raise K2Error(f"tools.files: cannot read {uri}: {type(e).__name__}: {e}") from None
    bad: list[str] = []
    if uri.endswith(".jsonl"):
        items = []
        for i, line in enumerate(data.splitlines()):
            if line.strip():
                try:
                    items.append(json.loads(line))
                except json.JSONDecodeError as e:
                    bad.append(f"line {i + 1}: {e.msg}")
        return items, bad
    try:
        obj = json.loads(data)
    except json.JSONDecodeError as e:
        return [], [f"{e.msg} at line {e.lineno} column {e.colno}"]
    if isinstance(obj, dict) and isinstance(obj.get("tools"), list):   # an MCP tools/list dump (or its result)
        return obj["tools"], bad
    if isinstance(obj, dict) and isinstance(obj.get("result"), dict) and isinstance(obj["result"].get("tools"), list):
        return obj["result"]["tools"], bad
    return (obj if isinstance(obj, list) else [obj]), bad


def fingerprint(cfg) -> dict[str, Any]:
    """The catalogue files' identity (size + mtime / ETag) and an explicitly named teacher's (the
    default teacher, this run's pretrain model, is an input already): new content, new version."""
    files = []
    for uri in cfg.tools.files:
        if uri.startswith("s3://"):
            files.append({"uri": uri})
            continue
        p = Path(uri).expanduser()
        files.append({"uri": str(p.resolve()), **({"size": p.stat().st_size, "mtime": p.stat().st_mtime_ns}
                                                   if p.exists() else {"missing": True})})
    from k2core.models import named_model

    teacher = named_model(cfg.tools.synthetic.teacher, cfg.store.open(), "tools.synthetic.teacher") \
        if cfg.tools.synthetic.count else None
    return {"files": files, "teacher": teacher.identity if teacher is not None else None}


# ---------------------------------------------------------------------------- synthetic tools
def _template(cfg, name: str) -> string.Template:
    for folder in ([Path(cfg.prompts_dir)] if cfg.prompts_dir else []) + [PROMPTS]:
        f = folder / f"{name}.txt"
        if f.exists():
            return string.Template(f.read_text())
    raise K2Error(f"tools.synthetic: no prompt {name}.txt")


def first_json_object(text: str) -> Any:
    """The first balanced JSON object at the start of `text` (a base model rambles on after it)."""
    depth, in_str, esc = 0, False, False
    for i, ch in enumerate(text):
        if in_str:
            esc = (ch == "\\") and not esc
            if ch == '"' and not esc:
                in_str = False
            continue
        if ch == '"':
            in_str = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return json.loads(text[:i + 1])
    raise json.JSONDecodeError("unterminated object", text, len(text))


def _names(text: str) -> list[str]:
    """The distinct list items of a generated list that look like names ("- flight booking")."""
    lines = [x.strip(" -*\t") for x in (" " + text).splitlines()]
    return list(dict.fromkeys(x for x in lines if 2 <= len(x) <= 60 and re.fullmatch(r"[A-Za-z][A-Za-z0-9 &/'-]*", x)))


def evolve(llm, cfg, log) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Hierarchical evolution: categories -> domains (one batched call) -> tools (batched calls
    until `count` proposals). Returns raw proposals (with category / domain, or a parse error)
    and the teacher's statistics."""
    from k2core.infer.llm import TextParams

    domains_t, tool_t = _template(cfg, "domains"), _template(cfg, "tool")
    params = TextParams(max_tokens=48, temperature=cfg.temperature, top_p=0.95, seed=cfg.seed, stop=["\n\n", "Category:"])
    category_calls = 0
    if cfg.categories:
        cats = list(cfg.categories)
    else:                                  # the teacher names the categories too
        [o] = llm.generate([_template(cfg, "categories").safe_substitute()], params, progress=False)
        category_calls = 1
        cats = _names(o.text)[:16]
    outs = llm.generate([domains_t.safe_substitute(category=c) for c in cats], params, progress=False) if cats else []
    pairs: list[tuple[str, str]] = []
    for c, o in zip(cats, outs):
        pairs += [(c, d.lower()) for d in _names(o.text)][: cfg.domains_per_category]
    stats = {"category_calls": category_calls, "categories": len(cats), "domain_calls": len(cats),
             "domains": len(pairs), "tool_calls": 0}
    if not pairs:
        log(f"tools: the teacher named no usable application domain for {len(cats)} categories")
        return [], stats
    proposals: list[dict[str, Any]] = []
    tparams = TextParams(max_tokens=cfg.max_tokens, temperature=cfg.temperature, top_p=0.95, seed=cfg.seed + 1,
                         stop=["\n\nCategory:", "\nCategory:"])
    r = 0
    while len(proposals) < cfg.count:
        batch = [pairs[(r * cfg.batch + i) % len(pairs)] for i in range(min(cfg.batch, cfg.count - len(proposals)))]
        tparams.seed = cfg.seed + 1 + r
        outs = llm.generate([tool_t.safe_substitute(category=c, domain=d) for c, d in batch], tparams, progress=False)
        stats["tool_calls"] += len(batch)
        for (c, d), o in zip(batch, outs):
            try:
                proposals.append({"raw": first_json_object('{"name": "' + o.text), "category": c, "domain": d})
            except (json.JSONDecodeError, ValueError) as e:
                proposals.append({"error": f"{e}", "text": o.text[:200], "category": c, "domain": d})
        r += 1
    return proposals, stats


# ---------------------------------------------------------------------------- the stage
def run(ctx: StageContext) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from k2core.agentic.mcp import harvest

    cfg = ctx.cfg
    t0 = time.monotonic()
    (ctx.workdir / "data").mkdir()
    (ctx.workdir / "rejects").mkdir()
    candidates: list[dict[str, Any]] = []        # {tool (normalised) | raw error, source, category, domain, executable}
    rejects: list[dict[str, Any]] = []
    servers_report = []

    def reject(source: str, name: str, reason: str, detail: str, raw: Any = None) -> None:
        rejects.append({"source": source, "name": str(name)[:100], "reason": reason, "detail": detail[:500],
                        "raw": json.dumps(raw, ensure_ascii=False, default=str)[:4000] if raw is not None else ""})

    def offer(raw: Any, source: str, category: str, domain: str, executable: bool) -> None:
        try:
            tool = normalise(raw)
        except ValueError as e:
            reject(source, (raw or {}).get("name", "") if isinstance(raw, dict) else "", "invalid_schema", str(e), raw)
            return
        candidates.append({"tool": tool, "source": source, "category": category, "domain": domain,
                           "executable": executable, "raw": raw})

    # 1. MCP servers
    from k2core.agentic.domains import DOMAINS

    servers = servers_to_harvest(cfg)
    with ctx.progress(total=len(servers), desc="tools: MCP servers", unit="server") as bar:
        for h in harvest(servers, timeout=cfg.server_timeout_s):
            own = h.server.removeprefix("k2-") if h.server.startswith("k2-") else None
            servers_report.append({"server": h.server, "status": h.status, "detail": h.detail, "tools": len(h.tools),
                                   "pages": h.pages, "seconds": h.seconds, "protocol": h.protocol})
            if h.status != "ok":
                reject(f"mcp:{h.server}", "", h.status, h.detail)
                ctx.log(f"tools: MCP server {h.server}: {h.status} ({h.detail})")
            for t in h.tools:
                offer(t, f"mcp:{h.server}", "customer service" if own in DOMAINS else "mcp",
                      own if own in DOMAINS else h.server, True)
            bar.update(1)
    # 2. catalogue files
    for uri in cfg.files:
        try:
            items, bad = read_catalogue(uri, ctx.pipeline.store.s3_endpoint_url, ctx.pipeline.store.s3_region)
        except K2Error as e:
            reject(f"file:{uri}", "", "unreadable_file", str(e))
            continue
        for why in bad:
            reject(f"file:{uri}", "", "invalid_json", why)
        for raw in items:
            offer(raw, f"file:{uri}", "catalogue", Path(uri).stem, False)
    # 3. synthetic tools from the teacher
    syn = cfg.synthetic
    teacher_stats: dict[str, Any] = {"teacher": "none", "proposals": 0}
    if syn.count:
        from k2core.infer.llm import open_model
        from k2core.models import artifact_model, named_model

        teacher = named_model(syn.teacher, ctx.store, "tools.synthetic.teacher") or \
            artifact_model(ctx.inputs.get("pretrain"), syn.teacher.engine)
        if teacher is None:
            ctx.log("tools: synthetic tools skipped — no teacher model (no pretrain model, no tools.synthetic.teacher)")
            teacher_stats["teacher"] = "none (no model)"
        else:
            with open_model(teacher, syn.teacher, ctx.store) as llm:
                proposals, st = evolve(llm, syn, ctx.log)
            teacher_stats = {"teacher": teacher.describe(), "proposals": len(proposals), **st}
            for p in proposals:
                if "error" in p:
                    reject("synthetic", "", "invalid_json", p["error"], p.get("text"))
                else:
                    offer(p["raw"], "synthetic", p["category"], p["domain"], False)
    # validate, exact dedup
    kept: list[dict[str, Any]] = []
    seen: dict[tuple[str, str], str] = {}
    for c in candidates:
        t = c["tool"]
        bad = check(t)
        if bad:
            reject(c["source"], t["name"], *bad, raw=c["raw"])
            continue
        key = (t["name"], canonical(t["parameters"]))
        if key in seen:
            reject(c["source"], t["name"], "duplicate", f"same name and parameters as a tool from {seen[key]}", c["raw"])
            continue
        seen[key] = c["source"]
        kept.append(c)
    # near dedup
    near = 0
    if cfg.near_dup_threshold < 1.0 and len(kept) > 1:
        from k2core.infer.fidelity import Embedder

        emb = Embedder().model.encode([f"{c['tool']['name'].replace('_', ' ')}: {c['tool']['description']}"
                                       for c in kept], normalize_embeddings=True, batch_size=64, show_progress_bar=False)
        sims = emb @ emb.T
        survivors = []
        for i, c in enumerate(kept):
            hit = next((j for j in survivors if sims[i, j] >= cfg.near_dup_threshold), None)
            if hit is not None:
                near += 1
                reject(c["source"], c["tool"]["name"], "near_duplicate",
                       f"cosine {sims[i, hit]:.3f} to {kept[hit]['tool']['name']} ({kept[hit]['source']})", c["raw"])
            else:
                survivors.append(i)
        kept = [kept[i] for i in survivors]
    rows = [{"tool_id": tool_id(c["source"], c["tool"]), "name": c["tool"]["name"],
             "description": c["tool"]["description"], "parameters": canonical(c["tool"]["parameters"]),
             "returns": canonical(c["tool"]["returns"]) if c["tool"]["returns"] is not None else None,
             "annotations": canonical(c["tool"]["annotations"]) if c["tool"]["annotations"] else None,
             "source": c["source"], "category": c["category"], "domain": c["domain"], "executable": c["executable"]}
            for c in kept]
    from schemas.agentic import validate

    schema_errors = sum(validate("tool", r) is not None for r in rows)
    schema = pa.schema([(c, pa.bool_() if c == "executable" else pa.string()) for c in COLUMNS])
    pq.write_table(pa.Table.from_pylist(rows, schema), ctx.workdir / "data" / "tools-00000.parquet")
    rschema = pa.schema([(c, pa.string()) for c in ("source", "name", "reason", "detail", "raw")])
    pq.write_table(pa.Table.from_pylist(rejects, rschema), ctx.workdir / "rejects" / "rejected-00000.parquet")
    per_source: dict[str, int] = {}
    for r in rows:
        per_source[r["source"]] = per_source.get(r["source"], 0) + 1
    per_category: dict[str, int] = {}
    for r in rows:
        per_category[r["category"]] = per_category.get(r["category"], 0) + 1
    reasons = {k: sum(r["reason"] == k for r in rejects) for k in REASONS}
    mcp_tools = sum(n for s, n in per_source.items() if s.startswith("mcp:"))
    servers_ok = sum(s["status"] == "ok" for s in servers_report)
    harvest_s = sum(s["seconds"] for s in servers_report)
    synthetic_ok = per_source.get("synthetic", 0)
    report = {"servers": servers_report, "per_source": per_source, "per_category": per_category, "reasons": reasons,
              "teacher": teacher_stats}
    (ctx.workdir / "report.json").write_text(json.dumps(report, indent=1))
    plot(per_source, per_category, reasons, ctx.workdir / "tools.png")
    calls = sum(teacher_stats.get(k, 0) for k in ("category_calls", "domain_calls", "tool_calls"))
    return {"tools": len(rows), "mcp_tools": mcp_tools, "file_tools": sum(n for s, n in per_source.items()
                                                                          if s.startswith("file:")),
            "synthetic_tools": synthetic_ok, "servers": len(servers_report), "servers_ok": servers_ok,
            "servers_failed": len(servers_report) - servers_ok, "rejected": len(rejects),
            "harvest_tools_per_s": round(sum(s["tools"] for s in servers_report) / harvest_s, 2) if harvest_s else None,
            "synthetic_proposals": teacher_stats.get("proposals", 0),
            "synthetic_accepted_per_call": round(synthetic_ok / calls, 4) if calls else None,
            "teacher": teacher_stats["teacher"], "near_duplicates": near,
            "per_source": per_source, **{f"rejected_{k}": v for k, v in reasons.items()},
            "ids_unique": int(len({r["tool_id"] for r in rows}) == len(rows)), "schema_errors": schema_errors,
            "mcp_shortfall": max(0, cfg.min_mcp_tools - mcp_tools), "seconds": round(time.monotonic() - t0, 2)}


def plot(per_source: dict[str, int], per_category: dict[str, int], reasons: dict[str, int], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4), dpi=110)
    for ax, data, title in ((axes[0], per_source, "Tools per source"), (axes[1], per_category, "Tools per category"),
                            (axes[2], reasons, "Rejected, by reason")):
        items = sorted(data.items(), key=lambda kv: kv[1])
        ax.barh([k for k, _ in items], [v for _, v in items], color="tab:orange" if "Rejected" in title else "tab:blue")
        ax.set(title=title, xlabel="tools")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def read_repository(art) -> list[dict[str, Any]]:
    from k2core.artifacts import read_artifact_rows

    return read_artifact_rows(art, COLUMNS, key="tool_id")
