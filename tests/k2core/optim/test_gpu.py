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
