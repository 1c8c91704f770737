"""MuonClip (Kimi K2 §2.1, Algorithm 1): Muon + per-head QK-Clip for MLA.

One ``torch.optim.Optimizer`` with two kinds of parameter group:

- ``muon``: 2-D hidden matrices (attention projections, dense MLP, shared experts, router gate) and
  3-D expert stacks (E matrices each). Momentum (Nesterov), Newton-Schulz orthogonalisation of the
  whole matrix, update × 0.2·√max(A, B), decoupled weight decay. Matrices of the same shape — all
  experts of all layers, each layer's projections — are orthogonalised together in batched bf16
  matmuls.
- ``adamw``: embeddings, lm_head, norm gains (β 0.9 / 0.95), through torch's fused / foreach AdamW.

After the update, QK-Clip rescales the query/key rows of every head whose max pre-softmax logit
S_max (from the step's forward, max-reduced over data-parallel ranks) exceeded τ: γ = τ / S_max,
q^C and k^C rows × √γ, q^R rows × γ; the shared rotary key, the value rows and the down-projections
are never touched.

ZeRO-1 sharding (Moonlight §2.3): with a process group of N ranks, whole parameters are assigned to
ranks (balanced by Newton-Schulz cost); each rank keeps optimizer state for, and updates, only its
share, then every parameter is broadcast from its owner. Gradients are either already averaged (DDP,
DeepSpeed stage 0) or, with ``reduce_grads=True``, reduced to their owner only.

The Muon momentum is kept in torch.optim.Muon's form (``buf.lerp_(g, 1 - μ)``, Nesterov
``g.lerp(buf, μ)``); it is (1 - μ) × the report's ``M = μM + G`` form, a constant factor that
Newton-Schulz's normalisation removes, so both define the same update.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal

import torch
import torch.distributed as dist
from torch import nn

from k2core.errors import K2Error
from k2core.optim.kernels import BatchTables, apply_update, fused_ok, momentum_to_bf16, sym_gram, sym_gram_ok

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


class MuonClipError(K2Error, ValueError):
    """A parameter set or state MuonClip cannot work with; the message says what and why."""


# ---------------------------------------------------------------------------- routing table
@dataclass(frozen=True)
class Route:
    name: str
    param: nn.Parameter
    kind: Literal["muon", "adamw"]
    why: str


def route_parameters(model: nn.Module) -> list[Route]:
    """Assign every trainable parameter of `model` to Muon or AdamW, exactly once.

    Muon: 2-D hidden matrices and 3-D expert stacks. AdamW: token embeddings, the output head and
    1-D parameters (norm gains). Buffers (the routing bias ``e_score_correction_bias``) are not
    parameters and are not optimised."""
    routes: list[Route] = []
    seen: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if not p.requires_grad:
            continue
        if id(p) in seen:           # tied weights: one tensor, one optimizer entry
            continue
        seen[id(p)] = name
        if name.endswith("embed_tokens.weight"):
            routes.append(Route(name, p, "adamw", "token embedding"))
        elif name.startswith("lm_head.") or name.endswith(".lm_head.weight"):
            routes.append(Route(name, p, "adamw", "output head"))
        elif p.ndim == 1:
            routes.append(Route(name, p, "adamw", "norm gain / vector"))
        elif p.ndim == 2:
            routes.append(Route(name, p, "muon", "hidden matrix"))
        elif p.ndim == 3:
            routes.append(Route(name, p, "muon", f"expert stack ({p.shape[0]} matrices)"))
        else:
            raise MuonClipError(f"parameter {name} has shape {tuple(p.shape)}: no optimizer rule for {p.ndim}-D")
    ids = [id(r.param) for r in routes]
    want = {id(p) for p in model.parameters() if p.requires_grad}
    assert len(ids) == len(set(ids)) and set(ids) == want, "routing table must assign every parameter once"
    return routes


@dataclass(frozen=True)
class AttentionLayout:
    """Where one MLA layer's per-head query/key rows live (HF layout)."""

    q_weight: nn.Parameter      # q_b_proj (or q_proj): rows [H, d_nope + d_rope]
    kv_b_weight: nn.Parameter   # kv_b_proj: rows [H, d_nope + d_v]
    heads: int
    d_nope: int
    d_rope: int
    d_v: int


