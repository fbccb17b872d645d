"""When could fc1 runs have stopped? `train.stop` replayed on the probes of full runs.

Trains one pack of 8 fc1 networks (depth 4, width 100, sgd lr 0.01 momentum 0.9, batch 100;
weight decay 1e-3 and 1e-2 x seeds 0-3) for --steps with `train.stop` off, probing every
--probe-every steps (at least `min_gap` x steps apart, so that every probe counts), and keeps
the train loss of every step. Then, for each `stationary` threshold and `patience`, replays the
stopping rule on those probes with the rule's own code (`phasemap.train.stopping`: `Settling`,
`worst_stationarity`, `next_probe`, `pack_done`) to find where the pack would have ended, and
prints, per setting:

- the pack of 8 as trained: its stop step, the share of member-steps saved, and per weight
  decay the largest |alignment at the stop - alignment at the last step| over its members and
  the six alignments (rga, rwa, gwa; a and b sides) of the last hidden layer;
- the same for each weight decay as a pack of its own (4 seeds), and for every member alone.

The goal (issue 20): >= 30% of the steps saved with every alignment within 0.02 (marked *).
Last, one setting (--check, by default the closest to the goal among those that stop early) is
trained for real with `train.stop` on: its stop step, statuses and records must be the replay's.
Members of a pack train independently on the same batches, so a sub-pack's (or a member's)
replay is what it would do trained alone.

    python benchmarks/stopping.py [--steps 20000] [--probe-every N] [--thresholds 0.02 0.05 0.1 0.15 0.2]
                                  [--patience 2 3] [--check STATIONARY PATIENCE | --no-check]
                                  [--probe-samples 3000] [--root DIR] [--threads N]

--root keeps the runs (a second call with the same arguments reuses them instead of training).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import tempfile
import time

import numpy as np
import torch

from phasemap import parse_config, train_pack
from phasemap.train import loop
from phasemap.train.stopping import Settling, next_probe, pack_done, worst_stationarity

WEIGHT_DECAYS = (1e-3, 1e-2)
SEEDS = (0, 1, 2, 3)
ALIGNMENTS = ("rga_a", "rwa_a", "gwa_a", "rga_b", "rwa_b", "gwa_b")
GOAL_SAVED, GOAL_ALIGNMENT = 0.30, 0.02


def config(args, stop: dict | None = None, weight_decays=WEIGHT_DECAYS):
    probe_steps = sorted(set(range(0, args.steps + 1, args.probe_every)) | {args.steps})
    train = {"steps": args.steps, "batch_size": 100, "seed": list(SEEDS), "device": args.device,
             "checkpoint_every": args.steps + 1}
    if stop is not None:
        train["stop"] = dict(stop, loss_tolerance=args.loss_tolerance, min_gap=args.min_gap)
    return parse_config({
        "name": "bench-stopping",
        "task": {"name": "fc1", "input_dim": 100, "teacher_width": 100},
        "model": {"depth": 4, "width": 100, "activation": "relu"},
        "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": list(weight_decays)},
        "train": train,
        "probe": {"n_samples": args.probe_samples, "steps": probe_steps, "null_samples": 0},
        "storage": {"sweep_id": "bench-stopping"},
    })


@contextlib.contextmanager
def recording_train_loss(out: list):
    """Collects, per step, the (K,) train loss the training loop computes (`progress` is called
    once a step, after that step's probe: the first `task.loss` call of a step is the training
    batch's, a probe's own calls come after it)."""
    original = loop.make_task
    calls = []

    def make_task(spec, device="cpu"):
        task = original(spec, device)
        loss = task.loss

        def recording(o, y):
            value = loss(o, y)
            calls.append(value.detach())
            return value

        task.loss = recording
        return task

    def progress(step):
        out.append(calls[0].flatten(1).mean(1).to("cpu", copy=True))  # as the loop reduces it
        calls.clear()

    loop.make_task = make_task
    try:
        yield progress
    finally:
        loop.make_task = original


def full_run(args, root):
    """The pack trained to the end without train.stop; its records and per-step train losses (K, steps + 1)."""
    cfg = config(args)
    losses: list[torch.Tensor] = []
    t0 = time.perf_counter()
    with recording_train_loss(losses) as progress:
        result = train_pack(cfg, root=root, progress=progress)
    path = os.path.join(root, f"stopping-losses-{result.run_id}.pt")
    if result.reused:
        per_step = torch.load(path)
    else:
        per_step = torch.stack(losses, 1)
        torch.save(per_step, path)
    assert per_step.shape[1] == args.steps + 1, per_step.shape
    return cfg, result, per_step, time.perf_counter() - t0


class Probes:
    """The full run's probes as the rule sees them: per step, per hidden layer {stat column:
    values per member}, the last hidden layer's alignments, and which members are gone."""

    def __init__(self, records, K: int):
        rows = records[records["head"].isna()]
        n_layers = int(rows["n_layers"].iloc[0])
        hidden = rows[(rows["layer"] >= 1) & (rows["layer"] < n_layers)]
        self.steps = sorted(int(s) for s in hidden["step"].unique())
        self.K = K
        self.stats: dict[int, list[dict[str, np.ndarray]]] = {}
        self.alignment: dict[int, np.ndarray] = {}  # (K, 6), NaN for a member without a row
        self.gone: dict[int, list[bool]] = {}
        for step, at in hidden.groupby("step"):
            layers = []
            for _, layer in at.groupby("layer"):
                cols = {}
                for c in ("stat_h_b", "stat_g_b"):
                    v = np.full(K, np.nan)
                    v[layer["member"].to_numpy()] = layer[c].to_numpy(float)
                    cols[c] = v
                layers.append(cols)
            last = at[at["layer"] == n_layers - 1]
            a = np.full((K, len(ALIGNMENTS)), np.nan)
            a[last["member"].to_numpy()] = last[list(ALIGNMENTS)].to_numpy(float)
            self.stats[int(step)], self.alignment[int(step)] = layers, a
            present = set(last["member"][last["status"] != "diverged"].tolist())
            self.gone[int(step)] = [k not in present for k in range(K)]


