"""One text-generation interface for every LLM-backed stage (rephrasing, synthesis, rollouts,
evaluation), with interchangeable backends:

- ``native``: a k2 checkpoint (Hugging Face format + ``tokenizer.json``) on the native engine.
- ``openai``: any OpenAI-compatible server (``/v1/completions``): base URL, model, API key from an
  environment variable; per-request timeout, retries with exponential backoff on 429 / 5xx /
  connection errors (honouring ``Retry-After``), bounded concurrency. ``k2 serve`` is such a server
  over the native engine; vLLM's ``vllm serve`` is another.

Both take a batch of prompts and :class:`TextParams` and return :class:`Completion` objects in
prompt order. Seeds: prompt ``i`` of a seeded batch is sampled with ``seed + i`` by the openai
backend (requests run concurrently); the native backend seeds its batch generator once.
"""
from __future__ import annotations

import os
import random
import threading
import time
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from k2core.infer.engine import check_sampling
from k2core.progress import Progress
from k2core.stage import K2Error


class LLMError(K2Error):
    """A backend could not produce completions; the message names the backend, URL or checkpoint."""


@dataclass
class TextParams:
    max_tokens: int = 256
    temperature: float = 0.0          # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)

    def __post_init__(self):
        check_sampling(self.max_tokens, self.temperature, self.top_p)


@dataclass
class Completion:
    text: str
    finish_reason: str                # "stop" | "length"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


def cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """`text` up to the first stop string (excluded), and whether one was found."""
    hits = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[:min(hits)], True) if hits else (text, False)


class LLM(ABC):
    backend: str = ""
    model: str = ""

    @abstractmethod
    def generate(self, prompts: list[str], params: TextParams | None = None,
                 progress: bool = True) -> list[Completion]:
        ...

    def describe(self) -> str:
        return f"{self.backend}:{self.model}"


# ---------------------------------------------------------------------------- native
class NativeLLM(LLM):
    """A k2 checkpoint on the native engine; ``<|endoftext|>`` ends a completion."""

    backend = "native"

    def __init__(self, checkpoint: str | Path, device: str | None = None, max_batch: int | None = None):
        from tokenizers import Tokenizer

        from k2core.data.tokenize import EOS
        from k2core.infer import Engine
        from k2core.model.checkpoint import CheckpointError

        path = Path(checkpoint)
        if not (path / "tokenizer.json").exists():
            raise LLMError(f"native engine: {path} has no tokenizer.json (use a checkpoint from the pretrain stage)")
        try:
            self.engine = Engine.from_checkpoint(path, device=device)
        except CheckpointError as e:
            raise LLMError(f"native engine: {e}") from None
        if max_batch:
            self.engine.max_batch = max_batch
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        eos = self.tokenizer.token_to_id(EOS)
        self.stop_ids = [eos] if eos is not None else []
        self.model = path.name if path.name != "model" else path.parent.name
        self._lock = threading.Lock()            # one engine: requests from a server take turns

    def generate(self, prompts: list[str], params: TextParams | None = None,
                 progress: bool = True) -> list[Completion]:
        from k2core.infer import SamplingParams

        params = params or TextParams()
        ids = [self.tokenizer.encode(p).ids for p in prompts]
        for i, x in enumerate(ids):
            if not x:
                raise LLMError(f"native engine: prompt {i} encodes to no tokens")
        sp = SamplingParams(max_tokens=params.max_tokens, temperature=params.temperature, top_p=params.top_p,
                            seed=params.seed, stop_token_ids=self.stop_ids)
        with self._lock:
            gens = self.engine.generate(ids, sp, progress=progress)
        out = []
        for x, g in zip(ids, gens):
            toks = g.token_ids[:-1] if g.finish_reason == "stop" and g.token_ids and g.token_ids[-1] in self.stop_ids \
                else g.token_ids
            text, stopped = cut_at_stop(self.tokenizer.decode(toks), params.stop)
            out.append(Completion(text, "stop" if stopped or g.finish_reason == "stop" else "length",
                                  len(x), len(g.token_ids)))
        return out