def attention_layouts(model: nn.Module) -> list[AttentionLayout]:
    """One entry per attention layer, in the order of the model's ``max_logits`` rows."""
    out = []
    for layer in model.model.layers:
        a = layer.self_attn
        q = a.q_b_proj.weight if hasattr(a, "q_b_proj") else a.q_proj.weight
        out.append(AttentionLayout(q, a.kv_b_proj.weight, a.num_heads, a.dn, a.dr, a.dv))
    return out


# ---------------------------------------------------------------------------- Newton-Schulz
def newton_schulz(G: torch.Tensor, steps: int = 5, coefficients=NS_COEFFICIENTS, eps: float = 1e-7,
                  dtype: torch.dtype = torch.bfloat16, fold_identity: bool = False,
                  normalised: bool = False) -> torch.Tensor:
    """Quintic Newton-Schulz on a batch of matrices ``(..., r, c)`` in `dtype` (bf16 as K2 and
    torch.optim.Muon; taller matrices are transposed). Each matrix is normalised by its own
    Frobenius norm.

    Each iteration is ``X ← a·X + (b·A + c·A²)·X`` with ``A = X·Xᵀ``. torch.optim.Muon computes the
    last product as ``addmm(X, B, X, beta=a)``, which first copies X into the output. With
    `fold_identity` the same polynomial is computed as ``(B + a·I)·X``: no copy of X (an eighth of
    the step's time on an H200), and since B is symmetric a tall matrix's last product is taken as
    ``Xᵀ·(B + a·I)``, which lands in the caller's orientation without a transpose. The two forms
    differ by bf16 rounding of B's diagonal only. `normalised`
    says the caller has already divided each matrix by its norm (the fused GPU path)."""
    a, b, c = coefficients
    tall = G.shape[-2] > G.shape[-1]
    squeeze = G.ndim == 2
    X = G.to(dtype)
    X = X[None] if squeeze else X.reshape(-1, *G.shape[-2:])
    if normalised:
        X = X.mT if tall else X
    elif fold_identity:   # normalise the contiguous batch in place, then view it transposed
        if X.data_ptr() == G.data_ptr():
            X = X.clone()
        X.div_(X.norm(dim=(-2, -1), keepdim=True).clamp(min=eps))
        X = X.mT if tall else X
    else:                 # torch.optim.Muon's order: transpose, then normalise
        X = X.mT if tall else X
        X = X / X.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    sym = fold_identity and sym_gram_ok(X)
    for k in range(steps):
        if sym:   # Triton: upper tiles only, A's copy and the + a·I fused (kernels.sym_gram)
            A = sym_gram(X)
            B = sym_gram(A, A, alpha=c, beta=b, diag=a)
        else:
            A = torch.bmm(X, X.mT)
            B = torch.baddbmm(A, A, A, beta=b, alpha=c)
            if fold_identity:
                B.diagonal(dim1=-2, dim2=-1).add_(a)
        if fold_identity:
            if tall and k == steps - 1:
                X = torch.bmm(X.mT, B)          # = ((B + aI)·X)ᵀ, already in G's orientation
                tall = False
            else:
                X = torch.bmm(B, X)
        else:
            X = torch.baddbmm(X, B, X, beta=a)
    if tall:
        X = X.mT
    return X[0] if squeeze else X.reshape(G.shape)


# ---------------------------------------------------------------------------- telemetry
@dataclass
class StepStats:
    """What one optimizer step reports to the training loop (tensors stay on device until read)."""

    max_logit: torch.Tensor | None = None     # [layers, heads] S_max after the DP max-reduce
    gamma: torch.Tensor | None = None         # [layers, heads] applied scale (1 = untouched)
    tau: float | None = None
    loss: Any = None

    @property
    def clipped(self) -> torch.Tensor | None:
        return None if self.gamma is None else self.gamma < 1

    @property
    def clipped_heads(self) -> int:
        return 0 if self.gamma is None else int((self.gamma < 1).sum())

    @property
    def min_gamma(self) -> float:
        return 1.0 if self.gamma is None else float(self.gamma.min())

    def as_metrics(self) -> dict[str, float]:
        out: dict[str, float] = {"clipped_heads": float(self.clipped_heads), "min_gamma": self.min_gamma}
        if self.max_logit is not None:
            out["max_logit"] = float(self.max_logit.max())
        return out