def replay(probes: Probes, per_step: torch.Tensor, members: list[int], stationary: float, patience: int,
           args, schedule: list[int]):
    """Where a pack of `members` would end under train.stop: (stop step, settled per member,
    the steps probed), walking the probes as the loop does (`next_probe`)."""
    steps = args.steps
    settling = Settling(len(members), stationary, patience, args.loss_tolerance,
                        min_gap=math.ceil(args.min_gap * steps))
    step, previous, probed = next_probe(-1, schedule, None, steps), -1, []
    while True:
        if step not in probes.stats:
            raise SystemExit(f"the replay needs a probe at step {step}, which the full run does not have")
        probed.append(step)
        # the mean train loss over (previous probe, step], summed in the loop's order and dtype
        loss_sum = torch.zeros(len(members), dtype=per_step.dtype)
        for s in range(previous + 1, step + 1):
            loss_sum += per_step[members, s]
        mean = (loss_sum / (step - previous)).tolist()
        values = [{c: v[members] for c, v in layer.items()} for layer in probes.stats[step]]
        settled = settling.update(step, worst_stationarity(values, range(len(values)), len(members)), mean)
        gone = [probes.gone[step][k] for k in members]
        if step == steps or pack_done(settled, ["diverged" if g else "ok" for g in gone]):
            return step, settled, probed
        previous, step = step, next_probe(step, schedule, settling.interval, steps)


