"""GPU kernels for the K2 model (Triton). Each has a plain-PyTorch equivalent the CPU uses.

``qk_max_logit``: QK-Clip's S_max — the largest causal pre-softmax logit per head — computed
tile by tile like a flash-attention forward that keeps only a running max, so the B×N×T×S logit
matrix is never written to memory (K2 §2.1; K2_REFERENCE.md §1).
"""
from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:   # CPU installs: the PyTorch path in MLA._max_logit is used instead
    triton = None


if triton is not None:
    @triton.jit
    def _qk_max_kernel(Q, K, Out, sqb, sqh, sqt, skb, skh, skt, T, S, H, NUM_M,
                       D1: tl.constexpr, D2: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       PREC: tl.constexpr):
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        offset = S - T                                   # queries are the last T of S positions
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        d1 = tl.arange(0, D1)
        d2 = tl.arange(0, D2)
        qp = Q + b * sqb + h * sqh + offs_m[:, None] * sqt
        row_ok = offs_m[:, None] < T
        q1 = tl.load(qp + d1[None, :], mask=row_ok, other=0.0)          # nope part (power of two)
        q2 = tl.load(qp + D1 + d2[None, :], mask=row_ok, other=0.0)     # rope part
        m = tl.full([BLOCK_M], float("-inf"), tl.float32)
        hi = tl.minimum(S, (pid_m + 1) * BLOCK_M + offset)
        for start_n in range(0, hi, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            kp = K + b * skb + h * skh + offs_n[None, :] * skt
            col_ok = offs_n[None, :] < S
            k1 = tl.load(kp + d1[:, None], mask=col_ok, other=0.0)
            k2 = tl.load(kp + D1 + d2[:, None], mask=col_ok, other=0.0)
            s = tl.dot(q1, k1, input_precision=PREC) + tl.dot(q2, k2, input_precision=PREC)
            valid = (offs_n[None, :] <= offs_m[:, None] + offset) & col_ok & row_ok
            s = tl.where(valid, s, float("-inf"))
            m = tl.maximum(m, tl.max(s, 1))
        tl.store(Out + bh * NUM_M + pid_m, tl.max(m, 0))


def qk_max_logit(q: torch.Tensor, k: torch.Tensor, d_nope: int) -> torch.Tensor:
    """Per-head max of causal q·kᵀ (no scale) for q [B, N, T, D], k [B, N, S, D] on CUDA → [N] fp32.

    D = d_nope + d_rope, both powers of two (128 + 64 in K2), so each half is one tensor-core dot.
    """
    B, N, T, D = q.shape
    S = k.shape[2]
    assert q.stride(-1) == 1 and k.stride(-1) == 1
    block_m, block_n = 64, 64
    num_m = triton.cdiv(T, block_m)
    out = torch.empty(B * N * num_m, device=q.device, dtype=torch.float32)
    _qk_max_kernel[(num_m, B * N)](q, k, out, q.stride(0), q.stride(1), q.stride(2),
                                   k.stride(0), k.stride(1), k.stride(2), T, S, N, num_m,
                                   D1=d_nope, D2=D - d_nope, BLOCK_M=block_m, BLOCK_N=block_n,
                                   PREC="ieee" if q.dtype == torch.float32 else "tf32",
                                   num_warps=4, num_stages=2)
    return out.view(B, N, num_m).amax(dim=(0, 2))


def triton_ok(q: torch.Tensor, d_nope: int) -> bool:
    d_rope = q.shape[-1] - d_nope
    pow2 = lambda x: x >= 16 and x & (x - 1) == 0  # noqa: E731
    return triton is not None and q.is_cuda and pow2(d_nope) and pow2(d_rope)