@dataclass
class _Unit:
    """One parameter as the step sees it."""

    p: torch.Tensor
    group: dict
    owner: int = 0
    cost: float = 0.0
    extra: dict = field(default_factory=dict)


class MuonClip(torch.optim.Optimizer):
    """Muon + AdamW + QK-Clip. Build it with :meth:`for_model`, or pass groups with ``kind``.

    ``step(max_logits=...)`` takes the forward's per-head max logits ``[layers, heads]``
    (``K2ForCausalLM(..., want_max_logits=True).max_logits``); with DeepSpeed, whose engine calls
    ``step()`` itself, hand them over first with :meth:`observe`. The step returns a
    :class:`StepStats`."""

    def __init__(self, params: Iterable[dict], *, lr: float = 2e-4, weight_decay: float = 0.1,
                 momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5,
                 ns_coefficients=NS_COEFFICIENTS, eps: float = 1e-7,
                 adamw_betas: tuple[float, float] = (0.9, 0.95), adamw_eps: float = 1e-8,
                 qk_clip_tau: float | None = 100.0, attention: list[AttentionLayout] | None = None,
                 process_group: Any = None, reduce_grads: bool = False, ns_dtype: str = "auto"):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_steps=ns_steps, ns_coefficients=tuple(ns_coefficients), eps=eps,
                        betas=tuple(adamw_betas), adamw_eps=adamw_eps, kind="muon")
        super().__init__(list(params), defaults)
        for g in self.param_groups:
            if g["kind"] not in ("muon", "adamw"):
                raise MuonClipError(f"param group kind {g['kind']!r}: expected 'muon' or 'adamw'")
            for p in g["params"]:
                self._check_param(p, g)
        if qk_clip_tau is not None and qk_clip_tau <= 0:
            raise MuonClipError(f"qk_clip_tau = {qk_clip_tau}: must be > 0 (or None to turn QK-Clip off)")
        self.qk_clip_tau = qk_clip_tau
        if ns_dtype not in ("auto", "bf16", "fp32"):
            raise MuonClipError(f"ns_dtype = {ns_dtype!r}: expected 'auto', 'bf16' or 'fp32'")
        self.ns_dtype = ns_dtype
        self.attention = list(attention or [])
        self.process_group = process_group
        self.reduce_grads = reduce_grads
        self._observed: torch.Tensor | None = None
        self._tables: dict[tuple, BatchTables] = {}
        self._ptr_cache: dict[torch.device, tuple[tuple[int, ...], torch.Tensor]] = {}
        self.last_stats = StepStats()
        self._plan_shards()

    # ------------------------------------------------------------------ construction
    @classmethod
    def for_model(cls, model: nn.Module, **kw: Any) -> "MuonClip":
        """MuonClip over `model` per the routing table; `kw` are the constructor's settings
        (from a config: :meth:`k2core.optim.config.OptimConfig.build`)."""
        routes = route_parameters(model)
        groups = []
        for kind in ("muon", "adamw"):
            rs = [r for r in routes if r.kind == kind]
            if rs:
                groups.append({"params": [r.param for r in rs], "names": [r.name for r in rs], "kind": kind})
        opt = cls(groups, attention=attention_layouts(model) if hasattr(model, "model") else None, **kw)
        opt.routes = routes
        return opt

    @staticmethod
    def _check_param(p: torch.Tensor, g: dict) -> None:
        if g["kind"] == "muon" and p.ndim not in (2, 3):
            raise MuonClipError(
                f"a parameter of shape {tuple(p.shape)} is in a Muon group: Muon orthogonalises whole "
                "matrices (2-D, or 3-D expert stacks). DeepSpeed ZeRO stages >= 1 hand optimizers flattened "
                "partitions; run DeepSpeed with zero_optimization.stage = 0 and let MuonClip shard its own "
                "state (process_group=...)")

    def _plan_shards(self) -> None:
        pg = self.process_group
        self.world = dist.get_world_size(pg) if pg is not None and dist.is_initialized() else 1
        self.rank = dist.get_rank(pg) if self.world > 1 else 0
        units = []
        for g in self.param_groups:
            for p in g["params"]:
                if g["kind"] == "muon":
                    r, c = sorted(p.shape[-2:])
                    n = p.numel() // (r * c)
                    cost = n * (4 * r * r * c + 2 * r ** 3)        # Newton-Schulz FLOPs per iteration
                else:
                    cost = 10.0 * p.numel()
                units.append((cost, len(units), p))
        self._owner: dict[int, int] = {}
        load = [0.0] * self.world
        for cost, _, p in sorted(units, key=lambda u: (-u[0], u[1])):   # largest first, deterministic
            r = min(range(self.world), key=lambda i: (load[i], i))
            load[r] += cost
            self._owner[id(p)] = r
        self.shard_load = load

    def owner(self, p: torch.Tensor) -> int:
        return self._owner[id(p)]

    # ------------------------------------------------------------------ step
    def observe(self, max_logits: torch.Tensor | None) -> None:
        """Record this step's per-head max logits for the next :meth:`step` (the DeepSpeed path)."""
        self._observed = None if max_logits is None else max_logits.detach()

    @torch.no_grad()
    def step(self, closure=None, max_logits: torch.Tensor | None = None) -> StepStats:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if max_logits is None:
            max_logits, self._observed = self._observed, None
        if self.world > 1 and self.reduce_grads:
            self._reduce_grads()
        for g in self.param_groups:
            for p in g["params"]:
                self._check_param(p, g)
            mine = [p for p in g["params"] if p.grad is not None and self._owner.get(id(p), 0) == self.rank]
            if not mine:
                continue
            if g["kind"] == "muon":
                self._muon(g, mine)
            else:
                self._adamw(g, mine)
        if self.world > 1:
            self._broadcast_params()
        stats = self._qk_clip(max_logits) if max_logits is not None else StepStats()
        stats.loss = loss
        self.last_stats = stats
        return stats

    def _muon(self, g: dict, params: list[torch.Tensor]) -> None:
        mu, lr, wd, nesterov = g["momentum"], g["lr"], g["weight_decay"], g["nesterov"]
        for p in params:
            st = self.state[p]
            if "momentum_buffer" not in st:
                st["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
        # one batch per matrix shape and device: all experts of all layers, each projection kind.
        # Tall matrices stay tall here and are transposed as views inside newton_schulz, exactly as
        # torch.optim.Muon does, so the bf16 matmuls see the same layouts and round the same way.
        batches: dict[tuple, list[torch.Tensor]] = defaultdict(list)
        for p in params:
            batches[(*p.shape[-2:], p.device)].append(p)
        # largest batches first: the GPU works on the experts while the CPU queues the rest
        order = sorted(batches.items(), key=lambda kv: -sum(p.numel() for p in kv[1]))
        ptrs = self._pointer_tables(order)
        for (r, c, dev), ps in order:
            dt = self._ns_dtype(dev)
            bufs = [self.state[p]["momentum_buffer"] for p in ps]
            sizes = [p.numel() // (r * c) for p in ps]
            fused = id(ps) in ptrs
            if fused:      # one Triton launch: momenta in place, Nesterov updates into the batch
                tables = self._tables.get(tuple(id(p) for p in ps))
                if tables is None:
                    tables = self._tables[tuple(id(p) for p in ps)] = BatchTables(sizes, dev)
                g_ptr, m_ptr, w_ptr = ptrs[id(ps)]
                X = torch.empty(sum(sizes), r, c, device=dev, dtype=dt)
                momentum_to_bf16(tables, g_ptr, m_ptr, X, mu, nesterov, g["eps"])
            else:          # torch.optim.Muon's ops, one foreach call per batch
                grads = [p.grad for p in ps]
                torch._foreach_lerp_(bufs, grads, 1 - mu)
                updates = torch._foreach_lerp(grads, bufs, mu) if nesterov else bufs
                X = torch.cat([u.reshape(-1, r, c).to(dt) for u in updates]) if len(ps) > 1 else \
                    updates[0].reshape(-1, r, c)
            O = newton_schulz(X, g["ns_steps"], g["ns_coefficients"], g["eps"], dtype=dt, fold_identity=fused,
                              normalised=fused)
            scale = 0.2 * math.sqrt(max(r, c))
            if fused:
                apply_update(tables, w_ptr, O, 1 - lr * wd, -lr * scale)
            else:
                outs = [o.reshape(p.shape) for p, o in zip(ps, O.split(sizes))]
                if wd:
                    torch._foreach_mul_(ps, 1 - lr * wd)
                torch._foreach_add_(ps, outs, alpha=-lr * scale)

    def _pointer_tables(self, order) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Device tables of (grad, momentum, weight) addresses for every batch the Triton kernels
        take, built in one pinned host buffer and sent with one asynchronous copy per device (a
        pageable copy would wait for the GPU to drain before every batch)."""
        spans: dict[torch.device, list] = defaultdict(list)
        for (_, _, dev), ps in order:
            bufs = [self.state[p]["momentum_buffer"] for p in ps]
            if self._ns_dtype(dev) == torch.bfloat16 and fused_ok(*ps, *bufs, *(p.grad for p in ps)):
                spans[dev].append((ps, bufs))
        out = {}
        for dev, items in spans.items():
            flat = tuple(t.data_ptr() for ps, bufs in items for t in (*(p.grad for p in ps), *bufs, *ps))
            cached = self._ptr_cache.get(dev)
            if cached is not None and cached[0] == flat:
                table = cached[1]   # same addresses as last step (the usual case): no host copy at all
            else:
                table = torch.tensor(flat, dtype=torch.int64).pin_memory().to(dev, non_blocking=True)
                self._ptr_cache[dev] = (flat, table)
            off = 0
            for ps, _ in items:
                n = len(ps)
                out[id(ps)] = (table[off:off + n], table[off + n:off + 2 * n], table[off + 2 * n:off + 3 * n])
                off += 3 * n
        return out

    def _ns_dtype(self, dev: torch.device) -> torch.dtype:
        """bf16 (K2, torch.optim.Muon) on accelerators; "auto" uses fp32 on CPUs, where bf16 matmuls
        are emulated unless the CPU has AMX / AVX512-BF16 (25x slower than fp32 on our CI machine)."""
        if self.ns_dtype == "bf16" or (self.ns_dtype == "auto" and dev.type != "cpu"):
            return torch.bfloat16
        return torch.float32

    def _adamw(self, g: dict, params: list[torch.Tensor]) -> None:
        from torch.optim.adamw import adamw

        fused = all(p.is_cuda and p.dtype in (torch.float32, torch.bfloat16, torch.float16) for p in params)
        grads, m1, m2, steps = [], [], [], []
        for p in params:
            st = self.state[p]
            if "step" not in st:
                st["step"] = torch.zeros((), dtype=torch.float32, device=p.device if fused else "cpu")
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            grads.append(p.grad)
            m1.append(st["exp_avg"])
            m2.append(st["exp_avg_sq"])
            steps.append(st["step"])
        b1, b2 = g["betas"]
        adamw(params, grads, m1, m2, [], steps, foreach=None if fused else True, fused=fused or None,
              amsgrad=False, beta1=b1, beta2=b2, lr=g["lr"], weight_decay=g["weight_decay"],
              eps=g["adamw_eps"], maximize=False)

    # ------------------------------------------------------------------ QK-Clip
    def _qk_clip(self, max_logits: torch.Tensor) -> StepStats:
        S = max_logits.detach().float()
        if self.world > 1:
            S = S.clone()
            dist.all_reduce(S, op=dist.ReduceOp.MAX, group=self.process_group)
        tau = self.qk_clip_tau
        if tau is None:
            return StepStats(max_logit=S, tau=None)
        if len(self.attention) != S.shape[0]:
            raise MuonClipError(f"max_logits has {S.shape[0]} layers but the optimizer knows "
                                f"{len(self.attention)} attention layers (build it with MuonClip.for_model)")
        gamma = torch.where(S > tau, tau / S, torch.ones_like(S))       # exactly 1 where untouched
        for a, gm in zip(self.attention, gamma):
            gm = gm.to(a.q_weight.device)
            root = gm.sqrt()[:, None, None]
            q = a.q_weight.data.view(a.heads, a.d_nope + a.d_rope, -1)
            q[:, : a.d_nope].mul_(root.to(q.dtype))
            q[:, a.d_nope:].mul_(gm[:, None, None].to(q.dtype))
            kv = a.kv_b_weight.data.view(a.heads, a.d_nope + a.d_v, -1)
            kv[:, : a.d_nope].mul_(root.to(kv.dtype))
        return StepStats(max_logit=S, gamma=gamma, tau=tau)

    # ------------------------------------------------------------------ checkpoints
    def consolidated_state_dict(self, dst: int = 0) -> dict[str, Any] | None:
        """The whole optimizer state on rank `dst` (None elsewhere); equal to the state dict of an
        unsharded optimizer, so a sharded run's checkpoint resumes on any number of ranks.
        Collective: every rank of the process group must call it."""
        sd = self.state_dict()
        if self.world == 1:
            return sd
        cpu = {k: {n: (t.cpu() if torch.is_tensor(t) else t) for n, t in v.items()} for k, v in sd["state"].items()}
        parts: list[Any] | None = [None] * self.world if self.rank == dst else None
        dist.gather_object(cpu, parts, dst=self._global(dst), group=self.process_group)
        if self.rank != dst:
            return None
        sd["state"] = {k: v for part in parts for k, v in part.items()}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a (consolidated or single-process) state dict, keeping only this rank's share."""
        super().load_state_dict(state_dict)
        if self.world > 1:
            for g in self.param_groups:
                for p in g["params"]:
                    if self._owner[id(p)] != self.rank:
                        self.state.pop(p, None)

    # ------------------------------------------------------------------ ZeRO-1 communication
    def _by_owner(self) -> dict[int, list[torch.Tensor]]:
        out: dict[int, list[torch.Tensor]] = defaultdict(list)
        for g in self.param_groups:
            for p in g["params"]:
                out[self._owner[id(p)]].append(p)
        return out

    def _global(self, r: int) -> int:
        return dist.get_global_rank(self.process_group, r) if self.process_group is not None else r

    def _reduce_grads(self) -> None:
        for r, ps in sorted(self._by_owner().items()):
            missing = [p for p in ps if p.grad is None]
            if missing:
                raise MuonClipError(f"reduce_grads: {len(missing)} parameter(s) have no gradient on rank "
                                    f"{self.rank}; every rank must produce every gradient")
            for dtype in sorted({p.grad.dtype for p in ps}, key=str):
                gs = [p.grad for p in ps if p.grad.dtype == dtype]
                flat = torch._utils._flatten_dense_tensors(gs)
                dist.reduce(flat, dst=self._global(r), op=dist.ReduceOp.SUM, group=self.process_group)
                if r == self.rank:
                    flat.div_(self.world)
                    for t, v in zip(gs, torch._utils._unflatten_dense_tensors(flat, gs)):
                        t.copy_(v)

    def _broadcast_params(self) -> None:
        for r, ps in sorted(self._by_owner().items()):
            for dtype in sorted({p.dtype for p in ps}, key=str):
                ts = [p.data for p in ps if p.dtype == dtype]
                flat = torch._utils._flatten_dense_tensors(ts)
                dist.broadcast(flat, src=self._global(r), group=self.process_group)
                if r != self.rank:
                    for t, v in zip(ts, torch._utils._unflatten_dense_tensors(flat, ts)):
                        t.copy_(v)
