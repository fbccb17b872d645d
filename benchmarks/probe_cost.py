"""Seconds per probe of one pack, per task: what the measurements cost, apart from training.

A pack of K networks (depth 4, width 100 by default) probed on N samples: fc1 (one output,
exact AGOP in one backward pass), fc2 (100 outputs: 16 projected backward passes for NFA)
and clusters (10 classes: exact AGOP in 10 passes, neural collapse). Compare commits by
running it on each.

    python benchmarks/probe_cost.py [--k 8] [--width 100] [--depth 4] [--n 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse

import torch

from phasemap.config import TaskSpec
from phasemap.models import StackedMLP
from phasemap.measure import Stationarity, probe_stacked
from phasemap.data import Task
from timing import seconds_per_call


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--width", type=int, default=100)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--n", type=int, default=1000, help="probe samples")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    d = args.width
    for name, spec in (("fc1", TaskSpec(name="fc1", input_dim=d)),
                       ("fc2", TaskSpec(name="fc2", input_dim=d, output_dim=100)),
                       ("clusters", TaskSpec(name="clusters", input_dim=d))):
        task = Task(spec, args.device)
        dims = [d] + [args.width] * args.depth + [task.output_dim]
        model = StackedMLP(dims, "relu", seeds=list(range(args.k))).to(args.device)
        x, y = task.sample(args.n, torch.Generator(device=args.device).manual_seed(0))
        tracker = Stationarity()
        probe = lambda: probe_stacked(model, task, x, y, "centered", 1e-4,  # noqa: E731
                                      weight_decay=[1e-3] * args.k, stationarity=tracker)
        seconds = seconds_per_call(probe, args.repeat, args.device)  # warm-up: the stationarity's first matrices
        print(f"{name:9s} K={args.k} dims={dims} N={args.n}: {seconds:.3f} s per probe, "
              f"{seconds / args.k * 1e3:.1f} ms per member", flush=True)


if __name__ == "__main__":
    main()
