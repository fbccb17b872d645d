"""When a pack may stop: its members' representations have settled (`train.stop`).

The rule, per member, judged afresh at every probe from that member's history:

- **stationary**: at each of its last `patience` probes, `stat_h_b` and `stat_g_b` (the
  relative Frobenius change of H and G at the layer's output since the previous probe) are
  below `stationary` on every hidden layer (whole layers, layers 1..n_layers-1; per-head rows
  and the output layer do not count). The first probe has no previous one (NaN), and NaN never
  counts as below, so this takes at least `patience + 1` probes. A probe closer than `min_gap`
  steps to the previous one does not count (its stat is taken as NaN): over a handful of steps
  H and G barely move whatever the network will do, so the dense early probes of a log-spaced
  schedule would settle every network at step 4.
- **loss stopped falling**: the mean training loss over the steps of the last probe interval
  (previous probe, this probe] is at least `(1 - loss_tolerance)` times the mean over the
  interval before it. Intervals of a log-spaced schedule differ in length; the means compare
  the loss level, not its sum.

A member is settled at a probe when both hold there. It is judged again at every probe: one
whose representations move again (stat back above the threshold) is unsettled again. A pack
ends at the first probe where every member is settled or diverged; settled members keep
training until then (the pack is one stacked computation), and their probes are recorded.

Spacing (`next_probe`): a log-spaced schedule grows sparse late, so `patience` probes could
span most of the run. From the first probe at which some member is settled, probes are every
`interval` steps, `interval` being the gap between the last two probes of the schedule before
it and at least `min_gap` (the scheduled probes after that are replaced), plus the last step
as always.

Pure functions of plain numbers: the loop reduces each probe to one number per member
(`worst_stationarity`) and keeps the histories (`Settling`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field


def is_settled(stats: Sequence[float], losses: Sequence[float], stationary: float, patience: int,
               loss_tolerance: float) -> bool:
    """Whether a member is settled at its latest probe.

    stats: per probe (oldest first), the largest `stat_h_b`/`stat_g_b` over its hidden layers
    (NaN where any is NaN); losses: per probe, its mean training loss over the interval ending
    there. Both as long as the probes so far.
    """
    if len(stats) < patience or len(losses) < 2:
        return False
    recent = stats[-patience:]
    still = all(math.isfinite(s) and s < stationary for s in recent)
    last, before = losses[-1], losses[-2]
    flat = math.isfinite(last) and math.isfinite(before) and last >= (1 - loss_tolerance) * before
    return still and flat


def worst_stationarity(values: Sequence[dict[str, Sequence[float]]], hidden: Sequence[int], K: int) -> list[float]:
    """Per member, the largest `stat_h_b` or `stat_g_b` over the layers `hidden` (indices into
    `values`, one {column: K values} per measured layer); NaN if any of them is NaN."""
    worst = [-math.inf] * K
    for l in hidden:
        for column in ("stat_h_b", "stat_g_b"):
            for k, v in enumerate(values[l][column]):
                v = float(v)
                worst[k] = math.nan if not math.isfinite(v) or math.isnan(worst[k]) else max(worst[k], v)
    return [w if w != -math.inf else math.nan for w in worst]


def next_probe(step: int, schedule: Sequence[int], interval: int | None, steps: int) -> int:
    """The probe after `step`: the next of `schedule` while `interval` is None (no member has
    settled yet), else `step + interval`; never past `steps` (always probed)."""
    if interval is None:
        later = [s for s in schedule if s > step]
        return min(later) if later else steps
    return min(step + interval, steps)


@dataclass
class Settling:
    """The histories the rule needs for a pack of K members, and the probe spacing; saved in
    checkpoints (`state`, `load`)."""

    K: int
    stationary: float
    patience: int
    loss_tolerance: float
    min_gap: int = 1  # steps: a probe closer to the previous one does not count
    stats: list[list[float]] = field(default_factory=list)  # per member, per probe
    losses: list[list[float]] = field(default_factory=list)  # per member, per probe: interval mean
    probes: list[int] = field(default_factory=list)  # the steps probed so far
    interval: int | None = None  # set at the first settle: the even spacing from then on
    first_settled: int | None = None  # the step of the first probe where some member was settled

    def __post_init__(self):
        if not self.stats:
            self.stats = [[] for _ in range(self.K)]
            self.losses = [[] for _ in range(self.K)]

    def update(self, step: int, stats: Sequence[float], losses: Sequence[float]) -> list[bool]:
        """Add one probe (per member: worst stationarity, mean interval loss); returns which
        members are settled at it, and fixes the spacing at the first settle."""
        close = bool(self.probes) and step - self.probes[-1] < self.min_gap
        self.probes.append(step)
        settled = []
        for k in range(self.K):
            self.stats[k].append(math.nan if close else float(stats[k]))
            self.losses[k].append(float(losses[k]))
            settled.append(is_settled(self.stats[k], self.losses[k], self.stationary, self.patience,
                                      self.loss_tolerance))
        if any(settled) and self.interval is None:
            self.first_settled = step
            self.interval = max(self.min_gap, self.probes[-1] - self.probes[-2], 1)
        return settled

    def state(self) -> dict:
        return {"stats": self.stats, "losses": self.losses, "probes": self.probes, "interval": self.interval,
                "first_settled": self.first_settled}

    def load(self, state: dict | None) -> None:
        if state:
            self.stats, self.losses, self.probes = state["stats"], state["losses"], state["probes"]
            self.interval, self.first_settled = state["interval"], state["first_settled"]


def pack_done(settled: Sequence[bool], status: Sequence[str]) -> bool:
    """A pack ends when every member is settled or diverged (and at least one is settled: a
    pack whose members all diverged runs on as before, each frozen)."""
    return any(settled) and all(s or st == "diverged" for s, st in zip(settled, status))
