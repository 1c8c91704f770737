"""An OpenAI-compatible HTTP server over an :class:`~k2core.infer.llm.LLM` (``k2 serve``):
``GET /v1/models``, ``POST /v1/completions`` (prompt: a string or a list of strings; max_tokens,
temperature, top_p, seed, stop), ``POST /v1/chat/completions`` (messages, tools, tool_choice,
sampling parameters, n, stream), ``GET /health``.

Chat requests are rendered in K2's chat format (k2core/text/chat.py); the answer's OpenAI
``tool_calls`` are parsed from the K2 tokens the model writes (special tokens are kept in the
decoded text whenever tools are in play). ``tool_choice``: ``auto`` (the model decides),
``none`` (tools are declared, no call is parsed), ``required`` (the generation starts inside a
tool-call section) or ``{"type": "function", "function": {"name": N}}`` (it starts inside a call of
N). ``stream: true`` sends server-sent events: content deltas as tokens arrive (native backend;
other backends send the whole answer as one delta), each tool call as one delta once complete,
then the finish reason, usage when ``stream_options.include_usage``, and ``[DONE]``."""
from __future__ import annotations

import time
import uuid
from typing import Any

from pydantic import BaseModel, Field

from k2core.infer.llm import LLM, Completion, LLMError, TextParams


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


class ChatRequest(BaseModel):
    model: str | None = None
    messages: list[dict[str, Any]] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] = "auto"
    max_tokens: int | None = Field(None, ge=1, le=32_768)
    max_completion_tokens: int | None = Field(None, ge=1, le=32_768)
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: dict[str, Any] | None = None


def _prefix(req: ChatRequest) -> str:
    """What the answer is forced to start with: nothing, a tool-call section, or a call of one tool
    (its id numbered after the conversation's earlier calls)."""
    from k2core.text import chat
    from k2core.text.special_tokens import TOOL_CALL_ARGUMENT_BEGIN, TOOL_CALL_BEGIN, TOOL_CALLS_BEGIN

    choice = req.tool_choice
    if choice == "required":
        return TOOL_CALLS_BEGIN
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if not name:
            raise ValueError("tool_choice: expected {'type': 'function', 'function': {'name': ...}}")
        if name not in {t.get("function", {}).get("name") for t in req.tools or []}:
            raise ValueError(f"tool_choice names {name!r}, which is not among the request's tools")
        calls = sum(len(m.get("tool_calls") or []) for m in req.messages)
        return f"{TOOL_CALLS_BEGIN}{TOOL_CALL_BEGIN}{chat.call_id(name, calls)}{TOOL_CALL_ARGUMENT_BEGIN}"
    if choice not in ("auto", "none"):
        raise ValueError(f"tool_choice {choice!r}: expected auto, none, required or a function")
    return ""


