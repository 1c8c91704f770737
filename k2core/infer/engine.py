"""Native generation engine for k2 checkpoints: batched decoding over a preallocated MLA latent cache.

Prompts are left-padded into one batch; the prompt is prefilled in one forward pass, then each
decode step runs the model on one token per row, attending in latent space (the cache holds
``kv_lora_rank + qk_rope_head_dim`` numbers per token and layer, not per-head keys and values).
On CUDA the decode step is captured once as a CUDA graph and replayed, so a step costs one launch
instead of hundreds. Sampling: greedy, temperature, top-k, top-p, seeded; stop tokens; max tokens.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from k2core.model.k2 import K2ForCausalLM, KVCache
from k2core.progress import Progress


def check_sampling(max_tokens: int, temperature: float, top_p: float) -> None:
    """The limits every backend's sampling parameters share (ValueError names the bad one)."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


@dataclass
class SamplingParams:
    max_tokens: int = 64
    temperature: float = 1.0          # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0                    # 0 = off
    stop_token_ids: list[int] = field(default_factory=list)
    seed: int | None = None
    logprobs: bool = False            # also return each sampled token's log-probability (at temperature 1)

    def __post_init__(self):
        check_sampling(self.max_tokens, self.temperature, self.top_p)
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


@dataclass
class Generation:
    token_ids: list[int]
    finish_reason: str          # "stop" (a stop token, included) | "length"
    logprobs: list[float] | None = None   # log p(token) under the model's logits (T = 1), when asked for


