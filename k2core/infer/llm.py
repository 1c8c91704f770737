"""One text-generation interface for every LLM-backed stage (rephrasing, synthesis, rollouts,
evaluation), with interchangeable backends:

- ``native``: a k2 checkpoint (Hugging Face format + ``tokenizer.json``) on the native engine.
- ``vllm``: the same checkpoint on vLLM's offline engine (``vllm.LLM``), run by a persistent worker
  in vLLM's own environment (``make vllm-env``; ``$K2_VLLM_PYTHON``).
- ``openai``: any OpenAI-compatible server (``/v1/completions``): base URL, model, API key from an
  environment variable; per-request timeout, retries with exponential backoff on 429 / 5xx /
  connection errors (honouring ``Retry-After``), bounded concurrency. ``k2 serve`` is such a server
  over the native engine; vLLM's ``vllm serve`` is another.

All take a batch of prompts and :class:`TextParams` and return :class:`Completion` objects in
prompt order. Seeds: prompt ``i`` of a seeded batch is sampled with ``seed + i`` by the openai and
vllm backends; the native backend seeds its batch generator once.
"""
from __future__ import annotations

import json
import os
import queue
import random
import subprocess
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from k2core.infer.engine import check_sampling
from k2core.progress import Progress
from k2core.errors import K2Error


class LLMError(K2Error):
    """A backend could not produce completions; the message names the backend, URL or checkpoint."""


@dataclass
class TextParams:
    max_tokens: int = 256
    temperature: float = 0.0          # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    keep_special: bool = False        # keep special tokens in the text (chat turns: tool calls are special tokens)

    def __post_init__(self):
        check_sampling(self.max_tokens, self.temperature, self.top_p)


@dataclass
class Completion:
    text: str
    finish_reason: str                # "stop" | "length"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    token_ids: list[int] | None = None  # every generated id, a final stop token included (checkpoint backends)


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

    def generate_ids(self, prompt_ids: list[list[int]], params: TextParams | None = None) -> list[Completion]:
        """Generate from token-id prompts (`/v1/completions` with token ids, lm-eval's tokenized requests)."""
        raise LLMError(f"the {self.backend} backend takes text prompts only (token ids: the native backend)")

    def token_logprobs(self, sequences: list[list[int]], top: int = 0) -> list[tuple[list, list]]:
        """Per sequence: the log-prob of each token given the ones before it (None for the first)
        and, when `top` > 0, the `top` most likely (id, log-prob) at each position (None first)."""
        raise LLMError(f"the {self.backend} backend gives no log-probs (echo / logprobs: the native backend)")

    def fits(self, prompt: str, max_tokens: int) -> bool:
        """Whether `prompt` plus `max_tokens` fits the model's context (unknown for a server: yes)."""
        return True

    def close(self) -> None:
        """Release what the backend holds (the vllm backend's worker process)."""

    def __enter__(self) -> "LLM":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------- k2 checkpoints
