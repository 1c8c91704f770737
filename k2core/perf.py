"""Timing helpers shared by training telemetry (MFU) and the benchmarks."""
from __future__ import annotations

import statistics
import time

import torch


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def matmul_peak(dev: torch.device) -> float:
    """Measured matmul FLOP/s: bf16 8192³ on CUDA, fp32 1024³ on CPU (median of 10) — the MFU
    denominator, measured on the machine at hand rather than taken from a datasheet."""
    n, dt = (8192, torch.bfloat16) if dev.type == "cuda" else (1024, torch.float32)
    a, b = torch.randn(n, n, device=dev, dtype=dt), torch.randn(n, n, device=dev, dtype=dt)
    for _ in range(3):
        a @ b
    sync(dev)
    times = []
    for _ in range(10):
        t = time.perf_counter()
        a @ b
        sync(dev)
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times)
