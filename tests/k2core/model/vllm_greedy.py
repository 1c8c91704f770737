"""Run inside the vLLM environment (make's .venv-vllm): greedy-decode prompts with vllm.LLM.

usage: python vllm_greedy.py CHECKPOINT_DIR PROMPTS_JSON MAX_TOKENS DTYPE
prints VLLM_RESULT {"tokens": [[ids]], "logprobs": [[logprob of each chosen token]]}
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "k2core" / "infer"))
from vllm_worker import engine_kwargs  # noqa: E402 — the backend's own vllm.LLM arguments


def main() -> None:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    ckpt, prompts, max_tokens, dtype = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    llm = LLM(**engine_kwargs({"model": ckpt, "dtype": dtype, "gpu_memory_utilization": 0.3,
                               "max_model_len": 512, "max_num_seqs": len(prompts)}))
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, detokenize=False,
                            logprobs=1)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    tokens = [list(o.outputs[0].token_ids) for o in outs]
    logprobs = [[lp[t].logprob for t, lp in zip(o.outputs[0].token_ids, o.outputs[0].logprobs)] for o in outs]
    print("VLLM_RESULT " + json.dumps({"tokens": tokens, "logprobs": logprobs}), flush=True)


if __name__ == "__main__":   # vLLM's engine spawns processes: the guard is required
    main()