class _CheckpointLLM(LLM):
    """Shared by the backends that run a k2 checkpoint: its ``tokenizer.json`` turns prompts into
    ids and ids into text; ``<|endoftext|>`` ends a completion; stop strings cut the text."""

    def _load_tokenizer(self, path: Path) -> None:
        from tokenizers import Tokenizer

        if not (path / "tokenizer.json").exists():
            raise LLMError(f"{self.backend} engine: {path} has no tokenizer.json (use a checkpoint from the "
                           "pretrain stage)")
        self._set_tokenizer(Tokenizer.from_file(str(path / "tokenizer.json")),
                            path.name if path.name != "model" else path.parent.name)

    def _set_tokenizer(self, tokenizer, name: str) -> None:
        from k2core.text.special_tokens import EOS

        self.tokenizer = tokenizer
        self._encoded: dict[str, list[int]] = {}      # prompts encoded by fits(), for the next generate
        eos = self.tokenizer.token_to_id(EOS)
        self.stop_ids = [eos] if eos is not None else []
        self.model = name

    context_length: int | None = None

    def fits(self, prompt: str, max_tokens: int) -> bool:
        """Also keeps the prompt's ids for the generate call that follows (a rollout round checks
        every prompt, then generates them: one encode each, not two)."""
        if self.context_length is None:
            return True
        ids = self.tokenizer.encode(prompt).ids
        if len(self._encoded) > 4096:
            self._encoded.clear()
        self._encoded[prompt] = ids
        return len(ids) + max_tokens <= self.context_length

    def _encode(self, prompts: list[str]) -> list[list[int]]:
        ids = [self._encoded.pop(p, None) or self.tokenizer.encode(p).ids for p in prompts]
        for i, x in enumerate(ids):
            if not x:
                raise LLMError(f"{self.backend} engine: prompt {i} encodes to no tokens")
        return ids

    def _stop_ids(self, params: TextParams) -> list[int]:
        """EOS, plus every stop string that is one token of the vocabulary (``<|im_end|>``): the
        engine stops on it instead of generating to max_tokens and cutting."""
        from k2core.text.special_tokens import SPECIAL_TOKENS

        extra = [self.tokenizer.token_to_id(s) for s in params.stop if s in SPECIAL_TOKENS]
        return self.stop_ids + [i for i in extra if i is not None and i not in self.stop_ids]

    def _completion(self, prompt_ids: list[int], token_ids: list[int], finish: str, params: TextParams) -> Completion:
        stops = self._stop_ids(params)
        toks = token_ids[:-1] if finish == "stop" and token_ids and token_ids[-1] in stops else token_ids
        text, stopped = cut_at_stop(self.tokenizer.decode(toks, skip_special_tokens=not params.keep_special),
                                    params.stop)
        return Completion(text, "stop" if stopped or finish == "stop" else "length", len(prompt_ids), len(token_ids),
                          list(token_ids))

    def check_ids(self, prompt_ids: list[list[int]], max_tokens: int = 0) -> None:
        v = self.tokenizer.get_vocab_size()
        for i, x in enumerate(prompt_ids):
            if not x:
                raise LLMError(f"prompt {i} has no tokens")
            bad = next((t for t in x if not 0 <= t < v), None)
            if bad is not None:
                raise LLMError(f"prompt {i}: token id {bad} is outside the vocabulary (0..{v - 1})")
            if self.context_length is not None and len(x) + max_tokens > self.context_length:
                raise LLMError(f"prompt {i}: {len(x)} tokens + max_tokens {max_tokens} exceed the model's context "
                               f"({self.context_length})")


class NativeLLM(_CheckpointLLM):
    """A k2 checkpoint on the native engine."""

    backend = "native"

    def __init__(self, checkpoint: str | Path, device: str | None = None, max_batch: int | None = None):
        from k2core.infer import Engine
        from k2core.model.checkpoint import CheckpointError

        path = Path(checkpoint)
        self._load_tokenizer(path)
        try:
            self.engine = Engine.from_checkpoint(path, device=device)
        except CheckpointError as e:
            raise LLMError(f"native engine: {e}") from None
        if max_batch:
            self.engine.max_batch = max_batch
        self.context_length = int(self.engine.model.config.max_position_embeddings)
        self._lock = threading.Lock()            # one engine: requests from a server take turns

    @classmethod
    def over(cls, engine, tokenizer, name: str = "policy") -> "NativeLLM":
        """The LLM interface over an engine already built (the rl stage's rollout engine, whose
        weights it syncs from the policy), with a ``tokenizers`` tokenizer."""
        self = cls.__new__(cls)
        self._set_tokenizer(tokenizer, name)
        self.engine = engine
        self.context_length = int(engine.model.config.max_position_embeddings)
        self._lock = threading.Lock()
        return self

    def generate(self, prompts: list[str], params: TextParams | None = None,
                 progress: bool = True) -> list[Completion]:
        return self._generate(self._encode(prompts), params or TextParams(), progress)

    def generate_ids(self, prompt_ids: list[list[int]], params: TextParams | None = None) -> list[Completion]:
        params = params or TextParams()
        self.check_ids(prompt_ids, params.max_tokens)
        return self._generate(prompt_ids, params, False)

    def _generate(self, ids: list[list[int]], params: TextParams, progress: bool) -> list[Completion]:
        sp = self._sampling(params)
        with self._lock:
            gens = self.engine.generate(ids, sp, progress=progress)
        return [self._completion(x, g.token_ids, g.finish_reason, params) for x, g in zip(ids, gens)]

    def token_logprobs(self, sequences: list[list[int]], top: int = 0) -> list[tuple[list, list]]:
        """One forward pass per sequence (no padding: MoE routing and attention see only it)."""
        import torch

        self.check_ids(sequences)
        out = []
        with self._lock, torch.no_grad():
            for seq in sequences:
                x = torch.tensor([seq], device=self.engine.device)
                lp = torch.log_softmax(self.engine.model(x).logits[0, :-1].float(), dim=-1)
                got = lp.gather(1, x[0, 1:, None])[:, 0].tolist()
                tops: list = [None]
                if top:
                    v, i = lp.topk(min(top, lp.shape[-1]), dim=-1)
                    tops += [list(zip(ii, vv)) for ii, vv in zip(i.tolist(), v.tolist())]
                out.append(([None] + got, tops))
        return out


    def _sampling(self, params: TextParams):
        from k2core.infer import SamplingParams

        return SamplingParams(max_tokens=params.max_tokens, temperature=params.temperature, top_p=params.top_p,
                              seed=params.seed, stop_token_ids=self._stop_ids(params))

    def stream(self, prompt: str, params: TextParams | None = None):
        """Generate for one prompt, yielding text pieces as tokens arrive (stop strings cut the
        end); the last item is the :class:`Completion`."""
        params = params or TextParams()
        ids = self._encode([prompt])[0]
        sp = self._sampling(params)
        q: queue.Queue = queue.Queue()
        result: dict = {}

        def work() -> None:
            try:
                with self._lock:
                    result["gen"] = self.engine.generate([ids], sp, on_token=lambda t, nxt: q.put(int(nxt[0])),
                                                         progress=False)[0]
            except Exception as e:  # noqa: BLE001 — re-raised in the caller's thread
                result["error"] = e
            q.put(None)
        threading.Thread(target=work, daemon=True).start()
        stops = set(self._stop_ids(params))
        toks: list[int] = []
        sent = ""
        ended = False
        while not ended:
            tok = q.get()
            if tok is None:
                ended = True
                break
            if tok in stops:
                continue
            toks.append(tok)
            text = self.tokenizer.decode(toks, skip_special_tokens=not params.keep_special)
            cut, stopped = cut_at_stop(text, params.stop)
            # hold back a tail that may still become a stop string or an incomplete character
            safe = cut if stopped else cut[:max(len(sent), len(cut) - max((len(x) for x in params.stop), default=0))]
            if safe.endswith("\ufffd"):
                safe = safe[:-1]
            if len(safe) > len(sent):
                yield safe[len(sent):]
                sent = safe
            if stopped:
                break
        while not ended and q.get() is not None:   # drain: a stop string ended the text before the engine did
            pass
        if "error" in result:
            raise LLMError(f"native engine: {result['error']}")
        final = self._completion(ids, result["gen"].token_ids, result["gen"].finish_reason, params)
        if len(final.text) > len(sent):
            yield final.text[len(sent):]
        yield final


# ---------------------------------------------------------------------------- vllm
def vllm_python() -> Path | None:
    """The vLLM environment's Python: ``$K2_VLLM_PYTHON``, else ``.venv-vllm`` (``make vllm-env``)
    in the working directory or the source checkout."""
    env = os.environ.get("K2_VLLM_PYTHON")
    if env:
        return Path(env).absolute()
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        py = root / ".venv-vllm" / "bin" / "python"
        if py.exists():
            return py.absolute()
    return None


