"""Fused multi-tensor kernels for MuonClip on GPUs (Triton). The CPU path uses torch ops.

Both work on one Newton-Schulz batch: N matrices of the same shape (rows × cols = RC elements)
that live in several parameters (a 3-D expert stack holds many). Each launch covers the whole
batch — one program per (matrix, block) — with per-matrix tables saying which parameter a matrix
belongs to and where inside it, so a step costs two launches per batch instead of two per
parameter (the CPU-side launch cost was a quarter of the step on an H200).

``momentum_to_bf16``: updates the fp32 momentum in place and writes the Nesterov update, cast to
bf16, straight into the batch (instead of lerp_, lerp, a cast and a concatenation: 14 instead of
34 bytes moved per element), summing each matrix's squares on the way; a second pass divides each
matrix by its norm (Newton-Schulz's first step). The arithmetic is torch.lerp's and torch's
bf16 norm and division.

``apply_update``: ``W = W·(1 − ηλ) + α·O`` with α = −η·0.2·√max(A, B), one pass.

``sym_gram``: the two symmetric products of a Newton-Schulz iteration, ``A = X·Xᵀ`` and
``B = b·A + c·A² + a·I``, as one batched Triton GEMM that computes only the tiles on and above
the diagonal and writes each off-diagonal tile twice (itself and its transpose): 10 of 16 tiles
for a 512×512 result. The second form takes A's own tile in the epilogue, so torch's
``baddbmm(A, A, A)`` copy of A into the output and the separate ``+ a·I`` pass disappear.
"""
from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:   # CPU installs
    triton = None

BLOCK = 4096

if triton is not None:
    @triton.jit
    def _momentum_kernel(G_PTRS, M_PTRS, TID, JID, X, SUMSQ, RC, w_m, w_n,
                         NESTEROV: tl.constexpr, BLOCK: tl.constexpr):
        m = tl.program_id(0)
        t = tl.load(TID + m)
        j = tl.load(JID + m).to(tl.int64)
        g_base = tl.load(G_PTRS + t).to(tl.pointer_type(tl.float32))
        m_base = tl.load(M_PTRS + t).to(tl.pointer_type(tl.float32))
        inner = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        ok = inner < RC
        offs = j * RC + inner
        g = tl.load(g_base + offs, mask=ok)
        mo = tl.load(m_base + offs, mask=ok)
        mo = mo + w_m * (g - mo)                      # torch.lerp(m, g, 1 - mu): weight < 0.5
        tl.store(m_base + offs, mo, mask=ok)
        if NESTEROV:
            u = mo - (mo - g) * w_n                   # torch.lerp(g, m, mu): weight >= 0.5
        else:
            u = mo
        ub = u.to(tl.bfloat16)
        tl.store(X + m.to(tl.int64) * RC + inner, ub, mask=ok)
        uf = tl.where(ok, ub.to(tl.float32), 0.0)
        tl.atomic_add(SUMSQ + m, tl.sum(uf * uf, axis=0))   # each matrix's squared Frobenius norm

    @triton.jit
    def _normalise_kernel(X, SUMSQ, RC, eps, BLOCK: tl.constexpr):
        m = tl.program_id(0)
        inner = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        ok = inner < RC
        # as torch: the norm of a bf16 tensor is bf16, clamped at eps, and the quotient is rounded
        nrm = tl.sqrt_rn(tl.load(SUMSQ + m)).to(tl.bfloat16).to(tl.float32)
        nrm = tl.maximum(nrm, eps)
        p = X + m.to(tl.int64) * RC + inner
        x = tl.load(p, mask=ok).to(tl.float32)
        tl.store(p, tl.math.div_rn(x, nrm).to(tl.bfloat16), mask=ok)

    @triton.jit
    def _apply_kernel(W_PTRS, TID, JID, O, RC, decay, alpha, BLOCK: tl.constexpr):
        m = tl.program_id(0)
        t = tl.load(TID + m)
        j = tl.load(JID + m).to(tl.int64)
        w_base = tl.load(W_PTRS + t).to(tl.pointer_type(tl.float32))
        inner = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        ok = inner < RC
        offs = j * RC + inner
        w = tl.load(w_base + offs, mask=ok)
        o = tl.load(O + m.to(tl.int64) * RC + inner, mask=ok).to(tl.float32)
        w = w * decay
        tl.store(w_base + offs, w + alpha * o, mask=ok)


    def _sym_configs():
        return [triton.Config({"BK": bk}, num_warps=w, num_stages=st)
                for bk in (64,) for w in (4, 8) for st in (3, 4)]

    @triton.autotune(configs=_sym_configs(), key=["R", "K", "BM", "X_ROWMAJOR", "HAS_S"])
    @triton.jit
    def _sym_gram_kernel(X, S, OUT, TILE_M, TILE_N, R, K, sxb, sxr, sxk, alpha, beta, diag,
                         X_ROWMAJOR: tl.constexpr, HAS_S: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr):
        t = tl.program_id(0)
        b = tl.program_id(1).to(tl.int64)
        tm = tl.load(TILE_M + t)
        tn = tl.load(TILE_N + t)
        rm = tm * BM + tl.arange(0, BM)
        rn = tn * BM + tl.arange(0, BM)
        rk = tl.arange(0, BK)
        xb = X + b * sxb
        if X_ROWMAJOR:
            a_ptr = xb + rm[:, None] * sxr + rk[None, :]
            b_ptr = xb + rn[None, :] * sxr + rk[:, None]
            step = BK
        else:
            a_ptr = xb + rm[:, None] + rk[None, :] * sxk
            b_ptr = xb + rn[None, :] + rk[:, None] * sxk
            step = BK * sxk
        acc = tl.zeros((BM, BM), dtype=tl.float32)
        for _ in range(0, K, BK):
            acc = tl.dot(tl.load(a_ptr), tl.load(b_ptr), acc)
            a_ptr += step
            b_ptr += step
        acc = acc * alpha
        ob = OUT + b * R * R
        if HAS_S:
            acc += beta * tl.load(S + b * R * R + rm[:, None] * R + rn[None, :]).to(tl.float32)
        acc = tl.where(rm[:, None] == rn[None, :], acc + diag, acc)
        val = acc.to(tl.bfloat16)
        tl.store(ob + rm[:, None] * R + rn[None, :], val)
        if tm != tn:
            tl.store(ob + rn[:, None] * R + rm[None, :], tl.trans(val))