def sample(logits_BV: torch.Tensor, p: SamplingParams, gen: torch.Generator | None) -> torch.Tensor:
    """One token per row from fp32 logits: greedy, or temperature → top-k → top-p → multinomial."""
    if p.greedy:
        return logits_BV.argmax(-1)
    logits = logits_BV.float() / p.temperature
    if p.top_k:
        kth = logits.topk(min(p.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if p.top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= p.top_p     # keep the smallest set reaching top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(-1), 1, generator=gen).squeeze(-1)


def length_buckets(lengths: list[int], max_batch: int, max_padding: float = 0.15) -> list[list[int]]:
    """Prompt indices grouped into batches of at most `max_batch`: prompts of similar length go
    together (longest first), and a batch grows only while its left padding stays under
    `max_padding` of its tokens — padded prefill is work thrown away (multi-turn conversations of
    different lengths would otherwise pad to the longest). Equal lengths: one batch of max_batch."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    cur: list[int] = []
    real = 0
    for i in order:
        if cur and (len(cur) == max_batch or lengths[cur[0]] * (len(cur) + 1) > (1 + max_padding) * (real + lengths[i])):
            batches.append(cur)
            cur, real = [], 0
        cur.append(i)
        real += lengths[i]
    if cur:
        batches.append(cur)
    return batches


class Engine:
    """Generate token ids from a K2ForCausalLM (``Engine.from_checkpoint(dir)``)."""

    def __init__(self, model: K2ForCausalLM, *, cuda_graph: bool | None = None, compile: bool | None = None,
                 max_batch: int = 64):
        self.model = model.eval().fuse_for_decode()   # fewer, larger GEMMs per decode step
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        cuda = self.device.type == "cuda"
        self.cuda_graph = cuda if cuda_graph is None else cuda_graph
        # torch.compile fuses the decode step's ~80 small kernels per layer into a few; the CUDA
        # graph then replays them with one launch. Compiled once per (batch, cache length) shape.
        self.compile = (cuda and self.cuda_graph) if compile is None else compile
        self._decode = torch.compile(self._forward_greedy, dynamic=False) if self.compile else self._forward_greedy
        self.max_batch = max_batch
        # a batch grows while its left padding stays under this share of its tokens: on a GPU a
        # decode step costs about the same at any batch size, so fewer, fuller batches win; on a
        # CPU padded prefill is compute thrown away
        self.max_padding = 0.5 if self.device.type == "cuda" else 0.15
        self._graphs: dict[tuple[int, int], tuple[KVCache, Callable]] = {}

    def _forward(self, tok: torch.Tensor, cache: KVCache) -> torch.Tensor:
        return self.model(tok, cache=cache).logits[:, -1]

    def _forward_greedy(self, tok: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self._forward(tok, cache)
        return logits, logits.argmax(-1)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | None = None, dtype: torch.dtype | None = None,
                        **kw) -> "Engine":
        from k2core.model.checkpoint import load_checkpoint

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype is None:
            dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        return cls(load_checkpoint(path, device=device, dtype=dtype), **kw)

    def generate(self, prompts: list[list[int]], params: SamplingParams | None = None,
                 on_token: Callable[[int, torch.Tensor], None] | None = None,
                 progress: bool = True) -> list[Generation]:
        """Generate for every prompt (batched ``max_batch`` at a time); results in prompt order."""
        params = params or SamplingParams()
        vocab = self.model.config.vocab_size
        for i, pr in enumerate(prompts):
            if not pr:
                raise ValueError(f"prompt {i} is empty")
            bad = [t for t in pr if not 0 <= t < vocab]
            if bad:
                raise ValueError(f"prompt {i} has token ids outside the vocabulary [0, {vocab}): {bad[:5]}")
        gen = None
        if params.seed is not None:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(params.seed)
        out: list[Generation | None] = [None] * len(prompts)
        with (Progress(len(prompts), "generate", unit="prompt") if progress else contextlib.nullcontext()) as bar:
            for idx in length_buckets([len(p) for p in prompts], self.max_batch, self.max_padding):
                gens = self._generate_batch([prompts[i] for i in idx], params, gen, on_token)
                for i, g in zip(idx, gens):
                    out[i] = g
                if bar is not None:
                    bar.update(len(idx))
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def _generate_batch(self, prompts, params: SamplingParams, gen, on_token) -> list[Generation]:
        B, P = len(prompts), max(len(p) for p in prompts)
        max_pos = self.model.config.max_position_embeddings
        if P + params.max_tokens > max_pos:
            raise ValueError(f"prompt ({P}) + max_tokens ({params.max_tokens}) exceeds "
                             f"max_position_embeddings ({max_pos})")
        pad = torch.tensor([P - len(p) for p in prompts])
        ids = torch.tensor([[0] * (P - len(p)) + p for p in prompts], device=self.device)
        step = None
        if self.cuda_graph:
            # cache length rounded up so batches of similar shape share one captured graph
            max_len = min(-(-(P + params.max_tokens) // GRAPH_LEN_BUCKET) * GRAPH_LEN_BUCKET, max_pos)
            try:
                cache, step = self._graph_for(B, max_len)
            except RuntimeError as e:   # capture needs every op to stay on the device
                warnings.warn(f"CUDA graph capture failed, decoding eagerly: {e}")
                self.cuda_graph, self._graphs = False, {}
        if step is None:
            cache = KVCache(self.model.config, B, P + params.max_tokens, self.device, self.dtype)
        cache.reset(pad)
        cache.static = False              # the prefill attends over the columns written so far
        logits = self.model(ids, cache=cache, logits_to_keep=1).logits[:, -1].float()
        cache.static = step is not None   # replays attend over all max_len columns, masked
        tokens = torch.empty(B, params.max_tokens, dtype=torch.long, device=self.device)
        lps = torch.empty(B, params.max_tokens, dtype=torch.float32, device=self.device) if params.logprobs else None
        done = torch.zeros(B, dtype=torch.bool, device=self.device)
        # without stop tokens every row runs to max_tokens: no per-step check, no host sync
        stops = torch.tensor(params.stop_token_ids, device=self.device) if params.stop_token_ids else None
        n = 0
        greedy_next = None
        for t in range(params.max_tokens):
            nxt = greedy_next if greedy_next is not None else sample(logits, params, gen)
            tokens[:, t] = nxt
            if lps is not None:
                lps[:, t] = torch.log_softmax(logits.float(), dim=-1).gather(-1, nxt[:, None]).squeeze(-1)
            if stops is not None:
                done |= torch.isin(nxt, stops)
            n = t + 1
            if on_token is not None:
                on_token(t, nxt)
            if t + 1 == params.max_tokens or (stops is not None and (t + 1) % 8 == 0 and bool(done.all())):
                break
            if step:
                logits, argmax = step(nxt)
                greedy_next = argmax if params.greedy else None   # argmax ran inside the graph
            else:
                logits = self._forward(nxt[:, None], cache)
        rows = tokens[:, :n].tolist()
        lp_rows = lps[:, :n].tolist() if lps is not None else [None] * B
        stop_set = set(params.stop_token_ids)
        results = []
        for row, lp in zip(rows, lp_rows):
            cut = next((i for i, tok in enumerate(row) if tok in stop_set), None)
            end = len(row) if cut is None else cut + 1
            results.append(Generation(row[:end], "stop" if cut is not None else "length",
                                      lp[:end] if lp is not None else None))
        return results

    def _graph_for(self, batch: int, max_len: int):
        """The latent cache and captured decode step for this shape, captured on first use."""
        key = (batch, max_len)
        if key not in self._graphs:
            if len(self._graphs) >= MAX_GRAPHS:          # drop the oldest shape
                self._graphs.pop(next(iter(self._graphs)))
            cache = KVCache(self.model.config, batch, max_len, self.device, self.dtype)
            self._graphs[key] = (cache, self._capture(cache))
        return self._graphs[key]

    def _capture(self, cache: KVCache):
        """Capture one decode step (model forward on [B, 1] tokens, greedy argmax) as a CUDA graph.

        The graph reads the token, the cache, its padding and its column counter from fixed
        device tensors, so a replay is a full decode step; the warm-up calls write scratch
        values into columns the next prefill overwrites."""
        cache.static = True
        tok = torch.zeros(cache.batch, 1, dtype=torch.long, device=self.device)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):          # warm-up: compilation, allocations, lazy inits
            for _ in range(3):
                cache.reset()
                self._decode(tok, cache)
        torch.cuda.current_stream().wait_stream(stream)
        cache.reset()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits, argmax = self._decode(tok, cache)

        def step(nxt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            tok.copy_(nxt[:, None])
            graph.replay()
            return logits, argmax
        return step


GRAPH_LEN_BUCKET = 512   # cache lengths are rounded up to this for graph (and compiled-step) reuse
MAX_GRAPHS = 8           # captured shapes kept per engine (each holds its own latent cache)
