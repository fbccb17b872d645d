"""Eigenvalues of a probe's covariances: torch.linalg.eigvalsh against phasemap's lockstep solver.

A probe of a pack of K fc1 networks (width 100, depth 4) decomposes about 22 K matrices of
100 x 100. On CUDA, torch hands a batch of matrices larger than 32 to cuSOLVER one matrix at
a time; `phasemap.measure.batched_eigvalsh` advances the whole batch in lockstep. Prints
seconds per batch for both and their largest difference, per batch size, so that
`CUDA_LOCKSTEP_EIG_BATCH` (where probes switch to the lockstep solver) can be set from a
measurement on the GPU at hand.

    python benchmarks/eig_speed.py [--device cuda] [--n 100] [--batches 64 256 1024 4096 11264]
"""

from __future__ import annotations

import argparse
import time

import torch

from phasemap.measure import CUDA_LOCKSTEP_EIG_BATCH, batched_eigvalsh


def timed(fn, device: torch.device, repeat: int = 3) -> float:
    fn()  # warm-up (cuSOLVER handles, allocator)
    best = float("inf")
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n", type=int, default=100, help="matrix size")
    p.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024, 4096, 11264])
    args = p.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, {args.n} x {args.n} float32 covariances, "
          f"lockstep from {CUDA_LOCKSTEP_EIG_BATCH} matrices on CUDA")
    print(f"{'matrices':>9} {'eigvalsh s':>11} {'lockstep s':>11} {'max |diff| / max':>17}")
    g = torch.Generator(device=device).manual_seed(0)
    for m in args.batches:
        x = torch.randn(m, args.n, 3 * args.n, generator=g, device=device)
        C = x @ x.transpose(1, 2) / (3 * args.n)
        ref = torch.linalg.eigvalsh(C)
        got = batched_eigvalsh(C)
        diff = ((got - ref).abs().max() / ref.abs().max()).item()
        t_ref = timed(lambda: torch.linalg.eigvalsh(C), device)
        t_new = timed(lambda: batched_eigvalsh(C), device)
        print(f"{m:>9} {t_ref:>11.4f} {t_new:>11.4f} {diff:>17.1e}")


if __name__ == "__main__":
    main()
