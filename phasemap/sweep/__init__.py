"""Sweeps on Ray Tune: a sweep config expands into packs; one Tune trial trains one pack.

A sweep config (YAML) holds a `base` run config (the fixed settings), `axes` (dotted field
paths of the run config with a list of values each: a grid; or distributions for Optuna),
the search mode, resources per trial, pack size and retries. Every trial writes its records
itself, straight to the storage root; the driver only receives small reports.

Identity: a member (one network) is identified by the hash of its own config. Every sweep
run (first, `--resume`, or after the file grew a value on any axis) lists the members already
complete in the sweep's folder (from the completion markers alone, so it works even when Ray's
own experiment folder is gone) and forms its packs from the rest: only what is new trains.

Fault tolerance: a trial whose worker dies is retried (`max_failures`) and its pack resumes
from its last checkpoint in storage. A pack is trained under a lease (`leases`), so a second
driver on the same sweep waits for the packs the first is training instead of training them
again. A storage fault (full disk, permissions, an unreachable endpoint) ends the sweep with
one `StorageError` line naming the root.
"""

from .spec import SweepConfig, auto_pack_size, expand, grid_points, load_sweep, members, parse_sweep
from .status import GridPlan, grid_plan, member_counts, sweep_status

# the driver imports Ray and torch: loaded on first use, so configs and status need neither
_DRIVER = ("StorageError", "SweepError", "SweepResult", "objective", "overhead_summary", "run_sweep", "start_ray")


def __getattr__(name: str):
    if name in _DRIVER:
        from . import driver

        return getattr(driver, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["SweepConfig", "SweepResult", "SweepError", "StorageError", "auto_pack_size", "expand", "grid_plan", "grid_points", "GridPlan",
           "load_sweep", "member_counts", "members", "objective", "overhead_summary", "parse_sweep", "run_sweep",
           "start_ray", "sweep_status"]
