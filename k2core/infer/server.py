"""An OpenAI-compatible HTTP server over an :class:`~k2core.infer.llm.LLM` (``k2 serve``):
``GET /v1/models``, ``POST /v1/completions`` (prompt: a string or a list of strings; max_tokens,
temperature, top_p, seed, stop), ``GET /health``. Enough for k2's own ``openai`` backend and for
OpenAI clients that use text completions."""
from __future__ import annotations

import time
import uuid
from typing import Any

from pydantic import BaseModel, Field

from k2core.infer.llm import LLM, LLMError, TextParams


class CompletionRequest(BaseModel):
    model: str | None = None
    prompt: str | list[str]
    max_tokens: int = Field(16, ge=1, le=32_768)
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=1)
    skip_special_tokens: bool = Field(True, description="vLLM's extension: False keeps special tokens (tool calls)")


def create_app(llm: LLM, model_name: str):
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI(title="k2 OpenAI-compatible server")

    def error(status: int, message: str, kind: str = "invalid_request_error"):
        return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "k2"}]}

    @app.post("/v1/completions")
    def completions(req: CompletionRequest):
        if req.model not in (None, model_name):
            return error(404, f"model {req.model!r} is not served here (serving {model_name!r})")
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts:
            return error(400, "prompt is empty")
        stop = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
        try:
            params = TextParams(max_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p,
                                seed=req.seed, stop=stop, keep_special=not req.skip_special_tokens)
            outs = llm.generate(prompts, params, progress=False)
        except (ValueError, LLMError) as e:
            return error(400, str(e))
        usage_p = sum(o.prompt_tokens or 0 for o in outs)
        usage_c = sum(o.completion_tokens or 0 for o in outs)
        return {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
                "model": model_name,
                "choices": [{"index": i, "text": o.text, "finish_reason": o.finish_reason, "logprobs": None}
                            for i, o in enumerate(outs)],
                "usage": {"prompt_tokens": usage_p, "completion_tokens": usage_c,
                          "total_tokens": usage_p + usage_c}}

    return app


def serve(llm: LLM, model_name: str, host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    uvicorn.run(create_app(llm, model_name), host=host, port=port, log_level="warning")
