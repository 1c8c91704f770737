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


def main() -> None:
    opts = json.loads(sys.argv[1])
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=opts["model"], skip_tokenizer_init=True, dtype=opts.get("dtype", "auto"),
              enforce_eager=opts.get("enforce_eager", True), max_model_len=opts.get("max_model_len"),
              gpu_memory_utilization=opts.get("gpu_memory_utilization", 0.5), seed=opts.get("seed", 0))
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
