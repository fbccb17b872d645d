"""What of a sweep is complete, running, interrupted, failed or missing: from storage alone."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow.fs as pafs

from .. import records
from ..records import leases
from ..config import RunConfig
from ..train import ATTEMPT, run_id_of
from .spec import SweepConfig, expand, members

FAILED = "_FAILED.json"


@dataclass
class GridPlan:
    """Where a grid sweep stands, from one listing of its folder."""

    wanted: set[str]  # config hashes of the grid's members
    done: dict[str, str]  # members complete in storage: config hash -> run id
    packs: list[RunConfig]  # the other members, packed: what a run of the sweep trains
    leased: set[str]  # run ids with a lease file (perhaps live)
    temp: dict[str, list[str]]  # run id -> temp files left in its folder

    @property
    def finished(self) -> dict[str, int]:
        """Complete runs holding the grid's members: run id -> how many of them."""
        runs: dict[str, int] = {}
        for h in self.wanted & set(self.done):
            runs[self.done[h]] = runs.get(self.done[h], 0) + 1
        return runs


def grid_plan(cfg: SweepConfig, ignore_done: bool = False) -> GridPlan:
    """The grid's members, those complete, and packs of the rest (ignore_done: of all)."""
    files = records.sweep_files(cfg.root, cfg.sweep_id)
    done = {} if ignore_done else records.complete_members(cfg.root, cfg.sweep_id, files)
    leased = {records.run_of(i) for i in files if i.base_name.startswith(leases.PREFIX) and records.run_of(i)}
    return GridPlan({m.config_hash() for m in members(cfg)}, done, expand(cfg, done=set(done)), leased,
                    records.temp_files(cfg.root, cfg.sweep_id, files))


def sweep_status(cfg: SweepConfig) -> list[dict]:
    """Per pack: complete, running, interrupted, failed or missing, from storage alone.

    A grid sweep's packs are the complete runs that hold its members plus the packs its
    missing members form (what the next run would start); an Optuna sweep's runs are those
    found in storage.
    """
    if cfg.search.mode == "grid":
        plan = grid_plan(cfg)
        rows = [{"run_id": run_id, "members": n, "state": "complete"} for run_id, n in plan.finished.items()]
        packs = [(run_id_of(p), len(p.members)) for p in plan.packs]
    else:
        rows = []
        fs, base = records.filesystem(cfg.root)
        folder = f"{base}/sweep={cfg.sweep_id}"
        found = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
        packs = [(i.base_name[len("run="):], None) for i in found if i.base_name.startswith("run=")]
    for run_id, n in packs:
        state = "missing"
        holder = leases.current(cfg.root, cfg.sweep_id, run_id)
        if records.is_complete(cfg.root, cfg.sweep_id, run_id):  # optuna runs; a grid pack completed since
            state = "complete"
        elif holder is not None and holder.live():
            state = "running"
        elif records.read_file(cfg.root, cfg.sweep_id, run_id, FAILED) is not None:
            state = "failed"
        elif records.read_file(cfg.root, cfg.sweep_id, run_id, ATTEMPT) is not None:
            state = "interrupted"
        rows.append({"run_id": run_id, "members": n, "state": state})
    return rows


def member_counts(packs: list[dict]) -> dict[str, int]:
    """Members (networks) per state, from `sweep_status`'s packs: complete, running, missing."""
    counts = {"complete": 0, "running": 0, "missing": 0}
    for p in packs:
        key = p["state"] if p["state"] in ("complete", "running") else "missing"
        counts[key] += p["members"] or 0
    return counts