def moved(probes: Probes, stop: dict[int, int], members, last: int) -> float:
    """Largest |alignment at the member's stop - at the last step| over `members` and the six
    alignments (a NaN on either side counts as infinite)."""
    worst = 0.0
    for k in members:
        d = np.abs(probes.alignment[stop[k]][k] - probes.alignment[last][k])
        worst = max(worst, math.inf if np.isnan(d).any() else float(d.max()))
    return worst


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--probe-every", type=int, default=0, help="steps between probes (default: min_gap x steps)")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.15, 0.2])
    p.add_argument("--patience", type=int, nargs="+", default=[2, 3])
    p.add_argument("--loss-tolerance", type=float, default=0.01, help="train.stop.loss_tolerance")
    p.add_argument("--min-gap", type=float, default=0.02, help="train.stop.min_gap (share of the steps)")
    p.add_argument("--check", type=float, nargs=2, metavar=("STATIONARY", "PATIENCE"),
                   help="the setting trained for real with train.stop on (default: the closest to the goal)")
    p.add_argument("--no-check", action="store_true", help="skip the real stopped run")
    p.add_argument("--probe-samples", type=int, default=3000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--root", default=None, help="where runs are kept (default: a temporary folder)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's own)")
    args = p.parse_args()
    min_gap_steps = math.ceil(args.min_gap * args.steps)
    args.probe_every = args.probe_every or max(min_gap_steps, 1)
    if args.probe_every < min_gap_steps:
        p.error(f"--probe-every {args.probe_every} is closer than min_gap ({min_gap_steps} steps): no probe would count")
    if args.threads:
        torch.set_num_threads(args.threads)
    with contextlib.ExitStack() as stack:
        root = args.root or stack.enter_context(tempfile.TemporaryDirectory())
        run(args, root)


def run(args, root) -> None:
    steps = args.steps
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}")
    print(f"fc1 depth 4 width 100, sgd lr 0.01 momentum 0.9, batch 100, {steps} steps, weight decay "
          f"{list(WEIGHT_DECAYS)} x seeds {list(SEEDS)}: one pack of {len(WEIGHT_DECAYS) * len(SEEDS)}; "
          f"a probe every {args.probe_every} steps on {args.probe_samples} samples; "
          f"loss_tolerance {args.loss_tolerance}, min_gap {args.min_gap} ({math.ceil(args.min_gap * steps)} steps)",
          flush=True)
    cfg, result, per_step, seconds = full_run(args, root)
    members = cfg.members
    K = len(members)
    by_wd = {wd: [k for k, m in enumerate(members) if m.weight_decay == wd] for wd in WEIGHT_DECAYS}
    schedule = cfg.probe_steps()
    probes = Probes(result.records, K)
    print(f"full run: {seconds:.0f} s{' (reused)' if result.reused else ''}, {len(probes.steps)} probes, "
          f"status {sorted(set(result.status))}")

    # what the rule sees late in the run: the stationarity's level and the alignments' drift
    print("\nlate in the full run, per weight decay (over members): worst hidden-layer stat_h_b/stat_g_b "
          "at probes in the last half (median, min); the share of those probes where the train loss has stopped "
          "falling (its interval mean >= (1 - loss_tolerance) x the previous one's); last-hidden-layer alignment moves")
    half, quarter = [s for s in probes.steps if s >= steps / 2], [s for s in probes.steps if s >= 0.75 * steps]
    for wd, ks in by_wd.items():
        worst = np.array([worst_stationarity([{c: v[ks] for c, v in layer.items()} for layer in probes.stats[s]],
                                             range(len(probes.stats[s])), len(ks)) for s in half[1:]])
        bounds = [-1] + probes.steps
        means = np.array([per_step[ks, a + 1:b + 1].double().mean(1).numpy() for a, b in zip(bounds, bounds[1:])])
        late = np.array([i for i, st in enumerate(probes.steps) if st >= steps / 2][1:])
        flat = float((means[late] >= (1 - args.loss_tolerance) * means[late - 1]).mean())
        d_half = moved(probes, {k: half[0] for k in ks}, ks, steps)
        d_quarter = moved(probes, {k: quarter[0] for k in ks}, ks, steps)
        print(f"  wd {wd:g}: stat median {np.nanmedian(worst):.3f}, min {np.nanmin(worst):.3f}; loss flat at {flat:.0%}; max |alignment "
              f"change| from step {half[0]}: {d_half:.3f}, from step {quarter[0]}: {d_quarter:.3f}")

    wds = " ".join(f"{'d wd ' + format(wd, 'g'):>10}" for wd in WEIGHT_DECAYS)
    print(f"\nreplayed train.stop: saved = share of member-steps not trained; d wd = max |alignment at the stop - "
          f"at step {steps}| of the last hidden layer (6 alignments x members); * = goal "
          f"(saved >= {GOAL_SAVED:.0%}, every d <= {GOAL_ALIGNMENT})")
    print(f"{'':>17} | {'pack of 8':^36} | {'one pack per weight decay':^42} | {'each member alone':^28}")
    print(f"{'stationary':>10} {'pat':>3}  | {'stop':>6} {'saved':>6} {wds} {'':>1} | {'stops':>12} {'saved':>6} {wds} {'':>1} | "
          f"{'saved':>6} {wds} {'':>1}")
    settings = []  # candidates for the real run: (moved, stop, stationary, patience, members of the pack)
    for stationary in args.thresholds:
        for patience in args.patience:
            cells = []
            # the pack of 8
            stop8 = replay(probes, per_step, list(range(K)), stationary, patience, args, schedule)[0]
            stop = {k: stop8 for k in range(K)}
            cells.append((f"{stop8:>6}", 1 - stop8 / steps, [moved(probes, stop, ks, steps) for ks in by_wd.values()]))
            settings.append((max(cells[0][2]), stop8, stationary, patience, list(range(K))))
            # one pack per weight decay
            stop = {}
            for ks in by_wd.values():
                s = replay(probes, per_step, ks, stationary, patience, args, schedule)[0]
                stop.update({k: s for k in ks})
                settings.append((moved(probes, stop, ks, steps), s, stationary, patience, ks))
            cells.append((f"{'/'.join(str(stop[ks[0]]) for ks in by_wd.values()):>12}",
                          1 - sum(stop.values()) / (K * steps), [moved(probes, stop, ks, steps) for ks in by_wd.values()]))
            # each member alone
            stop = {k: replay(probes, per_step, [k], stationary, patience, args, schedule)[0] for k in range(K)}
            cells.append(("", 1 - sum(stop.values()) / (K * steps), [moved(probes, stop, ks, steps) for ks in by_wd.values()]))
            line = f"{stationary:>10g} {patience:>3}  |"
            for label, saved, ds in cells:
                goal = saved >= GOAL_SAVED and all(d <= GOAL_ALIGNMENT for d in ds)
                line += (f" {label}" if label else "") + f" {saved:>6.1%} " + " ".join(f"{d:>10.4f}" for d in ds) \
                    + f" {'*' if goal else ' '} |"
            print(line.rstrip(" |"), flush=True)

    if args.no_check:
        return
    if args.check:
        stationary, patience, ks = args.check[0], int(args.check[1]), list(range(K))
    else:  # the closest to the goal: of the packs that stop early, the one whose alignments moved least
        early = [c for c in settings if c[1] < steps]
        _, _, stationary, patience, ks = min(early, key=lambda c: (c[0], c[1], len(c[4]) != K)) if early else settings[-1]
    check(args, root, probes, per_step, schedule, result.records, [members[k] for k in ks], ks, stationary, patience)


