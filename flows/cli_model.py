"""`k2 model info | init` and `k2 generate`: the model and the native engine from the command line."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

# Published figures the `info` table is checked against (K2 report Table 2; DeepSeek-V3 report).
PUBLISHED = {"k2-1t": (1.04e12, 32.6e9)}


def _overrides(items: list[str]) -> dict[str, Any]:
    from k2core.config import deep_merge, parse_override

    out: dict[str, Any] = {}
    for item in items:
        out = deep_merge(out, parse_override(item))
    return out


def _human(n: float) -> str:
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}" if n / div < 100 else f"{n / div:.1f}{unit}"
    return str(int(n))


def cmd_model_info(args) -> int:
    import torch

    from k2core.model import K2ForCausalLM, ModelConfig, param_counts
    from k2core.report import table

    cfg = ModelConfig.preset(args.preset, **_overrides(args.set))
    with torch.device("meta"):                 # shapes only: the 1T preset costs no memory
        model = K2ForCausalLM(cfg)
    built_total = sum(p.numel() for p in model.parameters())
    counts = param_counts(cfg)
    assert built_total == counts["total"], (built_total, counts["total"])   # the formula is the model
    info = {"preset": args.preset, **counts, "config": cfg.model_dump(mode="json")}
    pub = PUBLISHED.get(args.preset)
    if pub:
        info["published_total"], info["published_active"] = pub
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    rows = [{"what": "total parameters", "count": _human(counts["total"]), "exact": f"{counts['total']:,}"},
            {"what": "activated per token", "count": _human(counts["active"]), "exact": f"{counts['active']:,}"},
            {"what": "  of which embeddings + lm_head", "count": _human(counts["embedding"]),
             "exact": f"{counts['embedding']:,}"},
            {"what": "layers (dense + MoE)", "count": f"{counts['dense_layers']} + {counts['moe_layers']}", "exact": ""}]
    print(f"model preset {args.preset}: {_human(counts['total'])} total / {_human(counts['active'])} activated")
    print(table(rows, ["what", "count", "exact"]))
    if pub:
        print(f"published: {_human(pub[0])} total / {_human(pub[1])} activated "
              f"(computed from the published config.json: total {counts['total'] / pub[0] - 1:+.1%}, "
              f"activated {counts['active'] / pub[1] - 1:+.1%})")
    return 0


def cmd_model_init(args) -> int:
    import torch

    from k2core.model.checkpoint import init_checkpoint

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    out = init_checkpoint(args.preset, args.seed, args.out, dtype, **_overrides(args.set))
    print(f"wrote {args.preset} checkpoint (seed {args.seed}, {args.dtype}) to {out}")
    return 0


def cmd_generate(args) -> int:
    from pathlib import Path

    from k2core.infer import Engine, SamplingParams
    from k2core.model.checkpoint import CheckpointError

    tok = None
    if args.prompt is not None:
        tj = Path(args.checkpoint) / "tokenizer.json"
        if not tj.exists():
            raise CheckpointError(f"{args.checkpoint} has no tokenizer.json: use --prompt-ids, "
                                  "or a checkpoint from the pretrain stage")
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tj))
        prompt = tok.encode(args.prompt).ids
    else:
        try:
            prompt = [int(x) for x in args.prompt_ids.split(",") if x.strip()]
        except ValueError:
            raise SystemExit(f"k2 generate: --prompt-ids must be comma-separated integers, got {args.prompt_ids!r}")
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0 if args.greedy else args.temperature,
                            top_p=args.top_p, top_k=args.top_k, seed=args.seed,
                            stop_token_ids=[int(x) for x in args.stop_ids.split(",")] if args.stop_ids else [])
    engine = Engine.from_checkpoint(args.checkpoint, device=args.device)
    try:
        g = engine.generate([prompt], params, progress=False)[0]
    except ValueError as e:
        raise SystemExit(f"k2 generate: {e}")
    out: dict[str, Any] = {"prompt_ids": prompt, "token_ids": g.token_ids, "finish_reason": g.finish_reason}
    if tok is not None:
        out["text"] = tok.decode(g.token_ids)
    print(json.dumps(out))
    return 0


def register(sub) -> None:
    presets = "tiny, tiny-vllm, h200, k2-1t"
    m = sub.add_parser("model", help="model presets and checkpoints")
    msub = m.add_subparsers(dest="model_command", required=True, metavar="SUBCOMMAND")
    sp = msub.add_parser("info", help="total and activated parameters of a preset")
    sp.add_argument("--preset", default="tiny", help=presets)
    sp.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a model field")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_model_info)
    sp = msub.add_parser("init", help="write a randomly initialised Hugging Face-format checkpoint")
    sp.add_argument("--preset", default="tiny", help=presets)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", required=True, metavar="DIR")
    sp.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    sp.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a model field")
    sp.set_defaults(func=cmd_model_init)

    sp = sub.add_parser("generate", help="generate with the native engine; prints JSON")
    sp.add_argument("--checkpoint", required=True, metavar="DIR")
    src = sp.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt-ids", help="comma-separated token ids, e.g. 1,2,3")
    src.add_argument("--prompt", help="text (needs tokenizer.json in the checkpoint)")
    sp.add_argument("--max-tokens", type=int, default=32)
    sp.add_argument("--greedy", action="store_true", help="argmax decoding (same as --temperature 0)")
    sp.add_argument("--temperature", type=float, default=1.0)
    sp.add_argument("--top-p", type=float, default=1.0)
    sp.add_argument("--top-k", type=int, default=0)
    sp.add_argument("--seed", type=int, help="sampling seed (same seed, same tokens)")
    sp.add_argument("--stop-ids", help="comma-separated stop token ids (kept in the output)")
    sp.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    sp.set_defaults(func=cmd_generate)


    sp = sub.add_parser("serve", help="an OpenAI-compatible server (/v1/completions, /v1/chat/completions with "
                                         "tools) over a checkpoint")
    sp.add_argument("--checkpoint", required=True, metavar="DIR", help="a k2 checkpoint with tokenizer.json")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=8000)
    sp.add_argument("--model-name", help="the model id clients send (default: the checkpoint's name)")
    sp.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    sp.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    from k2core.infer.llm import LLMError, NativeLLM
    from k2core.infer.server import serve

    try:
        llm = NativeLLM(args.checkpoint, device=args.device)
    except LLMError as e:
        raise SystemExit(f"k2 serve: {e}")
    name = args.model_name or llm.model
    print(f"k2: serving {args.checkpoint} as model {name!r} at http://{args.host}:{args.port}/v1 "
          f"(POST /v1/completions, GET /v1/models)", flush=True)
    serve(llm, name, args.host, args.port)
    return 0
