"""The K2 model: Multi-head Latent Attention + sparse MoE (DeepSeek-V3 architecture, K2 §2.3).

K2_REFERENCE.md §2. Modules are named as in Hugging Face's ``DeepseekV3ForCausalLM`` so a
state dict maps one to one, except the routed experts, which live as three 3-D tensors per layer
(``experts.gate_proj[E, I, H]`` …) so they run as grouped GEMMs; ``checkpoint.py`` splits them
into per-expert names on export.

Shape legend: B batch, T query positions, S key positions (cache included), H hidden,
N heads, Dn / Dr / Dv nope / rope / value head dims, C kv_lora_rank, E routed experts,
K experts per token, I expert width, M = B·T tokens.
"""
from __future__ import annotations

import functools
import inspect
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from k2core.model.config import ModelConfig, yarn_mscale
from k2core.model.kernels import qk_max_logit, triton_ok


# ---------------------------------------------------------------------------- norms, rotary
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fp32 statistics whatever the activation dtype (as transformers' DeepseekV3RMSNorm)
        y = x.float()
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * y.to(x.dtype)


def fuse_rows(*linears_or_params) -> torch.Tensor:
    """One weight whose row blocks are the given weights, which become views into it.

    For inference (``K2ForCausalLM.fuse_for_decode``): one GEMM instead of several on the same
    input, with no second copy of the weights — an in-place update of a parameter is an update of
    the fused weight. Parameters stay the same objects (only ``.data`` is rebound)."""
    params = [w.weight if isinstance(w, nn.Linear) else w for w in linears_or_params]
    rows = [p.data.reshape(-1, p.shape[-1]) for p in params]
    fused = torch.cat(rows, dim=0)
    start = 0
    for p, r in zip(params, rows):
        p.data = fused[start:start + r.shape[0]].view(p.shape)
        start += r.shape[0]
    return fused


def rope_inv_freq(cfg: ModelConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies of the rotary dims and the cos/sin scale (YaRN's attention factor)."""
    d, base = cfg.qk_rope_head_dim, cfg.rope_theta
    pos_freqs = base ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    rs = cfg.rope_scaling
    if rs is None:
        return 1.0 / pos_freqs, 1.0
    # YaRN (arXiv 2309.00071): interpolate low frequencies, keep high ones, linear ramp between
    def corr_dim(rot: float) -> float:
        return d * math.log(rs.original_max_position_embeddings / (rot * 2 * math.pi)) / (2 * math.log(base))
    low = max(math.floor(corr_dim(rs.beta_fast)), 0)
    high = min(math.ceil(corr_dim(rs.beta_slow)), d - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(d // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolation = 1 - ramp
    inv = (1.0 / (rs.factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    if rs.mscale and rs.mscale_all_dim:
        attn_factor = yarn_mscale(rs.factor, rs.mscale) / yarn_mscale(rs.factor, rs.mscale_all_dim)
    else:
        attn_factor = yarn_mscale(rs.factor)
    return inv, attn_factor


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x0, x1), (x2, x3)… (DeepSeek's layout).

    The output holds the rotated even dims then the odd dims; queries and keys get the same
    permutation, so their dot products equal the interleaved rotation's.
    """
    x1, x2 = x[..., 0::2], x[..., 1::2]
    # in x's dtype: fp32 cos / sin must not promote bf16 activations (that would keep q, k in fp32
    # under autocast and off the fused attention kernels)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


# ---------------------------------------------------------------------------- attention
class MLA(nn.Module):
    """Multi-head Latent Attention (DeepSeek-V2 §2.1): low-rank q, compressed KV, shared rotary key."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        h, n = cfg.hidden_size, cfg.num_attention_heads
        self.num_heads, self.dn, self.dr, self.dv = n, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        self.kv_lora_rank = cfg.kv_lora_rank
        if cfg.q_lora_rank:
            self.q_a_proj = nn.Linear(h, cfg.q_lora_rank, bias=False)
            self.q_a_layernorm = RMSNorm(cfg.q_lora_rank, cfg.rms_norm_eps)
            self.q_b_proj = nn.Linear(cfg.q_lora_rank, n * cfg.qk_head_dim, bias=False)
        else:
            self.q_proj = nn.Linear(h, n * cfg.qk_head_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(h, cfg.kv_lora_rank + cfg.qk_rope_head_dim, bias=False)
        self.kv_a_layernorm = RMSNorm(cfg.kv_lora_rank, cfg.rms_norm_eps)
        self.kv_b_proj = nn.Linear(cfg.kv_lora_rank, n * (cfg.qk_nope_head_dim + cfg.v_head_dim), bias=False)
        self.o_proj = nn.Linear(n * cfg.v_head_dim, h, bias=False)
        self.scale = cfg.softmax_scale
        self._fused_a: torch.Tensor | None = None   # [q_a; kv_a] rows for inference (fuse_for_decode)

    def _q(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.q_lora_rank:
            return self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        return self.q_proj(x)

    def forward(self, x_BTH: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: "LayerCache | None" = None, want_max_logit: bool = False,
                segment_ids: torch.Tensor | None = None, prefix_lens: torch.Tensor | None = None):
        B, T, _ = x_BTH.shape
        if self._fused_a is not None and not torch.is_grad_enabled():
            qa, kv_a = F.linear(x_BTH, self._fused_a).split([self.cfg.q_lora_rank, self.kv_lora_rank + self.dr], -1)
            q = self.q_b_proj(self.q_a_layernorm(qa))
        else:
            q, kv_a = self._q(x_BTH), self.kv_a_proj_with_mqa(x_BTH)
        q_nope, q_rope = q.view(B, T, self.num_heads, self.dn + self.dr).split([self.dn, self.dr], dim=-1)
        c_BTC, k_rope_BTD = kv_a.split([self.kv_lora_rank, self.dr], dim=-1)
        c_BTC = self.kv_a_layernorm(c_BTC)
        q_rope = apply_rope(q_rope, cos[:, :, None], sin[:, :, None])
        k_rope_BTD = apply_rope(k_rope_BTD, cos, sin)
        if cache is not None:
            kv_BSX, mask_BTS = cache.update(c_BTC, k_rope_BTD)
            if T <= 4:   # decode: attend in latent space (weights absorbed), no per-step expansion
                out = self._absorbed(q_nope, q_rope, kv_BSX, mask_BTS)
                return self.o_proj(out.reshape(B, T, -1)), None
            c_BSC, k_rope_BSD = kv_BSX.split([self.kv_lora_rank, self.dr], dim=-1)
        else:
            c_BSC, k_rope_BSD, mask_BTS = c_BTC, k_rope_BTD, None
        S = c_BSC.shape[1]
        kv = self.kv_b_proj(c_BSC).view(B, S, self.num_heads, self.dn + self.dv)
        k_nope, v_BSND = kv.split([self.dn, self.dv], dim=-1)
        q = torch.cat([q_nope, q_rope], dim=-1).transpose(1, 2)                      # B N T Dqk
        k = torch.cat([k_nope, k_rope_BSD[:, :, None].expand(B, S, self.num_heads, self.dr)],
                      dim=-1).transpose(1, 2)                                         # B N S Dqk
        v = v_BSND.transpose(1, 2)
        if segment_ids is not None:   # packed sequences: causal attention within each segment
            out, max_logit = self._packed(q, k, v, segment_ids, want_max_logit, prefix_lens)
            return self.o_proj(out.transpose(1, 2).reshape(B, T, -1)), max_logit
        max_logit = self._max_logit(q, k, mask_BTS) if want_max_logit else None
        out = _sdpa(q, k, v, mask_BTS, self.scale)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1)), max_logit

    @torch.compiler.disable
    def _packed(self, q, k, v, segment_ids, want_max_logit: bool, prefix_lens: torch.Tensor | None = None):
        """Causal attention within each (row, start, end) span of equal segment ids (cost Σ len²):
        on CUDA one variable-length flash call over all spans (V padded to the q/k head dim), else
        one attention per span. Eager under torch.compile: the spans differ from batch to batch, and
        a compiled graph would be specialised (recompiled) on each batch's list of spans.
        With `prefix_lens` [B], row b's first prefix_lens[b] tokens are a prefix shared by every
        later segment of the row: each such segment attends to the prefix and causally to itself
        (one attention per segment, keys = prefix + segment)."""
        spans = segment_spans(segment_ids)
        B, N, T, dqk = q.shape
        dv = v.shape[-1]
        plens = prefix_lens.tolist() if prefix_lens is not None else [0] * B
        if any(plens):
            return self._prefix_shared(q, k, v, spans, plens, segment_ids, want_max_logit)
        varlen = _varlen_attn() if q.is_cuda and q.dtype in (torch.bfloat16, torch.float16) else None
        if varlen is not None:
            flat = lambda t: t.transpose(1, 2).reshape(B * T, N, t.shape[-1])  # noqa: E731 — B N T D -> (B T) N D
            cu = torch.tensor([0] + [b * T + e for b, _, e in spans], dtype=torch.int32, device=q.device)
            longest = max(e - a for _, a, e in spans)
            o = varlen(flat(q), flat(k), flat(F.pad(v, (0, dqk - dv))), cu, cu, longest, longest, scale=self.scale)
            out = o[..., :dv].reshape(B, T, N, dv).transpose(1, 2)
        else:
            out = torch.zeros_like(q[..., :dv])
            for b, a, e in spans:
                out[b:b + 1, :, a:e] = _sdpa(q[b:b + 1, :, a:e].contiguous(), k[b:b + 1, :, a:e].contiguous(),
                                             v[b:b + 1, :, a:e].contiguous(), None, self.scale)
        max_logit = None
        if want_max_logit:
            for b, a, e in spans:
                m = self._max_logit(q[b:b + 1, :, a:e], k[b:b + 1, :, a:e], None)
                max_logit = m if max_logit is None else torch.maximum(max_logit, m)
        return out, max_logit

    def _prefix_shared(self, q, k, v, spans, plens: list[int], segment_ids, want_max_logit: bool):
        out = torch.zeros_like(q[..., :v.shape[-1]])
        seg = segment_ids.cpu()
        max_logit = None
        for b, a, e in spans:
            P = plens[b]
            shared = 0 < P <= a and int(seg[b, a]) != -1       # padding (segment -1) attends only to itself
            qs = q[b:b + 1, :, a:e]
            if shared:
                # causal attention over [prefix; segment] with the prefix's own queries along (their
                # outputs are dropped): the mask-free kernel, ~(P+T)²/2 work instead of P·T + T²/2
                # through a masked one, which is slower on CPUs
                cat = lambda t: torch.cat([t[b:b + 1, :, :P], t[b:b + 1, :, a:e]], dim=2)  # noqa: E731
                ks = cat(k)
                out[b:b + 1, :, a:e] = _sdpa(cat(q), ks, cat(v), None, self.scale)[:, :, P:]
            else:
                ks = k[b:b + 1, :, a:e].contiguous()
                out[b:b + 1, :, a:e] = _sdpa(qs.contiguous(), ks, v[b:b + 1, :, a:e].contiguous(), None, self.scale)
            if want_max_logit:            # causal, aligned to the end of the keys: the segment's queries only
                m = self._max_logit(qs, ks, None)
                max_logit = m if max_logit is None else torch.maximum(max_logit, m)
        return out, max_logit

    def _absorbed(self, q_nope, q_rope, kv_BSX, mask_BTS):
        """softmax(q·k) v computed against the latent cache (DeepSeek-V2 appendix: W_UK, W_UV absorbed).

        The cache row is [latent C | rotary key Dr], so one product [q_lat | q_rope]·rowᵀ gives both
        score terms."""
        w = self.kv_b_proj.weight.view(self.num_heads, self.dn + self.dv, self.kv_lora_rank)
        w_uk, w_uv = w[:, : self.dn], w[:, self.dn:]                                  # N Dn C, N Dv C
        q_lat = torch.einsum("btnd,ndc->bntc", q_nope, w_uk)                          # B N T C
        q_all = torch.cat([q_lat, q_rope.transpose(1, 2).to(q_lat.dtype)], dim=-1)   # B N T C+Dr
        scores = torch.einsum("bntx,bsx->bnts", q_all, kv_BSX) * self.scale
        scores = scores.float().masked_fill(~mask_BTS[:, None], float("-inf"))
        c_BSC = kv_BSX[..., : self.kv_lora_rank]
        p = scores.softmax(-1).to(c_BSC.dtype)
        o_lat = torch.einsum("bnts,bsc->btnc", p, c_BSC)
        return torch.einsum("btnc,ndc->btnd", o_lat, w_uv)                            # B T N Dv

    @torch.no_grad()
    def _max_logit(self, q, k, mask_BTS) -> torch.Tensor:
        """Per-head largest pre-softmax logit (after the scale) over the batch: QK-Clip's S_max."""
        B, N, T, _ = q.shape
        S = k.shape[2]
        if mask_BTS is None and triton_ok(q, self.dn):   # fused tiles: the logit matrix never hits memory
            return qk_max_logit(q, k, self.dn) * self.scale
        out = torch.full((N,), float("-inf"), device=q.device)
        q, k = q.detach(), k.detach()            # a statistic for QK-Clip: no autograd graph
        if mask_BTS is None:   # causal: query blocks against the keys up to their end (no upper triangle)
            blk = 256
            for b in range(B):
                for i in range(0, T, blk):
                    j = min(T, i + blk)
                    s = torch.matmul(q[b, :, i:j], k[b, :, :S - T + j].transpose(-1, -2)).float()
                    s[:, :, S - T + i:].masked_fill_(~torch.ones(j - i, j - i, dtype=torch.bool, device=q.device)
                                                     .tril(), float("-inf"))
                    out = torch.maximum(out, s.amax(dim=(-1, -2)))
            return out * self.scale
        for b in range(B):   # one sequence at a time keeps the N×T×S buffer small
            s = torch.matmul(q[b], k[b].transpose(-1, -2)).float()
            s = s.masked_fill(~mask_BTS[min(b, mask_BTS.shape[0] - 1)], float("-inf"))
            out = torch.maximum(out, s.amax(dim=(-1, -2)))
        return out * self.scale


# Attention kernel on CUDA for training / prefill: "cudnn" takes K2's unequal head dims
# (d_qk 192, d_v 128) as they are; "flash" pads V to 192 (flash needs equal dims), ~6% slower
# per training step on an H200 (docs/benchmarks.md); "auto" lets PyTorch choose. K2_ATTN overrides.
ATTN_BACKEND = os.environ.get("K2_ATTN", "cudnn")


@functools.cache
def _varlen_attn():
    """torch's variable-length flash attention, causal, as ``f(q, k, v, cu_q, cu_k, max_q, max_k,
    scale=)``; None where this torch has none (its causal flag changed from ``is_causal`` to
    ``window_size`` between releases)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    causal = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True} if "is_causal" in params \
        else None
    if causal is None:
        return None
    return functools.partial(varlen_attn, **causal)


def _sdpa(q, k, v, mask_BTS, scale):
    dv, dqk = v.shape[-1], q.shape[-1]
    # cuDNN declines a key length of 1 ("No available kernel", measured on the H200): PyTorch picks there
    if q.is_cuda and mask_BTS is None and ATTN_BACKEND == "cudnn" and q.dtype in (torch.bfloat16, torch.float16) \
            and k.shape[-2] > 1:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    pad = dv < dqk and (not q.is_cuda or (mask_BTS is None and ATTN_BACKEND == "flash"))
    if pad:   # flash attention (CUDA, and PyTorch's CPU kernel) needs equal head dims: pad V with zeros,
        # slice the output; on CPU unequal dims fall to the T×S math path (4.7× slower at T = 2048)
        v = F.pad(v, (0, dqk - dv))
    if mask_BTS is None:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_BTS[:, None], scale=scale)
    return out[..., :dv] if pad else out


# ---------------------------------------------------------------------------- feed-forward
class MLP(nn.Module):
    """SwiGLU feed-forward: the dense layers and the shared experts."""

    def __init__(self, hidden: int, inter: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inter, bias=False)
        self.up_proj = nn.Linear(hidden, inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)
        self._fused: torch.Tensor | None = None   # [gate; up] rows for inference (fuse_for_decode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fused is not None and not torch.is_grad_enabled():
            g, u = F.linear(x, self._fused).chunk(2, dim=-1)
            return self.down_proj(F.silu(g) * u)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Router(nn.Module):
    """Sigmoid router with the auxiliary-loss-free bias (DeepSeek-V3 §2.1.2).

    Scores are computed in fp32; the bias ``e_score_correction_bias`` only decides which experts
    are chosen; gates are the chosen raw scores, normalised, × routed_scaling_factor.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.weight = nn.Parameter(torch.empty(cfg.n_routed_experts, cfg.hidden_size))
        # a buffer, not a parameter: updated by the sign of the load error, never by gradients
        self.register_buffer("e_score_correction_bias", torch.zeros(cfg.n_routed_experts, dtype=torch.float32))

    def forward(self, x_MH: torch.Tensor):
        cfg = self.cfg
        scores_ME = F.linear(x_MH.float(), self.weight.float()).sigmoid()
        choice = scores_ME.detach() + self.e_score_correction_bias
        if cfg.n_group > 1:   # group-limited routing: keep the topk_group best groups (DeepSeek-V3)
            M, E = choice.shape
            grouped = choice.view(M, cfg.n_group, E // cfg.n_group)
            group_score = grouped.topk(2, dim=-1).values.sum(-1)
            keep = torch.zeros_like(group_score).scatter_(1, group_score.topk(cfg.topk_group, dim=-1).indices, 1.0)
            choice = grouped.masked_fill(keep[..., None] == 0, float("-inf")).view(M, E)
        idx_MK = choice.topk(cfg.num_experts_per_tok, dim=-1).indices
        gates_MK = scores_ME.gather(1, idx_MK)
        if cfg.norm_topk_prob:
            gates_MK = gates_MK / (gates_MK.sum(-1, keepdim=True) + 1e-20)
        return gates_MK * cfg.routed_scaling_factor, idx_MK, scores_ME


class GroupedExperts(nn.Module):
    """E SwiGLU experts as three 3-D weights, run with grouped GEMMs over expert-sorted tokens."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        e, h, i = cfg.n_routed_experts, cfg.hidden_size, cfg.moe_intermediate_size
        self.gate_proj = nn.Parameter(torch.empty(e, i, h))
        self.up_proj = nn.Parameter(torch.empty(e, i, h))
        self.down_proj = nn.Parameter(torch.empty(e, h, i))
        self._fused: torch.Tensor | None = None   # [gate; up] as [2·E·I, H] for decode (fuse_for_decode)

    def forward(self, x_MH: torch.Tensor, gates_MK: torch.Tensor, idx_MK: torch.Tensor):
        M, K = idx_MK.shape
        E = self.gate_proj.shape[0]
        if x_MH.is_cuda and M <= DENSE_DECODE_TOKENS and not torch.is_grad_enabled():
            return self._dense(x_MH, gates_MK, idx_MK)
        flat = idx_MK.reshape(-1)
        order = flat.argsort(stable=True)                       # (token, slot) pairs grouped by expert
        counts_E = torch.zeros(E, dtype=torch.int32, device=x_MH.device).scatter_add_(
            0, flat, torch.ones_like(flat, dtype=torch.int32))
        offs = counts_E.cumsum(0, dtype=torch.int32)
        xs = _Dispatch.apply(x_MH, order, K)
        h = F.silu(_gmm(xs, self.gate_proj, offs)) * _gmm(xs, self.up_proj, offs)
        ys = _gmm(h, self.down_proj, offs) * gates_MK.reshape(-1)[order, None].to(x_MH.dtype)
        y = torch.empty_like(ys).index_copy_(0, order, ys).view(M, K, -1)   # back to token order
        # sum over the K slots in a fixed order: deterministic, no atomics
        return y.sum(1), counts_E

    def _dense(self, x_MH, gates_MK, idx_MK):
        """Every expert on every token, unchosen ones weighted 0: for a decode step's few tokens.

        It reads the same expert weights as the grouped GEMM but needs a handful of kernels instead
        of a sort, scatter, gather and three grouped GEMMs; the E/K-fold extra FLOPs are negligible
        at M ≤ DENSE_DECODE_TOKENS (bench/model.py: generation tokens/s). The gates are folded into
        the SwiGLU product, so the weighted sum over experts is a plain sum over the leading dim."""
        E, I, H = self.gate_proj.shape
        M = x_MH.shape[0]
        gates_ME = torch.zeros(M, E, device=x_MH.device, dtype=x_MH.dtype).scatter_(
            1, idx_MK, gates_MK.to(x_MH.dtype))
        counts_E = torch.zeros(E, dtype=torch.int32, device=x_MH.device).scatter_add_(
            0, idx_MK.reshape(-1), torch.ones_like(idx_MK.reshape(-1), dtype=torch.int32))
        if self._fused is not None:   # one GEMM for gate and up
            g, u = (x_MH @ self._fused.t()).chunk(2, dim=-1)
        else:
            g, u = x_MH @ self.gate_proj.view(E * I, H).t(), x_MH @ self.up_proj.view(E * I, H).t()
        g_MEI, u_MEI = g.view(M, E, I), u.view(M, E, I)
        h_EMI = (F.silu(g_MEI) * u_MEI * gates_ME[..., None]).transpose(0, 1)
        # down_proj [E, H, I] as stored, read transposed by the GEMM; the [M, H] sum is contiguous
        return torch.bmm(h_EMI, self.down_proj.transpose(1, 2)).sum(0), counts_E


class _Dispatch(torch.autograd.Function):
    """``x[order // K]``: each token copied to its K expert-sorted (token, slot) rows.

    The backward sums each token's K row gradients with a gather through the inverse permutation
    instead of index_put's accumulate (atomic adds in any order): deterministic, and no zero-filled
    buffer to scatter into."""

    @staticmethod
    def forward(ctx, x_MH: torch.Tensor, order: torch.Tensor, K: int) -> torch.Tensor:
        ctx.save_for_backward(order)
        ctx.K = K
        return x_MH[order // K]

    @staticmethod
    def backward(ctx, grad_xs: torch.Tensor):
        (order,) = ctx.saved_tensors
        inv = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))
        return grad_xs[inv].view(order.numel() // ctx.K, ctx.K, -1).sum(1), None, None


DENSE_DECODE_TOKENS = 64   # CUDA inference with at most this many tokens takes GroupedExperts._dense


def _gmm(x: torch.Tensor, w_EOI: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """x[rows of expert e] @ w[e]ᵀ for every e in one grouped GEMM."""
    if x.is_cuda and torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") == torch.bfloat16:
        x = x.bfloat16()      # autocast does not cover the grouped GEMM: fp32 master weights, bf16 math
    if x.is_cuda and x.dtype != torch.bfloat16:
        # CUDA's grouped GEMM is bf16-only: fp32 on a GPU (tests, debugging) loops over experts
        out, start = x.new_empty(x.shape[0], w_EOI.shape[1]), 0
        for e, end in enumerate(offs.tolist()):
            out[start:end] = x[start:end] @ w_EOI[e].t()
            start = end
        return out
    return torch._grouped_mm(x, w_EOI.to(x.dtype).transpose(-2, -1), offs=offs)


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.gate = Router(cfg)
        self.experts = GroupedExperts(cfg)
        self.shared_experts = (MLP(cfg.hidden_size, cfg.moe_intermediate_size * cfg.n_shared_experts)
                               if cfg.n_shared_experts else None)
        # per-expert token counts accumulated since the last bias update (telemetry + balancing)
        self.register_buffer("load", torch.zeros(cfg.n_routed_experts), persistent=False)

    def forward(self, x_BTH: torch.Tensor):
        B, T, Hd = x_BTH.shape
        x_MH = x_BTH.reshape(-1, Hd)
        gates_MK, idx_MK, scores_ME = self.gate(x_MH)
        y, counts_E = self.experts(x_MH, gates_MK, idx_MK)
        if self.training:
            with torch.no_grad():
                self.load += counts_E
        if self.shared_experts is not None:
            y = y + self.shared_experts(x_MH)
        aux = None
        if self.training and self.cfg.seq_aux_loss_alpha > 0:
            aux = self._seq_balance_loss(scores_ME.view(B, T, -1), idx_MK.view(B, T, -1))
        return y.view(B, T, Hd), aux

    def _seq_balance_loss(self, scores_BTE, idx_BTK):
        """Sequence-wise balance loss α·Σ f_i·P_i (DeepSeek-V3 eq. 17–20), averaged over sequences."""
        E, K = scores_BTE.shape[-1], idx_BTK.shape[-1]
        T = scores_BTE.shape[1]
        chosen = torch.zeros_like(scores_BTE).scatter_(-1, idx_BTK, 1.0)
        f = chosen.sum(1) * E / (K * T)                               # B E
        p = (scores_BTE / scores_BTE.sum(-1, keepdim=True)).mean(1)   # B E
        return self.cfg.seq_aux_loss_alpha * (f * p).sum(-1).mean()

    @torch.no_grad()
    def update_bias(self, speed: float | None = None) -> torch.Tensor:
        """b_i -= γ·sign(load_i − mean load), then reset the load; returns the load used."""
        gamma = self.cfg.bias_update_speed if speed is None else speed
        load = self.load.clone()
        self.gate.e_score_correction_bias -= gamma * torch.sign(load - load.mean())
        self.load.zero_()
        return load


# ---------------------------------------------------------------------------- block, model
class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.self_attn = MLA(cfg)
        self.mlp = MoE(cfg) if cfg.is_moe_layer(layer) else MLP(cfg.hidden_size, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, cache=None, want_max_logit=False, segment_ids=None, prefix_lens=None):
        a, max_logit = self.self_attn(self.input_layernorm(x), cos, sin, cache, want_max_logit, segment_ids,
                                      prefix_lens)
        x = x + a
        if isinstance(self.mlp, MoE):
            m, aux = self.mlp(self.post_attention_layernorm(x))
        else:
            m, aux = self.mlp(self.post_attention_layernorm(x)), None
        return x + m, max_logit, aux


@torch.compiler.disable
def segment_spans(segment_ids: torch.Tensor) -> list[tuple[int, int, int]]:
    """(row, start, end) of every run of equal segment ids: each attends only within itself (one
    causal attention per span: cost Σ len², no T×T mask)."""
    seg = segment_ids.cpu()
    B, T = seg.shape
    change = torch.ones(B, T, dtype=torch.bool)
    change[:, 1:] = seg[:, 1:] != seg[:, :-1]
    out = []
    for b in range(B):
        starts = change[b].nonzero().flatten().tolist() + [T]
        out += [(b, a, e) for a, e in zip(starts[:-1], starts[1:])]
    return out


def segment_positions(segment_ids: torch.Tensor, prefix_lens: torch.Tensor | None = None) -> torch.Tensor:
    """[B, T] positions that restart at 0 wherever the segment id changes — at prefix_lens[b] for
    the segments after row b's shared prefix (not its padding)."""
    B, T = segment_ids.shape
    idx = torch.arange(T, device=segment_ids.device)[None].expand(B, T)
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    first = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values
    pos = idx - first
    if prefix_lens is not None:
        P = prefix_lens.to(segment_ids.device)[:, None]
        pos = pos + torch.where((idx >= P) & (P > 0) & (segment_ids != -1), P, torch.zeros_like(P))
    return pos


@dataclass
class K2Output:
    logits: torch.Tensor | None
    loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    max_logits: torch.Tensor | None = None     # [layers, heads]: QK-Clip's S_max per head


class K2Inner(nn.Module):
    """``model.*`` in Hugging Face names: embeddings, decoder layers, final norm."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


@torch.compiler.disable
def _embed_eager(embed: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    """The embedding lookup when gradients are wanted, kept out of torch.compile: CUDA's eager
    backward sums repeated tokens' gradients in a fixed order (sorted), inductor's lowering with
    atomic adds in any order — the one nondeterministic gradient left after `_Dispatch`."""
    return embed(ids)


class K2ForCausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = K2Inner(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        inv_freq, self.rope_scale = rope_inv_freq(cfg)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> "K2ForCausalLM":
        """Normal(0, initializer_range) for every matrix, ones for norm gains, zero routing bias."""
        gen = torch.Generator(device="cpu")
        if seed is not None:
            gen.manual_seed(seed)
        std = self.config.initializer_range
        for name, p in self.named_parameters():
            if p.ndim == 1:
                p.fill_(1.0)
            else:   # drawn on the CPU so a seed gives the same weights on every device
                p.copy_(torch.empty(p.shape, dtype=torch.float32).normal_(0.0, std, generator=gen))
        for m in self.modules():
            if isinstance(m, Router):
                m.e_score_correction_bias.zero_()
        return self

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def fuse_for_decode(self) -> "K2ForCausalLM":
        """Give projections that share an input one weight each (q_a + kv_a, gate + up of the dense
        MLPs, the shared experts and the routed experts), used by no-grad forwards: fewer, larger
        GEMMs per decode step. The parameters become views into the fused weights (no extra memory;
        in-place updates stay visible); moving or casting the model fuses again."""
        for m in self.modules():
            if isinstance(m, MLA) and m.cfg.q_lora_rank:
                m._fused_a = fuse_rows(m.q_a_proj, m.kv_a_proj_with_mqa)
            elif isinstance(m, (MLP, GroupedExperts)):
                m._fused = fuse_rows(m.gate_proj, m.up_proj)
        self._decode_fused = True
        return self

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        if getattr(self, "_decode_fused", False):   # .to() / .half() made new tensors: fuse them again
            self.fuse_for_decode()
        return out

    # ------------------------------------------------------------------ forward
    def rotary(self, positions_BT: torch.Tensor, dtype: torch.dtype):
        freqs = positions_BT.float()[..., None] * self.inv_freq.float()
        return (freqs.cos() * self.rope_scale).to(dtype), (freqs.sin() * self.rope_scale).to(dtype)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, *,
                positions: torch.Tensor | None = None, cache: "KVCache | None" = None,
                want_max_logits: bool = False, logits_to_keep: int = 0,
                segment_ids: torch.Tensor | None = None, prefix_lens: torch.Tensor | None = None,
                loss_only: bool = False) -> K2Output:
        """`segment_ids` [B, T] packs several sequences per row: a token attends only to earlier
        tokens of its own segment, and positions restart at 0 in each segment (unless given) — a
        packed conversation computes what it computes alone. Labels at a segment's first token
        should be -100 (position t predicts labels[t + 1]). `loss_only` (with labels, eager): the head
        runs only where a label is set — SFT labels ~10% of its tokens — and ``logits`` is None.
        `prefix_lens` [B] (with segment_ids): row b's first prefix_lens[b] tokens (segment 0) are a
        prefix every later segment of the row continues — it attends to them, its positions follow
        them — so conversations that share a system prompt and tool declarations compute exactly
        what each computes alone, with the prefix computed once per row."""
        B, T = input_ids.shape
        emb = self.model.embed_tokens
        x = _embed_eager(emb, input_ids) if torch.is_grad_enabled() else emb(input_ids)
        if segment_ids is not None:
            if cache is not None:
                raise ValueError("segment_ids (packed sequences) is for training / scoring, not with a cache")
            if positions is None:
                positions = segment_positions(segment_ids, prefix_lens)
        if positions is None:
            positions = cache.positions(T) if cache is not None else torch.arange(T, device=x.device)[None].expand(B, T)
        cos, sin = self.rotary(positions, x.dtype)
        max_logits, aux_total = [], None
        for i, layer in enumerate(self.model.layers):
            x, ml, aux = layer(x, cos, sin, cache.layer(i) if cache is not None else None, want_max_logits, segment_ids,
                               prefix_lens)
            if ml is not None:
                max_logits.append(ml)
            if aux is not None:
                aux_total = aux if aux_total is None else aux_total + aux
        if cache is not None:
            cache.advance(T)
        x = self.model.norm(x)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        if labels is not None and loss_only and not torch.compiler.is_compiling():
            tgt = labels[:, 1:]
            keep = tgt != -100
            loss = F.cross_entropy(self.lm_head(x[:, :-1][keep]).float(), tgt[keep])
            if aux_total is not None:
                loss = loss + aux_total
            return K2Output(None, loss, aux_total, torch.stack(max_logits) if max_logits else None)
        logits = self.lm_head(x)
        loss = None
        if labels is not None:
            # as transformers' causal LMs: position t predicts labels[t + 1] (pass labels=input_ids)
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
            if aux_total is not None:
                loss = loss + aux_total
        return K2Output(logits, loss, aux_total, torch.stack(max_logits) if max_logits else None)

    # ------------------------------------------------------------------ MoE helpers
    def moe_layers(self) -> list[tuple[int, MoE]]:
        return [(i, l.mlp) for i, l in enumerate(self.model.layers) if isinstance(l.mlp, MoE)]

    @torch.no_grad()
    def expert_load(self) -> torch.Tensor:
        """[moe layers, experts] token counts accumulated since the last ``update_routing_bias``."""
        return torch.stack([m.load for _, m in self.moe_layers()]) if self.moe_layers() else torch.zeros(0)

    @torch.no_grad()
    def update_routing_bias(self, speed: float | None = None) -> torch.Tensor:
        """Aux-loss-free balancing step for every MoE layer; returns the loads it used."""
        loads = [m.update_bias(speed) for _, m in self.moe_layers()]
        return torch.stack(loads) if loads else torch.zeros(0)


# ---------------------------------------------------------------------------- latent KV cache
class LayerCache:
    def __init__(self, cache: "KVCache", i: int):
        self.cache, self.i = cache, i

    def update(self, c_BTC: torch.Tensor, k_rope_BTD: torch.Tensor):
        return self.cache.write(self.i, c_BTC, k_rope_BTD)


class KVCache:
    """Preallocated MLA latent cache: per layer [B, S_max, C + Dr] rows of latent and rotary key.

    Rows may be left-padded: ``pad[b]`` leading columns of row b are masked out and its positions
    start at 0 after them. ``length`` is the number of columns written so far (a device tensor too,
    so a captured CUDA graph can replay decode steps).
    """

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device, dtype, pad: torch.Tensor | None = None):
        L = cfg.num_hidden_layers
        # one tensor per layer, written with index_put (``t[:, cols] = x``): torch.compile updates
        # such a graph input in place, while a write into a slice of one [L, ...] tensor made it
        # copy the whole cache once per layer and step (docs/benchmarks.md, generation)
        # a row holds [latent C | rotary key Dr], so decode scores both parts with one product
        self.kv = [torch.zeros(batch, max_len, cfg.kv_lora_rank + cfg.qk_rope_head_dim, device=device, dtype=dtype)
                   for _ in range(L)]
        self.pad = (pad if pad is not None else torch.zeros(batch, dtype=torch.long)).to(device)
        self.max_len, self.batch = max_len, batch
        self.length = 0                                               # host-side column count
        self.static = False            # True: attend over all max_len columns (CUDA graph replay)
        self.col = torch.zeros((), dtype=torch.long, device=device)   # same, on the device
        self._cols = torch.arange(max_len, device=device)

    def reset(self, pad: torch.Tensor | None = None) -> None:
        """Empty the cache for a new batch (same shapes); stale columns are masked, not zeroed."""
        self.pad.copy_(pad if pad is not None else torch.zeros_like(self.pad))
        self.col.zero_()
        self.length = 0

    def layer(self, i: int) -> LayerCache:
        return LayerCache(self, i)

    def positions(self, T: int) -> torch.Tensor:
        cols = self.col + torch.arange(T, device=self.col.device)
        return (cols[None] - self.pad[:, None]).clamp_min(0)

    def write(self, i: int, c_BTC: torch.Tensor, k_rope_BTD: torch.Tensor):
        T = c_BTC.shape[1]
        if not self.static and self.length + T > self.max_len:   # static: the engine bounds the steps
            raise ValueError(f"KV cache full: {self.length} + {T} > max_len {self.max_len}")
        idx = self.col + torch.arange(T, device=self.col.device)
        kv = self.kv[i]
        kv[:, idx] = torch.cat([c_BTC, k_rope_BTD], dim=-1).to(kv.dtype)
        # key column s is visible to query column q iff pad[b] <= s <= q; a padding query sees
        # itself, so its (unused) output stays finite and no NaN reaches the cache
        S = self.max_len if self.static else self.length + T
        cols = self._cols[None, None, :S]
        q_cols = idx[None, :, None]
        mask_BTS = (cols <= q_cols) & ((cols >= self.pad[:, None, None]) | (cols == q_cols))
        return kv[:, :S], mask_BTS

    def advance(self, T: int) -> None:
        self.length += T
        self.col += T