def check(args, root, probes, per_step, schedule, full, pack, ks, stationary, patience) -> None:
    """Train the pack `ks` (full-run member indices; `pack` their members) with train.stop on and
    compare it with the replay: last step, probes, statuses and every record at its probes."""
    steps, K = args.steps, len(ks)
    stop, settled, probed = replay(probes, per_step, ks, stationary, patience, args, schedule)
    wds = sorted({m.weight_decay for m in pack})
    print(f"\nreal run with train.stop {{stationary: {stationary:g}, patience: {patience}}}, the pack of {K} "
          f"(weight decay {wds}); replay: stop at step {stop}, settled {sum(settled)}/{K}", flush=True)
    t0 = time.perf_counter()
    real = train_pack(config(args, {"stationary": stationary, "patience": patience}, wds), root=root)
    seconds = time.perf_counter() - t0
    assert [(m.weight_decay, m.seed) for m in config(args, None, wds).members] == [(m.weight_decay, m.seed) for m in pack]
    rec = real.records.copy()
    rec["member"] = [ks[j] for j in rec["member"]]  # the full run's member indices
    real_steps = sorted(int(s) for s in rec["step"].unique())
    gone = [probes.gone[stop][k] for k in ks]
    expected = ["diverged" if g else "settled" if s else "ok" for s, g in zip(settled, gone)]
    # every record of the real run against the full run's at the same step (same steps, layers, members)
    full = full[full["step"].isin(real_steps) & full["member"].isin(ks)]
    cols = list(ALIGNMENTS) + ["stat_h_b", "stat_g_b", "train_loss", "probe_loss"]
    key = ["step", "member", "layer"]
    a = rec.sort_values(key)[key + cols].reset_index(drop=True)
    b = full.sort_values(key)[key + cols].reset_index(drop=True)
    same_rows = a.shape == b.shape and bool((a[key].to_numpy() == b[key].to_numpy()).all())
    diff = float(np.nanmax(np.abs(a[cols].to_numpy(float) - b[cols].to_numpy(float)))) if same_rows else math.nan
    d_align = moved(probes, {k: stop for k in ks}, ks, steps)
    print(f"  {seconds:.0f} s; last step {real.last_step} (replay {stop}); probes "
          f"{'as replayed' if real_steps == probed else f'DIFFER: {real_steps} vs {probed}'}; status {real.status} "
          f"({'as replayed' if real.status == expected else f'replay: {expected}'})")
    print(f"  records at its {len(real_steps)} probes vs the full run's: {'same rows' if same_rows else 'ROWS DIFFER'}, "
          f"max |difference| over {', '.join(cols)}: {diff:.3g}; its last-hidden-layer alignments vs the full run's "
          f"at step {steps}: max |difference| {d_align:.4f}")
    ok = real.last_step == stop and real_steps == probed and real.status == expected and same_rows and diff <= 1e-5
    print(f"  {'the real stopped run is the replay' if ok else 'THE REAL STOPPED RUN DIFFERS FROM THE REPLAY'}")

if __name__ == "__main__":
    main()
