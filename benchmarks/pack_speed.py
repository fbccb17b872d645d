"""Throughput of packed training: fc1 packs of K = 1, 8, 32 networks.

Prints, per K, pack steps per second, member-steps per second (K networks advanced one
step each count K) and the probes' share of the run time at the default probe schedule.

    python benchmarks/pack_speed.py [--steps 1000] [--ks 1 8 32] [--device auto] [--threads N]
                                    [--null-samples 8]   (0: probes without the alignment nulls)
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from phasemap import parse_config, train_pack


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--ks", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--device", default="auto")
    p.add_argument("--probe-samples", type=int, default=1000)
    p.add_argument("--null-samples", type=int, default=8, help="Haar rotations per alignment null (0: none)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's own)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}")
    print(f"fc1, depth 4, width 100, batch 100, {args.steps} steps, default probe schedule "
          f"({args.probe_samples} probe samples, {args.null_samples} rotations per null)")
    print(f"{'K':>4} {'seconds':>8} {'pack steps/s':>13} {'member-steps/s':>15} {'probe share':>12}")
    for K in args.ks:
        cfg = parse_config({
            "name": f"bench-k{K}",
            "task": {"name": "fc1"},
            "model": {"depth": 4, "width": 100},
            "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9,
                          "weight_decay": [1e-5 * (i + 1) for i in range(K)]},
            "train": {"steps": args.steps, "batch_size": 100, "device": args.device},
            "probe": {"n_samples": args.probe_samples, "null_samples": args.null_samples},
        })
        with tempfile.TemporaryDirectory() as root:
            r = train_pack(cfg, root=root)
        print(f"{K:>4} {r.seconds:>8.2f} {args.steps / r.seconds:>13.1f} "
              f"{K * args.steps / r.seconds:>15.1f} {r.probe_seconds / r.seconds:>11.1%}")


if __name__ == "__main__":
    main()
