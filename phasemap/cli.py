"""phasemap's command line: `phasemap validate CONFIG`, `phasemap run CONFIG`.

Exit codes: 0 done, 2 bad input (config problems are all listed, nothing starts).
"""

from __future__ import annotations

import argparse
import logging
import sys

import pandas as pd

from . import __version__
from .config import ConfigError, RunConfig, load_config, replace
from .phases import critical_depth, label_phases

EPILOG = """examples:
  phasemap validate configs/fc1.yaml
  phasemap run configs/default.yaml --out results
  phasemap run configs/fc1.yaml --steps 2000 --set optimizer.weight_decay=[0,1e-3]

A run config describes one pack: members are the product of the lists given for
optimizer.lr, optimizer.momentum, optimizer.weight_decay and train.seed; they train as one
stacked computation. Records go to <out>/sweep=<sweep_id>/run=<run_id>/part-*.parquet.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="phasemap",
        description="Measure CRH alignments and phases of neural networks during training.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"phasemap {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="check a config; list every problem with its field path")
    v.add_argument("config", help="YAML run config")
    v.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field, e.g. train.steps=500")

    r = sub.add_parser("run", help="train a pack with probes and write Parquet records")
    r.add_argument("config", help="YAML run config")
    r.add_argument("--out", help="storage root (folder or s3:// URI); default: the config's storage.root")
    r.add_argument("--steps", type=int, help="override train.steps (the probe schedule follows)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field, e.g. model.depth=6")
    r.add_argument("--tau", type=float, default=0.9, help="threshold for the phase summary printed at the end (default 0.9)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")

    s = sub.add_parser(
        "sweep",
        help="run a sweep config on Ray Tune (local Ray by default, or a cluster)",
        description="Expand a sweep config into packs and run one Ray Tune trial per pack. With no "
        "--address and no RAY_ADDRESS, Ray starts on this machine.",
    )
    s.add_argument("config", help="YAML sweep config (base + axes)")
    s.add_argument("--out", help="storage root (folder or s3:// URI); default: the config's storage.root")
    s.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    s.add_argument("--resume", action="store_true", help="run only the packs not complete in storage")
    s.add_argument("--overwrite", action="store_true", help="discard the sweep's earlier records and start again")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field, e.g. base.train.steps=500")
    s.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")

    st = sub.add_parser("status", help="what of a sweep is complete, running, failed or missing (from storage)")
    st.add_argument("config", help="YAML sweep config")
    st.add_argument("--out", help="storage root; default: the config's storage.root")
    return p


def _load(args):
    from .sweep import is_sweep_file, load_sweep

    if args.command in ("sweep", "status") or is_sweep_file(args.config):
        overrides = list(getattr(args, "set", []))
        if getattr(args, "out", None):
            overrides.append(f"storage.root={args.out}")
        return load_sweep(args.config, overrides)
    overrides = list(args.set)
    if getattr(args, "steps", None) is not None:
        overrides.append(f"train.steps={args.steps}")
    cfg = load_config(args.config, overrides)
    if getattr(args, "out", None):
        cfg = replace(cfg, {"storage.root": args.out})
    return cfg


def summary(table: pd.DataFrame, tau: float) -> str:
    """The last probe of every member: alignments and phase per layer, critical depth."""
    last = table[table["step"] == table.groupby("member")["step"].transform("max")].copy()
    last["phase"] = label_phases(last, tau)
    cols = ["member", "lr", "weight_decay", "seed", "layer", "status", "rga_a", "rwa_a", "gwa_a",
            "rga_b", "rwa_b", "gwa_b", "phase"]
    lines = [last[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}")]
    ok = last[last["status"] == "ok"]
    if len(ok):
        cd = critical_depth(ok, "rga_b", tau, by=["member"])
        lines.append(f"\ncritical depth (rga_b >= {tau}), hidden layers 1..depth:")
        lines.append(cd.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        for name in ("ray", "ray.tune", "ray.train"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        cfg = _load(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.command in ("sweep", "status") or (args.command == "validate" and not isinstance(cfg, RunConfig)):
        return _sweep_command(args, cfg)
    if args.command == "validate":
        print(f"{args.config}: ok ({len(cfg.members)} member(s), {cfg.train.steps} steps, "
              f"probes at {len(cfg.probe_steps())} steps)")
        return 0

    from tqdm import tqdm

    from .train import train_pack

    bar = tqdm(total=cfg.train.steps, desc=cfg.name, unit="step", disable=args.no_progress,
               mininterval=0.1 if sys.stderr.isatty() else 10.0)
    try:
        result = train_pack(cfg, progress=lambda s: bar.update(1) if s > 0 else None)
    except RuntimeError as e:  # e.g. device='cuda' without CUDA
        bar.close()
        print(f"error: {e}", file=sys.stderr)
        return 2
    bar.close()
    n_div = result.status.count("diverged")
    print(f"run {result.run_id}: {len(result.status)} member(s), {n_div} diverged, "
          f"{len(result.records)} records in {result.seconds:.1f} s (probes {result.probe_seconds:.1f} s)")
    print(f"records: {cfg.storage.root}/sweep={cfg.storage.sweep_id}/run={result.run_id}/")
    if len(result.records):
        print(summary(result.records, args.tau))
    return 0


def _sweep_command(args, cfg) -> int:
    from .sweep import SweepError, expand, overhead_summary, run_sweep, sweep_status

    if args.command == "validate":
        if cfg.search.mode == "grid":
            packs = expand(cfg)
            n = sum(len(p.members) for p in packs)
            print(f"{args.config}: ok (grid sweep {cfg.sweep_id!r}: {n} configs in {len(packs)} packs)")
        else:
            print(f"{args.config}: ok (optuna sweep {cfg.sweep_id!r}: {cfg.search.trials} trials)")
        return 0
    if args.command == "status":
        rows = pd.DataFrame(sweep_status(cfg))
        counts = rows["state"].value_counts()
        print(f"sweep {cfg.sweep_id!r} under {cfg.root}: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in
              ("complete", "running", "interrupted", "failed", "missing")) + f" of {len(rows)} packs")
        print(rows.to_string(index=False))
        return 0
    try:
        result = run_sweep(cfg, address=args.address, resume=args.resume, overwrite=args.overwrite,
                           progress=not args.no_progress, num_cpus=args.num_cpus)
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"sweep {result.sweep_id}: {result.ran} trial(s) run, {result.skipped} already complete, "
          f"{len(result.failed)} failed, {result.wall_seconds:.1f} s")
    print(f"records: {cfg.root}/sweep={cfg.sweep_id}/")
    if result.trials:
        import ray

        slots = max(1.0, min(ray.cluster_resources().get("CPU", 1) / cfg.resources.cpus, result.ran))
        print(overhead_summary(result, slots))
    for err in result.failed:
        print(f"failed trial: {err.splitlines()[0] if err else err}", file=sys.stderr)
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
