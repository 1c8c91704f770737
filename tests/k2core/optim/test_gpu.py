"""MuonClip's CUDA path (Triton momentum / update kernels, folded Newton-Schulz) against
torch.optim.Muon on the GPU (marked gpu; CI has no GPU)."""
from __future__ import annotations

import pytest
import torch

from k2core.optim.muonclip import MuonClip

pytestmark = pytest.mark.gpu


def test_cuda_muon_step_matches_torch_muon():
    g = torch.Generator(device="cuda").manual_seed(0)
    shapes = [(16, 256, 512), (16, 512, 256), (384, 128), (128, 384), (256, 256)]
    ours = [torch.nn.Parameter(torch.randn(*s, device="cuda", generator=g) * 0.02) for s in shapes]
    refs = [torch.nn.Parameter(m.detach().clone()) for p in ours for m in (p if p.ndim == 3 else p[None])]
    opt = MuonClip([{"params": ours, "kind": "muon"}], lr=0.01, qk_clip_tau=None)
    ref = torch.optim.Muon(refs, lr=0.01, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    start = [p.detach().clone() for p in refs]
    for _ in range(10):
        grads = [torch.randn(p.shape, device="cuda", generator=g) for p in ours]
        for p, gr in zip(ours, grads):
            p.grad = gr
        for r, gr in zip(refs, [m for gr in grads for m in (gr if gr.ndim == 3 else gr[None])]):
            r.grad = gr.clone()
        opt.step()
        ref.step()
    mine = torch.cat([p.detach().reshape(-1) for p in ours])
    theirs = torch.cat([p.detach().reshape(-1) for p in refs])
    moved = theirs - torch.cat([p.reshape(-1) for p in start])
    # bf16 Newton-Schulz: the two differ by rounding only — far below the distance travelled
    assert (mine - theirs).norm() / moved.norm() < 1e-2
    assert (mine - theirs).abs().max() < 0.05 * moved.abs().max()


@pytest.mark.parametrize("shape,tall", [((5, 512, 1024), False), ((3, 1024, 512), True),
                                        ((2, 192, 128), True), ((4, 64, 64), False)])
def test_sym_gram_matches_cublas_and_is_symmetric(shape, tall):
    from k2core.optim.kernels import sym_gram, sym_gram_ok

    g = torch.Generator(device="cuda").manual_seed(1)
    G = torch.randn(*shape, device="cuda", generator=g).bfloat16()
    X = G.mT if tall else G
    X = X / X.norm(dim=(-2, -1), keepdim=True)
    assert sym_gram_ok(X)
    A = sym_gram(X)
    ref = torch.bmm(X, X.mT)
    assert torch.equal(A, A.mT)                       # upper tiles mirrored exactly
    assert (A.float() - ref.float()).abs().max() <= 2e-2 * ref.float().abs().max()
    a, b, c = 3.4445, -4.7750, 2.0315
    B = sym_gram(A, A, alpha=c, beta=b, diag=a)
    eye = torch.eye(A.shape[-1], device="cuda")
    B_ref = b * A.float() + c * (A.float() @ A.float()) + a * eye    # fp32 from the same A
    assert torch.equal(B, B.mT)
    assert (B.float() - B_ref).abs().max() <= 1e-2 * B_ref.abs().max()


def test_sym_gram_declines_shapes_it_cannot_tile():
    from k2core.optim.kernels import sym_gram_ok

    assert not sym_gram_ok(torch.zeros(2, 100, 128, device="cuda", dtype=torch.bfloat16))
    assert not sym_gram_ok(torch.zeros(2, 128, 128, device="cuda"))            # fp32
    assert not sym_gram_ok(torch.zeros(2, 128, 128, dtype=torch.bfloat16))      # CPU
