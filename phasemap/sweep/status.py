"""What of a sweep is complete, running, interrupted, failed or missing: from storage alone.

Each pack comes with its members' config columns (from its completion marker, or the
records it has written so far) and its last step, so it can be named by its configs rather
than its hash. Nothing here imports torch: `phasemap status` reads storage only.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .. import records
from ..records import leases
from ..config import ConfigError, RunConfig, parse_config, run_id_of
from .spec import SweepConfig, expand, members, read_stored

log = logging.getLogger(__name__)

FAILED = "_FAILED.json"
STATES = ("complete", "running", "interrupted", "failed", "missing")


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
    found in storage. Each row: run_id, members, state, configs (per member its config
    columns; None where unknown), last_step (None before its first records) and steps.
    """
    if cfg.search.mode != "grid":
        return stored_status(cfg.root, cfg.sweep_id)
    plan = grid_plan(cfg)
    files = _by_run(records.sweep_files(cfg.root, cfg.sweep_id))
    rows = [_run_row(cfg.root, cfg.sweep_id, run_id, files.get(run_id, {})) for run_id in plan.finished]
    for pack in plan.packs:  # what the next run would train; some may have started, or completed since
        row = _run_row(cfg.root, cfg.sweep_id, run_id_of(pack), files.get(run_id_of(pack), {}))
        if row["configs"] is None:
            row.update(configs=_member_configs(pack), members=len(pack.members), steps=pack.train.steps)
        rows.append(row)
    return rows


def storage_status(root: str, sweep_id: str) -> list[dict]:
    """`sweep_status` from storage alone: with the config the sweep's latest driver stored
    (`spec.SWEEP_FILE`) a grid's packs not started yet are listed too; without it (sweeps of
    earlier versions, `Recorder` runs) the runs found."""
    cfg = read_stored(root, sweep_id)
    if cfg is not None:
        try:
            return sweep_status(cfg)
        except ConfigError as e:  # its data files are not on this machine, say: the runs found
            log.info("sweep %s: its stored config does not expand here (%s): the runs found only", sweep_id, e)
    return stored_status(root, sweep_id)


def stored_status(root: str, sweep_id: str) -> list[dict]:
    """`sweep_status` of every run found in a sweep's folder, without its config file."""
    files = _by_run(records.sweep_files(root, sweep_id))
    return [_run_row(root, sweep_id, run_id, names) for run_id, names in sorted(files.items())]


def stored_sweeps(root: str) -> list[str]:
    """The sweep ids that have a folder under `root`."""
    fs, base = records.filesystem(root)
    found = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    return sorted(i.base_name[len("sweep="):] for i in found
                  if i.type == pafs.FileType.Directory and i.base_name.startswith("sweep="))


def _by_run(files: list[pafs.FileInfo]) -> dict[str, dict[str, pafs.FileInfo]]:
    """{run_id: {file name: info}} of the files directly in run folders."""
    runs: dict[str, dict[str, pafs.FileInfo]] = {}
    for info in files:
        if records.run_of(info):
            runs.setdefault(records.run_of(info), {})[info.base_name] = info
    return runs


def _member_configs(cfg: RunConfig) -> list[dict]:
    return [records.config_columns(cfg.member_config(m)) for m in cfg.members]


def _run_row(root: str, sweep_id: str, run_id: str, names: dict[str, pafs.FileInfo]) -> dict:
    """One run's state, members' configs and last step, from the files in its folder.

    A complete run: its marker holds the pack's config and its last step (every step, or
    where train.stop ended it; markers before train.stop: every step; a `Recorder`'s
    marker holds its config columns; its records give the last step). Any other: its newest
    part (`part-<step>.parquet`) gives the last step written and the members' config
    columns; a run with no records yet has neither.
    """
    configs, last_step, steps = None, None, None
    parts = sorted(n for n in names if n.startswith("part-") and n.endswith(".parquet"))
    if records.COMPLETE in names:
        summary = json.loads(records.read_file(root, sweep_id, run_id, records.COMPLETE))
        if summary.get("recorder"):  # its rows hold the columns the recorder filled in too
            if records.COMPACTED in names:
                path = names[records.COMPACTED].path
                configs = _part_configs(root, path)
                fs, _ = records.filesystem(root)
                last_step = max(pq.read_table(path, filesystem=fs, columns=["step"])["step"].to_pylist(), default=None)
            else:
                configs = [summary["config"]]
            steps = configs[0].get("steps")
        else:
            pack = parse_config(summary["config"], check_environment=False)  # perhaps trained elsewhere
            # train.stop may have ended it early: its marker says where
            configs, last_step, steps = _member_configs(pack), summary.get("last_step", pack.train.steps), pack.train.steps
        state = "complete"
    else:
        if parts:
            last_step = int(parts[-1][len("part-"):-len(".parquet")])
            configs = _part_configs(root, names[parts[-1]].path)
            steps = configs[0]["steps"] if configs else None
        holder = leases.current(root, sweep_id, run_id) if any(n.startswith(leases.PREFIX) for n in names) else None
        if holder is not None and holder.live():
            state = "running"
        elif FAILED in names:
            state = "failed"
        elif records.ATTEMPT in names or parts:
            state = "interrupted"
        else:
            state = "missing"
    n = len(configs) if configs is not None else None
    return {"run_id": run_id, "members": n, "state": state, "configs": configs, "last_step": last_step,
            "steps": steps}


def _part_configs(root: str, path: str) -> list[dict]:
    """The config columns of each member in a records file (its first rows hold every member)."""
    fs, _ = records.filesystem(root)
    columns = ["member"] + [c for _, c, _ in records.CONFIG_COLUMNS] + ["output_dim"]
    with fs.open_input_file(path) as f:
        rows = next(pq.ParquetFile(f).iter_batches(batch_size=1 << 16, columns=columns), None)
        rows = rows.to_pylist() if rows is not None else []
    first = {}
    for row in rows:
        first.setdefault(row.pop("member"), row)
    return [first[m] for m in sorted(first)]


def pack_labels(packs: list[dict]) -> list[str]:
    """Per pack, its configs by the fields that vary across `packs` (`weight_decay=0,0.001 seed=0,1`):
    each varying config column with the values its members take; '?' where a pack's configs are unknown."""
    known = [c for p in packs for c in (p["configs"] or [])]
    columns = [c for _, c, _ in records.CONFIG_COLUMNS]
    varying = [c for c in columns if len({json.dumps(m.get(c), sort_keys=True) for m in known}) > 1]
    labels = []
    for p in packs:
        if p["configs"] is None:
            labels.append("? (no records yet)")
            continue
        parts = []
        for c in varying:
            values = sorted({m.get(c) for m in p["configs"]}, key=lambda v: (v is None, v))
            parts.append(f"{c}=" + ",".join(_show(v) for v in values))
        labels.append(" ".join(parts) or "(one config)")
    return labels


def _show(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def member_counts(packs: list[dict]) -> dict[str, int]:
    """Members (networks) per state, from `sweep_status`'s packs: each member counts in its
    pack's state (complete, running, interrupted, failed, missing)."""
    counts = dict.fromkeys(STATES, 0)
    for p in packs:
        counts[p["state"]] += p["members"] or 0
    return counts
