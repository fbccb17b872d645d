"""Throughput: the same fc1 sweep run the naive way and the phasemap way, on one Ray.

(a) naive: one config per Ray Tune trial, a plain nn.Sequential + torch.optim loop, probed
    with phasemap.measure at the same schedule on the same probe set size;
(b) phasemap: `run_sweep` on a grid sweep: configs packed into stacked models.

Both measure every config with the same probes and use the same CPUs / GPU. Prints configs
per hour for each, their ratio, and the probes' share of the packed run.

Both figures fall with the run length: the naive way's fresh worker per trial is a smaller
share of a longer run, and so is a fixed number of probes. The default, 3,500 steps, is a
length at which on a 2-core CPU both packing's gain (>= 4x) and the probes' cost (<= 10%)
are in one run; --steps 2000 or 5000 show the trend either way.

    python benchmarks/throughput.py [--configs 64] [--steps 3500] [--cpus 2] [--gpus 0]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from phasemap import measure, parse_config
from phasemap.sweep import expand, parse_sweep, run_sweep, start_ray
from phasemap.data import Task
from phasemap.train import PROBE_SEED_OFFSET, resolve_device


def grid(n_configs: int) -> dict:
    """Weight decay x learning rate x seeds, n_configs in all (a multiple of 8)."""
    wds = [0.0, 1e-5, 1e-4, 1e-3]
    lrs = [0.005, 0.01]
    seeds = list(range(max(1, n_configs // (len(wds) * len(lrs)))))
    return {"optimizer.weight_decay": wds, "optimizer.lr": lrs, "train.seed": seeds}


def base(steps: int, device: str) -> dict:
    return {"task": {"name": "fc1"}, "model": {"depth": 4, "width": 100, "activation": "relu"},
            "optimizer": {"name": "sgd", "momentum": 0.9}, "train": {"steps": steps, "batch_size": 100,
                                                                    "device": device}}


def naive_trial(config: dict) -> None:
    """One config: an ordinary PyTorch loop, probes by phasemap.measure on the same schedule."""
    from ray import tune

    torch.set_num_threads(1)
    cfg = parse_config(config["run"])
    device = resolve_device(cfg.train.device)
    m = cfg.members[0]
    task = Task(cfg.task, device)
    torch.manual_seed(m.seed)
    layers, d = [], cfg.task.input_dim
    for _ in range(cfg.model.depth):
        layers += [torch.nn.Linear(d, cfg.model.width), torch.nn.ReLU()]
        d = cfg.model.width
    net = torch.nn.Sequential(*layers, torch.nn.Linear(d, 1)).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=m.lr, momentum=m.momentum, weight_decay=m.weight_decay)
    gen = torch.Generator(device=device).manual_seed(cfg.train.data_seed)
    pgen = torch.Generator(device=device).manual_seed(cfg.train.data_seed + PROBE_SEED_OFFSET)
    xp, yp = task.sample(cfg.probe.n_samples, pgen)
    probe_at = set(cfg.probe_steps())
    probe_s, t0 = 0.0, time.perf_counter()
    for step in range(cfg.train.steps + 1):
        if step in probe_at:
            t1 = time.perf_counter()
            measure(net, xp, yp, task.loss)
            probe_s += time.perf_counter() - t1
        if step == cfg.train.steps:
            break
        x, y = task.sample(cfg.train.batch_size, gen)
        loss = task.loss(net(x), y).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    tune.report({"seconds": time.perf_counter() - t0, "probe_seconds": probe_s})


def run_naive(runs: list[dict], cpus: float, gpus: float, storage: str, reuse: bool) -> float:
    from ray import tune

    t0 = time.time()
    trainable = tune.with_resources(naive_trial, {"cpu": cpus, "gpu": gpus})
    # Tune's defaults, as a user writing one trial per config gets them (reuse_actors=False:
    # every trial starts a fresh worker); --naive-reuse-actors gives the baseline that help
    tuner = tune.Tuner(trainable, param_space={"run": tune.grid_search(runs)},
                       tune_config=tune.TuneConfig(reuse_actors=reuse),
                       run_config=tune.RunConfig(storage_path=storage, verbose=0))
    results = tuner.fit()
    errors = [r.error for r in results if r.error]
    if errors:
        raise RuntimeError(f"naive trials failed: {errors[:2]}")
    return time.time() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", type=int, default=64)
    p.add_argument("--steps", type=int, default=3500)
    p.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray")
    p.add_argument("--gpus", type=float, default=1.0 if torch.cuda.is_available() else 0.0,
                   help="GPU fraction per trial (default: 1 if CUDA, else 0)")
    p.add_argument("--pack-size", default="auto")
    p.add_argument("--naive-reuse-actors", action="store_true", help="let the naive baseline reuse its workers")
    args = p.parse_args()
    device = "cuda" if args.gpus > 0 else "cpu"
    with tempfile.TemporaryDirectory() as root:
        sweep = parse_sweep({"name": "bench", "storage": {"root": root}, "base": base(args.steps, device),
                             "axes": grid(args.configs), "resources": {"cpus": 1, "gpus": args.gpus},
                             "pack_size": args.pack_size if args.pack_size == "auto" else int(args.pack_size)})
        packs = expand(sweep)
        n = sum(len(pk.members) for pk in packs)
        runs = [pk.member_config(m).to_dict() for pk in packs for m in pk.members]
        print(f"{n} fc1 configs (depth 4, width 100, batch 100, {args.steps} steps, probes at "
              f"{len(packs[0].probe_steps())} steps on {packs[0].probe.n_samples} samples), device {device}, "
              f"{args.cpus} CPUs, torch {torch.__version__}")
        start_ray(num_cpus=args.cpus)
        naive_s = run_naive(runs, 1, args.gpus, os.path.join(root, "_naive"), args.naive_reuse_actors)
        packed = run_sweep(sweep, progress=False)
        if packed.failed:
            raise RuntimeError(f"packed trials failed: {packed.failed[:2]}")
        train_s = sum(t["train_seconds"] for t in packed.trials)
        probe_s = sum(t["probe_seconds"] for t in packed.trials)
    naive_rate, packed_rate = n / naive_s * 3600, n / packed.wall_seconds * 3600
    sizes = sorted({len(pk.members) for pk in packs})
    reuse = "reused workers" if args.naive_reuse_actors else "Tune defaults"
    print(f"(a) naive, one config per trial ({reuse}): {naive_s:7.1f} s   {naive_rate:9.0f} configs/hour")
    print(f"(b) phasemap, {len(packs)} packs of {sizes}: {packed.wall_seconds:7.1f} s   {packed_rate:9.0f} configs/hour")
    print(f"ratio (b)/(a): {packed_rate / naive_rate:.1f}x")
    print(f"probe share of the packed runs: {probe_s / train_s:.1%} ({probe_s:.1f} s of {train_s:.1f} s)")
    # the share falls with run length: one probe costs a fixed number of training steps
    n_probes = len(packs[0].probe_steps())
    cost = (probe_s / n_probes) / ((train_s - probe_s) / args.steps)
    print(f"one probe costs {cost:.0f} training steps of a pack: {n_probes} probes stay within 10% of "
          f"runs of {9 * n_probes * cost:,.0f} steps or more")


if __name__ == "__main__":
    main()