# ---------------------------------------------------------------------------- openai
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class OpenAILLM(LLM):
    """Any OpenAI-compatible ``/v1/completions`` endpoint."""

    backend = "openai"

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = "OPENAI_API_KEY",
                 timeout: float = 120.0, retries: int = 4, backoff: float = 1.0, concurrency: int = 8):
        if not base_url.startswith(("http://", "https://")):
            raise LLMError(f"openai engine: base_url {base_url!r} must start with http:// or https://")
        if retries < 0 or concurrency < 1:
            raise LLMError("openai engine: retries must be >= 0 and concurrency >= 1")
        self.base_url, self.model = base_url.rstrip("/"), model
        self.api_key = os.environ.get(api_key_env) if api_key_env else None
        self.timeout, self.retries, self.backoff, self.concurrency = timeout, retries, backoff, concurrency
        self.attempts = 0                          # requests sent, retries included (telemetry, tests)
        self._count = threading.Lock()

    def _post(self, client, payload: dict) -> dict:
        import httpx

        url = f"{self.base_url}/completions"
        last = ""
        for attempt in range(self.retries + 1):
            with self._count:
                self.attempts += 1
            wait = self.backoff * 2 ** attempt * (0.5 + random.random() / 2)
            try:
                r = client.post(url, json=payload)
            except httpx.TimeoutException:
                last = f"timed out after {self.timeout:g} s"
            except httpx.TransportError as e:
                last = f"{type(e).__name__}: {e}"
            else:
                if r.status_code < 400:
                    try:
                        return r.json()
                    except ValueError:
                        raise LLMError(f"openai engine: {url} answered HTTP {r.status_code} with non-JSON: "
                                       f"{r.text[:200]!r}") from None
                last = f"HTTP {r.status_code}: {r.text[:300]}"
                if r.status_code not in RETRY_STATUS:
                    raise LLMError(f"openai engine: {url} refused the request ({last})")
                after = r.headers.get("retry-after")
                if after and after.replace(".", "", 1).isdigit():
                    wait = max(wait, float(after))
            if attempt < self.retries:
                time.sleep(wait)
        raise LLMError(f"openai engine: {url} failed after {self.retries + 1} attempts (last: {last})")

    def generate(self, prompts: list[str], params: TextParams | None = None,
                 progress: bool = True) -> list[Completion]:
        import httpx

        params = params or TextParams()
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

        def one(i: int, client) -> Completion:
            payload = {"model": self.model, "prompt": prompts[i], "max_tokens": params.max_tokens,
                       "temperature": params.temperature, "top_p": params.top_p}
            if params.seed is not None:
                payload["seed"] = params.seed + i
            if params.stop:
                payload["stop"] = params.stop
            body = self._post(client, payload)
            try:
                choice = body["choices"][0]
                text = choice["text"]
            except (KeyError, IndexError, TypeError):
                raise LLMError(f"openai engine: {self.base_url} returned no choices: {str(body)[:200]}") from None
            text, stopped = cut_at_stop(text, params.stop)
            usage = body.get("usage") or {}
            return Completion(text, "stop" if stopped else (choice.get("finish_reason") or "length"),
                              usage.get("prompt_tokens"), usage.get("completion_tokens"))

        out: list[Completion | None] = [None] * len(prompts)
        with httpx.Client(timeout=self.timeout, headers=headers) as client, \
                Progress(len(prompts) if progress else 0, f"generate ({self.describe()})", unit="prompt") as bar, \
                ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = {pool.submit(one, i, client): i for i in range(len(prompts))}
            for fut in futures:
                out[futures[fut]] = fut.result()
                bar.update(1)
        return out  # type: ignore[return-value]


def open_llm(engine: str, *, checkpoint: str | None = None, base_url: str | None = None,
             model: str | None = None, **kw) -> LLM:
    """The backend a stage's config names: ``native`` (checkpoint) or ``openai`` (base_url + model)."""
    if engine == "native":
        if not checkpoint:
            raise LLMError("engine native needs a checkpoint directory")
        return NativeLLM(checkpoint, **kw)
    if engine == "openai":
        if not base_url or not model:
            raise LLMError("engine openai needs base_url and model")
        return OpenAILLM(base_url, model, **kw)
    raise LLMError(f"engine {engine!r}: expected native or openai")
