"""Timing shared by the benchmarks (run as scripts: `from timing import seconds_per_call`)."""

from __future__ import annotations

import time

import torch


def seconds_per_call(fn, repeat: int, device) -> float:
    """Mean wall seconds of `fn()` over `repeat` calls after one warm-up call, the device's
    queue drained before and after (CUDA launches are asynchronous)."""
    cuda = torch.device(device).type == "cuda"
    fn()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeat
