"""A phase diagram for a fraction of the compute: the same fc1 space as a full grid and as a
boundary search (search.mode boundary); prints networks trained, member-steps and the share of
cells whose label (at the last hidden layer, tau) agrees with the full grid's.

Two spaces: weight decay (12 values, 0 and 1e-4..0.3) x learning rate (8, 3e-3..0.3, SGD), 96
cells; and the same x depth (2, 4, 6), 288 cells. Both run on a local Ray. The full grid trains
first; the search then runs in a root of its own (--replay: the search is replayed on the full
grid's records instead, revealing only the cells it asks for: the same numbers, since a network's
training is a function of its config, at no extra compute).

    python benchmarks/adaptive.py [--space 2 3] [--steps 2000] [--width 50] [--seeds 1]
                                  [--budget-share 0.33 0.5] [--replay] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from phasemap.analysis.query import load
from phasemap.sweep import boundary, parse_sweep, run_sweep


def space(n_axes: int, args, mode: str, root: str) -> dict:
    axes = {"optimizer.weight_decay": [0.0] + [float(f"{v:.3g}") for v in np.geomspace(1e-4, 0.3, 11)],
            "optimizer.lr": [float(f"{v:.3g}") for v in np.geomspace(3e-3, 0.3, 8)]}
    if n_axes == 3:
        axes["model.depth"] = [2, 4, 6]
    cells = int(np.prod([len(v) for v in axes.values()]))
    search = {"mode": mode}
    if mode == "boundary":
        search.update(budget=int(cells * args.seeds * args.share), per_round=8, tau=args.tau)
    return {"name": f"adaptive{n_axes}-{mode}", "storage": {"root": root},
            "base": {"task": {"name": "fc1", "input_dim": 100},
                     "model": {"depth": 4, "width": args.width, "activation": "relu"},
                     "optimizer": {"name": "sgd"},
                     "train": {"steps": args.steps, "batch_size": 100, "check_every": 100,
                               "checkpoint_every": args.steps, "seed": list(range(args.seeds))},
                     "probe": {"n_samples": 500, "count": 2, "null_samples": 0}},
            "axes": axes, "search": search, "resources": {"cpus": 1}}


def member_steps(table) -> int:
    last = table.groupby("config_hash")["step"].max()
    return int(last.sum())


def compare(full, cells) -> float:
    """Share of cells whose label equals the full grid's majority label."""
    keys = [c for c in cells.columns if c not in ("phase", "measured", "confidence")]
    both = full.merge(cells, on=keys, suffixes=("_full", ""))
    assert len(both) == len(full) == len(cells), (len(both), len(full), len(cells))
    return float((both["phase_full"] == both["phase"]).mean())


def replay(cfg, table) -> tuple[set, int]:
    """The search on stored records: each round reveals the networks of the cells it asks for."""
    cells = boundary.grid_cells(cfg)
    done: dict[str, str] = {}
    rounds = 0
    while True:
        revealed = table[table["config_hash"].isin(list(done))]
        chosen, _ = boundary.plan(cfg, done=done, table=revealed, cells=cells).next_cells()
        if not chosen:
            return done, rounds
        rounds += 1
        done |= {h: "replay" for i in chosen for h in cells[i].hashes}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", type=int, nargs="+", default=[2, 3], choices=[2, 3], help="axes: 2 (wd x lr) or 3 (+ depth)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--width", type=int, default=50)
    p.add_argument("--seeds", type=int, default=1, help="networks per cell")
    p.add_argument("--tau", type=float, default=0.9)
    p.add_argument("--budget-share", type=float, nargs="+", default=[0.33],
                   help="the search's budget: this share of the grid's networks (several: one search each)")
    p.add_argument("--replay", action="store_true", help="replay the search on the full grid's records (no training)")
    p.add_argument("--out", help="storage root (default: a temporary folder)")
    args = p.parse_args()
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    root = args.out or tempfile.mkdtemp(prefix="adaptive-")
    rows = []
    for n_axes in args.space:
        full_cfg = parse_sweep(space(n_axes, args, "grid", root))
        t0 = time.time()
        run_sweep(full_cfg, progress=True)
        full_seconds = time.time() - t0
        full_table = load(root, filters={"sweep_id": full_cfg.sweep_id})
        full_cells = boundary.measured_cells(full_table, args.tau, "last", "raw")
        phases = full_cells["phase"].value_counts()
        print(f"\n{n_axes} axes: {len(full_cells)} cells; full grid phases: "
              + ", ".join(f"{k} {v}" for k, v in phases.items()))
        rows.append((f"{n_axes} axes, full grid", full_table["config_hash"].nunique(), member_steps(full_table), 1.0,
                     "-", full_seconds))
        for share in args.budget_share:
            args.share = share
            data = space(n_axes, args, "boundary", root)
            data["name"] += f"-{share:g}"
            cfg = parse_sweep(data)
            t0 = time.time()
            if args.replay:
                done, rounds = replay(cfg, full_table.assign(sweep_id=cfg.sweep_id))
                table = full_table[full_table["config_hash"].isin(list(done))].assign(sweep_id=cfg.sweep_id)
            else:
                result = run_sweep(cfg, progress=True)
                rounds = result.boundary["round"]
                table = boundary.read_records(root, cfg.sweep_id)
            search_seconds = time.time() - t0
            plan = boundary.plan(cfg, done={h: "r" for h in table["config_hash"].unique()}, table=table)
            cells = boundary.predict(plan, table, args.tau, "last", "raw")
            rows.append((f"{n_axes} axes, boundary {share:.0%}{' (replay)' if args.replay else ''}",
                         table["config_hash"].nunique(), member_steps(table), compare(full_cells, cells), rounds,
                         search_seconds))
    print(f"\nfc1 depth 4 (or the depth axis), width {args.width}, {args.steps} steps, {args.seeds} seed(s) per cell, "
          f"tau {args.tau}, last hidden layer; a search's budget: its share of the grid's networks")
    print(f"{'space':32s} {'networks':>9s} {'member-steps':>13s} {'agreement':>10s} {'rounds':>7s} {'seconds':>8s}")
    for name, nets, steps, agree, rounds, seconds in rows:
        print(f"{name:32s} {nets:9d} {steps:13d} {agree:10.1%} {str(rounds):>7s} {seconds:8.0f}")


if __name__ == "__main__":
    main()