_TILES: dict[tuple[int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}


def sym_gram_ok(X: torch.Tensor) -> bool:
    """Whether :func:`sym_gram` takes this batch ``(n, r, k)``: bf16 on CUDA, rows a multiple of 64,
    k a multiple of 64, and either rows or k contiguous (a matrix or its transposed view)."""
    if triton is None or not X.is_cuda or X.dtype != torch.bfloat16 or X.ndim != 3:
        return False
    n, r, k = X.shape
    return r % 64 == 0 and k % 64 == 0 and (X.stride(2) == 1 or X.stride(1) == 1)


def sym_gram(X: torch.Tensor, S: torch.Tensor | None = None, alpha: float = 1.0, beta: float = 0.0,
             diag: float = 0.0) -> torch.Tensor:
    """``alpha·X·Xᵀ + beta·S + diag·I`` for a batch ``X (n, r, k)`` (bf16, fp32 accumulation, one
    rounding), ``S`` an optional symmetric ``(n, r, r)`` batch. The result is exactly symmetric."""
    n, r, k = X.shape
    bm = 128 if r % 128 == 0 else 64
    key = (r // bm, X.device)
    if key not in _TILES:
        pairs = [(i, j) for i in range(r // bm) for j in range(i, r // bm)]
        _TILES[key] = (torch.tensor([i for i, _ in pairs], dtype=torch.int32, device=X.device),
                       torch.tensor([j for _, j in pairs], dtype=torch.int32, device=X.device))
    tm, tn = _TILES[key]
    out = torch.empty(n, r, r, device=X.device, dtype=torch.bfloat16)
    rowmajor = X.stride(2) == 1
    if S is not None:
        S = S.contiguous()
    _sym_gram_kernel[(tm.numel(), n)](
        X, S if S is not None else out, out, tm, tn, r, k, X.stride(0), X.stride(1), X.stride(2),
        alpha, beta, diag, X_ROWMAJOR=rowmajor, HAS_S=S is not None, BM=bm)
    return out


def fused_ok(*tensors: torch.Tensor) -> bool:
    """The fused path takes contiguous fp32 CUDA tensors (master weights, their grads, momenta)."""
    return triton is not None and all(t.is_cuda and t.is_contiguous() and t.dtype == torch.float32
                                      for t in tensors)


class BatchTables:
    """Per-matrix tables of one Newton-Schulz batch: parameter index and index inside it."""

    def __init__(self, sizes: list[int], device: torch.device):
        tid = [t for t, n in enumerate(sizes) for _ in range(n)]
        jid = [j for n in sizes for j in range(n)]
        self.tid = torch.tensor(tid, dtype=torch.int32, device=device)
        self.jid = torch.tensor(jid, dtype=torch.int32, device=device)
        self.n = len(tid)



def momentum_to_bf16(tables: BatchTables, grad_ptrs: torch.Tensor, buf_ptrs: torch.Tensor,
                     out: torch.Tensor, mu: float, nesterov: bool, eps: float) -> None:
    """Momentum step and the Nesterov update into `out`, each matrix divided by its Frobenius norm
    (the norm accumulated in the same pass). `*_ptrs`: int64 device tensors of the batch's
    parameters' grad / momentum addresses."""
    rc = out[0].numel()
    # torch.lerp takes its weight in fp32: 1 - mu for the momentum, mu (so 1 - fp32(mu)) for Nesterov
    w_m = float(torch.tensor(1.0 - mu, dtype=torch.float32))
    w_n = float(1 - torch.tensor(mu, dtype=torch.float32))
    grid = (tables.n, triton.cdiv(rc, BLOCK))
    sumsq = torch.zeros(tables.n, device=out.device, dtype=torch.float32)
    _momentum_kernel[grid](grad_ptrs, buf_ptrs, tables.tid, tables.jid, out, sumsq, rc, w_m, w_n,
                           NESTEROV=nesterov, BLOCK=BLOCK)
    _normalise_kernel[grid](out, sumsq, rc, float(torch.tensor(eps, dtype=torch.bfloat16)), BLOCK=BLOCK)


def apply_update(tables: BatchTables, weight_ptrs: torch.Tensor, O: torch.Tensor, decay: float, alpha: float) -> None:
    rc = O[0].numel()
    grid = (tables.n, triton.cdiv(rc, BLOCK))
    _apply_kernel[grid](weight_ptrs, tables.tid, tables.jid, O, rc, decay, alpha, BLOCK=BLOCK)
