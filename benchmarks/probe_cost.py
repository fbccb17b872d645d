"""Seconds per probe of one pack, per task: what the measurements cost, apart from training.

A pack of K networks (depth 4, width 100 by default) probed on N samples: fc1 (one output,
exact AGOP in one backward pass), fc2 (100 outputs: 16 projected backward passes for NFA)
and clusters (10 classes: exact AGOP in 10 passes, neural collapse). Compare commits by
running it on each.

    python benchmarks/probe_cost.py [--k 8] [--width 100] [--depth 4] [--n 1000] [--repeat 3]

`--family cnn`: a packed CNN instead (the digits task, 8x8 images, BatchNorm; `--width` channels,
`--depth` conv layers, `--n` probe images), probed three ways: batched (`probe_packed`: on a
CPU the capture member after member, the metrics batched), batched with the capture under
vmap (as on a GPU), and member by member (`measure` on each member, the fallback).

    python benchmarks/probe_cost.py --family cnn [--k 8] [--width 16] [--depth 4] [--n 297]
"""

from __future__ import annotations

import argparse

import torch

from phasemap import parse_config
from phasemap.config import TaskSpec
from phasemap.models import StackedMLP, build_model
from phasemap.train.probing import Prober
from phasemap.measure import Stationarity, probe_stacked
from phasemap.data import Task, make_task
from timing import seconds_per_call


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--width", type=int, default=100)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--n", type=int, default=1000, help="probe samples")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--family", choices=("mlp", "cnn"), default="mlp")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's own)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.family == "cnn":
        return cnn_both_ways(args)
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


def cnn_both_ways(args) -> None:
    """Seconds per probe of a packed CNN, batched and member by member (the same values)."""
    cfg = parse_config({"task": {"name": "digits"}, "model": {"family": "cnn", "depth": args.depth,
                                                               "width": args.width, "norm": "batch"},
                        "optimizer": {"weight_decay": [1e-3] * args.k}, "train": {"seed": list(range(args.k))},
                        "probe": {"n_samples": args.n}})
    task = make_task(cfg.task, args.device)
    model, prepare = build_model(cfg.model, task.input_shape, task.output_dim, list(range(args.k)))
    model = model.to(args.device)
    x, y = task.probe_set(args.n, torch.Generator(device=args.device).manual_seed(0))
    probers = {name: Prober(model, task, prepare, cfg.probe, [1e-3] * args.k)
               for name in ("batched", "batched under vmap", "member by member")}
    probers["batched under vmap"].vectorize = True  # the GPU's capture (the default on a CPU: member after member)
    probers["member by member"].batched = False
    times = {name: [] for name in probers}
    for _ in range(args.repeat):  # interleaved, the fastest of each kept: other load only slows a call down
        for name, prober in probers.items():
            times[name].append(seconds_per_call(lambda: prober(x, y), 1, args.device))  # noqa: B023
    times = {name: min(t) for name, t in times.items()}
    assert probers["batched"].batched and probers["batched under vmap"].batched, "a batched probe fell back"
    print(f"cnn K={args.k} depth={args.depth} width={args.width} digits N={len(x)} on {args.device}, "
          f"threads {torch.get_num_threads()}: " + ", ".join(f"{n} {s:.3f} s per probe" for n, s in times.items())
          + f" ({times['member by member'] / times['batched']:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
