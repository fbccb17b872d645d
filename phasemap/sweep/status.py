"""What of a sweep is complete, running, interrupted, failed or missing: from storage alone."""

from __future__ import annotations

import pyarrow.fs as pafs

from .. import leases, records
from ..train import ATTEMPT, run_id_of
from .driver import FAILED
from .spec import SweepConfig, expand, members


def sweep_status(cfg: SweepConfig) -> list[dict]:
    """Per pack: complete, running, interrupted, failed or missing, from storage alone.

    A grid sweep's packs are the complete runs that hold its members plus the packs its
    missing members form (what the next run would start); an Optuna sweep's runs are those
    found in storage.
    """
    if cfg.search.mode == "grid":
        done = records.complete_members(cfg.root, cfg.sweep_id)
        wanted = [m.config_hash() for m in members(cfg)]
        finished: dict[str, int] = {}
        for h in wanted:
            if h in done:
                finished[done[h]] = finished.get(done[h], 0) + 1
        packs = list(finished.items()) + [(run_id_of(p), len(p.members)) for p in expand(cfg, done=set(done))]
    else:
        fs, base = records.filesystem(cfg.root)
        folder = f"{base}/sweep={cfg.sweep_id}"
        found = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
        packs = [(i.base_name[len("run="):], None) for i in found if i.base_name.startswith("run=")]
    rows = []
    for run_id, n in packs:
        state = "missing"
        holder = leases.current(cfg.root, cfg.sweep_id, run_id)
        if records.is_complete(cfg.root, cfg.sweep_id, run_id):
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
