"""The `vllm` backend's worker: run by the vLLM environment's Python (``make vllm-env``), not imported.

    python vllm_worker.py '{"model": CKPT_DIR, "dtype": "auto", "max_model_len": 2048, "seed": 0}'

Loads ``vllm.LLM`` once (token ids in and out: ``skip_tokenizer_init``, the parent process owns the
tokenizer), prints ``K2VLLM {"ready": ...}``, then answers one JSON request per stdin line —
``{"prompts": [[ids]], "params": [{"max_tokens", "temperature", "top_p", "seed", "stop_token_ids"}]}``
— with one ``K2VLLM {"outputs": [{"token_ids", "finish_reason"}]}`` line (or ``{"error": ...}``).
Only the standard library and vllm are imported here: this file runs outside k2's environment.
"""
import json
import sys

MARK = "K2VLLM "


def reply(obj) -> None:
    sys.stdout.write(MARK + json.dumps(obj) + "\n")
    sys.stdout.flush()


def engine_kwargs(opts: dict) -> dict:
    """``vllm.LLM`` arguments for a k2 checkpoint (token ids in and out).

    On the CPU platform vLLM's C++ rotary kernel is switched off (``-rotary_embedding``: its
    PyTorch implementation runs instead). vLLM 0.32's CPU kernel assumes a contiguous query, and MLA
    hands it the rope slice ``q[..., qk_nope_head_dim:]`` of a (tokens, heads, nope + rope) tensor:
    with tiny-vllm's 4 heads it rotates prompt token t by position 4t (the head stride taken for
    the token stride) and leaves the last three quarters of the prompt unrotated — measured on a
    trained checkpoint, where vLLM's log-probabilities drifted from the model after the first
    position; with it off they agree within 1e-6 (docs/benchmarks.md).
    """
    from vllm.platforms import current_platform

    kw = dict(model=opts["model"], skip_tokenizer_init=True, dtype=opts.get("dtype", "auto"),
              enforce_eager=opts.get("enforce_eager", True), max_model_len=opts.get("max_model_len"),
              gpu_memory_utilization=opts.get("gpu_memory_utilization", 0.5), seed=opts.get("seed", 0))
    if opts.get("max_num_seqs"):
        kw["max_num_seqs"] = opts["max_num_seqs"]
    if current_platform.is_cpu():
        kw["compilation_config"] = {"custom_ops": ["-rotary_embedding"]}
        import torch

        # On CPUs with AMX tiles vLLM picks its AMX MLA backend, whose weight packing takes only
        # bf16 / fp16 / int8 weights (measured: "expect weight to be bfloat16, float16, ..." at load
        # with float32); the reference CPU MLA backend serves any dtype.
        if torch.cpu._is_amx_tile_supported() and opts.get("dtype") in ("float32", "float", torch.float32):
            kw["attention_backend"] = "CPU_MLA"
    return kw


def main() -> None:
    opts = json.loads(sys.argv[1])
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(**engine_kwargs(opts))
    import vllm

    reply({"ready": True, "vllm": vllm.__version__})
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            params = [SamplingParams(max_tokens=p["max_tokens"], temperature=p["temperature"], top_p=p["top_p"],
                                     seed=p.get("seed"), stop_token_ids=p.get("stop_token_ids") or None,
                                     detokenize=False) for p in req["params"]]
            outs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in req["prompts"]], params,
                                use_tqdm=False)
            reply({"outputs": [{"token_ids": list(o.outputs[0].token_ids),
                                "finish_reason": o.outputs[0].finish_reason or "length"} for o in outs]})
        except Exception as e:   # noqa: BLE001 — reported to the parent, which raises LLMError
            reply({"error": f"{type(e).__name__}: {e}"})


if __name__ == "__main__":   # vLLM's engine may spawn processes: the guard is required
    main()