class VLLMLLM(_CheckpointLLM):
    """A k2 checkpoint on ``vllm.LLM`` (offline engine), in vLLM's own environment.

    vLLM pins its own torch, so it runs in a persistent worker process (``vllm_worker.py`` under
    the vLLM environment's Python) that loads the model once; prompts travel as token ids (this
    process owns the tokenizer), one JSON line per batch. Prompt ``i`` of a seeded batch is sampled
    with ``seed + i``. The CPU build serves checkpoints whose ``kv_lora_rank + qk_rope_head_dim``
    is 576 (the ``tiny-vllm`` preset). :meth:`close` (or the end of a ``with`` block) stops it."""

    backend = "vllm"

    def __init__(self, checkpoint: str | Path, *, python: str | Path | None = None, dtype: str = "auto",
                 max_model_len: int | None = 2048, startup_timeout: float = 900.0, timeout: float = 3600.0):
        path = Path(checkpoint).absolute()
        self._load_tokenizer(path)
        py = Path(python).absolute() if python else vllm_python()
        if py is None or not py.exists():
            raise LLMError(f"vllm engine: no vLLM environment ({py or '.venv-vllm/bin/python'} does not exist); "
                           "run `make vllm-env` or set K2_VLLM_PYTHON to its python")
        cfg = json.loads((path / "config.json").read_text())
        if max_model_len:
            max_model_len = min(max_model_len, int(cfg.get("max_position_embeddings", max_model_len)))
        self.context_length = max_model_len or cfg.get("max_position_embeddings")
        self.timeout = timeout
        self._log = tempfile.NamedTemporaryFile("w+", prefix="k2-vllm-", suffix=".log", delete=False)
        env = {**os.environ, "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1"}
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        opts = {"model": str(path), "dtype": dtype, "max_model_len": max_model_len, "seed": 0}
        self._proc = subprocess.Popen([str(py), str(Path(__file__).with_name("vllm_worker.py")), json.dumps(opts)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True,
                                      env=env, cwd=tempfile.gettempdir())
        self._lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            for line in self._proc.stdout:
                if line.startswith("K2VLLM "):
                    self._lines.put(line[7:])
                else:                              # vLLM logs its workers' errors on stdout: keep them
                    try:
                        self._log.write(line)
                        self._log.flush()
                    except ValueError:             # the log was closed
                        pass
            self._lines.put(None)                  # the worker exited
        threading.Thread(target=pump, daemon=True).start()
        self._lock = threading.Lock()
        ready = self._read(startup_timeout, "starting")
        self.version = ready.get("vllm")

    def _read(self, timeout: float, doing: str) -> dict:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            self.close()
            raise LLMError(f"vllm engine: no answer after {timeout:g} s while {doing}; log: {self._log.name}") from None
        if line is None:
            self._proc.wait(timeout=30)
            self._log.flush()
            tail = Path(self._log.name).read_text(errors="replace")[-3000:]
            raise LLMError(f"vllm engine: the worker exited (rc {self._proc.returncode}) while {doing}; "
                           f"log {self._log.name}:\n{tail}")
        msg = json.loads(line)
        if "error" in msg:
            raise LLMError(f"vllm engine: {msg['error']}")
        return msg

    def generate(self, prompts: list[str], params: TextParams | None = None,
                 progress: bool = True) -> list[Completion]:
        params = params or TextParams()
        ids = self._encode(prompts)
        one = {"max_tokens": params.max_tokens, "temperature": params.temperature, "top_p": params.top_p,
               "stop_token_ids": self._stop_ids(params)}
        req = {"prompts": ids, "params": [{**one, "seed": None if params.seed is None else params.seed + i}
                                          for i in range(len(ids))]}
        with self._lock, Progress(len(prompts) if progress else 0, f"generate ({self.describe()})",
                                  unit="prompt") as bar:
            if self._proc.poll() is not None:
                raise LLMError(f"vllm engine: the worker is not running (rc {self._proc.returncode}); "
                               f"log: {self._log.name}")
            self._proc.stdin.write(json.dumps(req) + "\n")
            self._proc.stdin.flush()
            outs = self._read(self.timeout, f"generating {len(prompts)} completions")["outputs"]
            bar.update(len(prompts))
        return [self._completion(x, o["token_ids"], o["finish_reason"], params) for x, o in zip(ids, outs)]

    def close(self) -> None:
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            try:
                proc.stdin.close()                  # the worker's loop ends at end of input
                proc.wait(timeout=60)
            except Exception:  # noqa: BLE001 — a worker that will not stop is killed
                proc.kill()
                proc.wait()
        if getattr(self, "_log", None) is not None:
            self._log.close()                       # the log file stays for reading (its path is in errors)


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
            if params.keep_special:
                payload["skip_special_tokens"] = False      # vLLM's and k2 serve's extension
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
    """The backend a stage's config names: ``native`` or ``vllm`` (checkpoint), or ``openai``
    (base_url + model)."""
    if engine in ("native", "vllm"):
        if not checkpoint:
            raise LLMError(f"engine {engine} needs a checkpoint directory")
        return NativeLLM(checkpoint, **kw) if engine == "native" else VLLMLLM(checkpoint, **kw)
    if engine == "openai":
        if not base_url or not model:
            raise LLMError("engine openai needs base_url and model")
        return OpenAILLM(base_url, model, **kw)
    raise LLMError(f"engine {engine!r}: expected native, vllm or openai")


def open_model(resolved, ref, store) -> LLM:
    """The LLM behind a :class:`~k2core.models.ResolvedModel` (`ref`: its
    :class:`~k2core.config.ModelRef`, for the server settings)."""
    if resolved.engine == "openai":
        return open_llm("openai", base_url=resolved.base_url, model=resolved.model, api_key_env=ref.api_key_env,
                        timeout=ref.timeout, retries=ref.retries, concurrency=ref.concurrency)
    return open_llm(resolved.engine, checkpoint=resolved.local_checkpoint(store))