def _message(req: ChatRequest, text: str) -> tuple[dict[str, Any], bool]:
    """The assistant message for generated `text` (after the forced prefix), and whether it calls."""
    from k2core.text import chat

    if req.tool_choice == "none" or not req.tools:
        content = chat.parse(text)["content"] if req.tools else text
        return {"role": "assistant", "content": content}, False
    msg = chat.parse(text)
    out = {"role": "assistant", "content": msg.get("content")}
    if msg.get("tool_calls"):
        out["tool_calls"] = msg["tool_calls"]
    return out, bool(msg.get("tool_calls"))


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

    def chat_setup(req: ChatRequest):
        from k2core.text import chat

        if req.model not in (None, model_name):
            raise LookupError(f"model {req.model!r} is not served here (serving {model_name!r})")
        tools = req.tools or None
        prefix = _prefix(req)
        prompt = chat.render(req.messages, tools, add_generation_prompt=True) + prefix
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        params = TextParams(max_tokens=req.max_completion_tokens or req.max_tokens or 512, temperature=req.temperature,
                            top_p=req.top_p, seed=req.seed, stop=sorted(set(stop) | set(chat.STOP)),
                            keep_special=bool(tools))
        if not llm.fits(prompt, params.max_tokens):
            raise ValueError(f"the conversation plus max_tokens ({params.max_tokens}) exceeds the model's context")
        return prompt, prefix, params

    @app.post("/v1/chat/completions")
    def chat_completions(req: ChatRequest):
        from k2core.text.chat import ChatFormatError

        try:
            prompt, prefix, params = chat_setup(req)
        except LookupError as e:
            return error(404, str(e))
        except (ValueError, ChatFormatError) as e:
            return error(400, str(e))
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if req.stream:
            if req.n != 1:
                return error(400, "stream with n > 1 is not supported")
            from fastapi.responses import StreamingResponse

            return StreamingResponse(stream_chat(req, prompt, prefix, params, cid, created),
                                     media_type="text/event-stream")
        try:
            outs = llm.generate([prompt] * req.n, params, progress=False)
        except (ValueError, LLMError) as e:
            return error(400, str(e))
        choices = []
        for i, o in enumerate(outs):
            msg, called = _message(req, prefix + o.text)
            choices.append({"index": i, "message": msg, "logprobs": None,
                            "finish_reason": "tool_calls" if called else o.finish_reason})
        usage_p = outs[0].prompt_tokens or 0
        usage_c = sum(o.completion_tokens or 0 for o in outs)
        return {"id": cid, "object": "chat.completion", "created": created, "model": model_name, "choices": choices,
                "usage": {"prompt_tokens": usage_p, "completion_tokens": usage_c, "total_tokens": usage_p + usage_c}}

    def stream_chat(req: ChatRequest, prompt: str, prefix: str, params: TextParams, cid: str, created: int):
        import json

        tools_active = bool(req.tools) and req.tool_choice != "none"

        def event(delta: dict[str, Any], finish: str | None = None, **extra) -> str:
            chunk = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                     "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}
            return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

        yield event({"role": "assistant", "content": ""})
        pieces = llm.stream(prompt, params) if hasattr(llm, "stream") else None
        text, sent, final = prefix, 0, None
        try:
            if pieces is None:
                [final] = llm.generate([prompt], params, progress=False)
                text += final.text
            else:
                for piece in pieces:
                    if isinstance(piece, Completion):
                        final = piece
                        break
                    text += piece
                    # content streams up to where a tool-call section may begin (a special token's
                    # "<|"); the calls follow whole, once parsed
                    visible = text.split("<|", 1)[0] if tools_active else text
                    if len(visible) > sent and not prefix:
                        yield event({"content": visible[sent:]})
                        sent = len(visible)
        except (ValueError, LLMError) as e:
            yield f"data: {json.dumps({'error': {'message': str(e), 'type': 'server_error'}})}\n\n"
            yield "data: [DONE]\n\n"
            return
        msg, called = _message(req, text)
        content = msg.get("content") or ""
        if len(content) > sent:
            yield event({"content": content[sent:]})
        for i, c in enumerate(msg.get("tool_calls") or []):
            yield event({"tool_calls": [{"index": i, **c}]})
        yield event({}, "tool_calls" if called else final.finish_reason)
        if (req.stream_options or {}).get("include_usage"):
            p, c = final.prompt_tokens or 0, final.completion_tokens or 0
            chunk = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                     "choices": [], "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}}
            yield f"data: {json.dumps(chunk)}\n\n"
        yield "data: [DONE]\n\n"

    return app


def serve_in_thread(llm: LLM, model_name: str, host: str = "127.0.0.1", port: int = 0):
    """The app on a background thread (tests, benchmarks): (uvicorn server, base URL ending in
    /v1); port 0 takes a free one. ``server.should_exit = True`` stops it."""
    import socket
    import threading
    import time

    import uvicorn

    if port == 0:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(llm, model_name), host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise LLMError(f"k2 serve: the server on {host}:{port} did not start")
        time.sleep(0.05)
    return server, f"http://{host}:{port}/v1"


def serve(llm: LLM, model_name: str, host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    uvicorn.run(create_app(llm, model_name), host=host, port=port, log_level="warning")
