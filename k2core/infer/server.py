"""An OpenAI-compatible HTTP server over an :class:`~k2core.infer.llm.LLM` (``k2 serve``):
``GET /v1/models``, ``POST /v1/completions`` (prompt: a string, strings, token ids or lists of
them; max_tokens, temperature, top_p, seed, stop, ``echo``, ``logprobs`` — prompt log-probs and the
top N per position, as lm-evaluation-harness's ``local-completions`` needs for log-likelihood tasks),
vLLM's ``GET /tokenizer_info``, ``POST /tokenize`` and ``/detokenize`` (lm-eval's remote tokenizer), ``POST /v1/chat/completions`` (messages, tools, tool_choice,
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
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int = Field(16, ge=0, le=32_768, description="0 only with echo: score the prompt, generate nothing")
    echo: bool = Field(False, description="the prompt is returned before the completion (text, tokens, log-probs)")
    logprobs: int | None = Field(None, ge=0, le=20, description="log-probs of the returned tokens and the N most "
                                                                 "likely at each position")
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


def _scored_completions(llm: LLM, raw, req: CompletionRequest, params: TextParams):
    """Completions of token-id or text prompts with OpenAI's legacy ``logprobs`` object (tokens,
    token_logprobs, top_logprobs, text_offset) over the returned tokens — the prompt's too with
    ``echo`` (its first token has no log-prob: None). Generated ids include a final stop token, as
    vLLM returns them; the text stops before it."""
    tok = getattr(llm, "tokenizer", None)
    if tok is None:
        raise LLMError(f"echo / logprobs / token-id prompts need a k2 checkpoint backend, not {llm.backend}")
    if isinstance(raw, str) or isinstance(raw[0], str):
        prompt_ids = [tok.encode(p).ids for p in ([raw] if isinstance(raw, str) else raw)]
    else:
        prompt_ids = [raw] if isinstance(raw[0], int) else raw
    if req.max_tokens == 0:
        llm.check_ids(prompt_ids)
        outs = [Completion("", "length", len(x), 0, []) for x in prompt_ids]
    else:
        outs = llm.generate_ids(prompt_ids, params)
    scored = None
    if req.logprobs is not None:
        scored = llm.token_logprobs([x + (o.token_ids or []) for x, o in zip(prompt_ids, outs)], req.logprobs)
    choices = []
    for i, (x, o) in enumerate(zip(prompt_ids, outs)):
        text = (tok.decode(x, skip_special_tokens=False) if req.echo else "") + o.text
        lp = None
        if scored is not None:
            ids = x + (o.token_ids or [])
            lps, tops = scored[i]
            start = 0 if req.echo else len(x)
            pieces = [tok.id_to_token(t) or "" for t in ids[start:]]
            offsets, at = [], 0
            for piece in pieces:
                offsets.append(at)
                at += len(piece)
            top_dicts = []
            for t, top, own in zip(ids[start:], tops[start:], lps[start:]):
                if top is None:
                    top_dicts.append(None)
                    continue
                d = {tok.id_to_token(a) or str(a): v for a, v in top}
                d.setdefault(tok.id_to_token(t) or str(t), own)      # the returned token always listed (vLLM)
                top_dicts.append(d)
            lp = {"tokens": pieces, "token_logprobs": lps[start:], "top_logprobs": top_dicts, "text_offset": offsets}
        choices.append({"index": i, "text": text, "finish_reason": o.finish_reason, "logprobs": lp})
    return choices, outs


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
        raw = req.prompt
        if not raw:
            return error(400, "prompt is empty")
        if req.max_tokens == 0 and not req.echo:
            return error(400, "max_tokens = 0 needs echo = true (scoring the prompt)")
        stop = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
        by_ids = not isinstance(raw, str) and not isinstance(raw[0], str)
        try:
            params = TextParams(max_tokens=max(req.max_tokens, 1), temperature=req.temperature, top_p=req.top_p,
                                seed=req.seed, stop=stop, keep_special=not req.skip_special_tokens)
            if by_ids or req.echo or req.logprobs is not None:
                choices, outs = _scored_completions(llm, raw, req, params)
            else:
                outs = llm.generate([raw] if isinstance(raw, str) else raw, params, progress=False)
                choices = [{"index": i, "text": o.text, "finish_reason": o.finish_reason, "logprobs": None}
                           for i, o in enumerate(outs)]
        except (ValueError, LLMError) as e:
            return error(400, str(e))
        usage_p = sum(o.prompt_tokens or 0 for o in outs)
        usage_c = sum(o.completion_tokens or 0 for o in outs)
        return {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
                "model": model_name, "choices": choices,
                "usage": {"prompt_tokens": usage_p, "completion_tokens": usage_c,
                          "total_tokens": usage_p + usage_c}}

    tok = getattr(llm, "tokenizer", None)
    if tok is not None:
        # vLLM's tokenizer endpoints, which lm-eval's remote tokenizer reads (tokenizer_backend=remote)
        from k2core.text.special_tokens import EOS, PAD

        @app.get("/tokenizer_info")
        def tokenizer_info() -> dict[str, Any]:
            return {"eos_token": EOS, "bos_token": None, "pad_token": PAD,
                    "model_max_length": getattr(llm, "context_length", None), "tokenizer_class": "k2 (tokenizers BPE)"}

        @app.post("/tokenize")
        def tokenize(body: dict[str, Any]):
            text = body.get("prompt")
            if not isinstance(text, str):
                return error(400, "tokenize: expected {\"prompt\": string}")
            ids = tok.encode(text, add_special_tokens=bool(body.get("add_special_tokens", False))).ids
            return {"tokens": ids, "count": len(ids), "max_model_len": getattr(llm, "context_length", None)}

        @app.post("/detokenize")
        def detokenize(body: dict[str, Any]):
            ids = body.get("tokens")
            if not isinstance(ids, list) or not all(isinstance(t, int) for t in ids):
                return error(400, "detokenize: expected {\"tokens\": [int, ...]}")
            return {"prompt": tok.decode(ids, skip_special_tokens=False)}

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
