"""Aggregation at scale: a synthetic dataset of ~1 million records, written as Parquet, read
back and reduced to a phase grid and a critical-depth map; then as `phasemap serve` reads it
(`LiveRecords`): the first read, a refresh with nothing new, and a refresh after one more run
lands. Prints times and peak memory.

    python benchmarks/aggregate_scale.py
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from synthetic import million_rows  # noqa: E402

from phasemap import load  # noqa: E402
from phasemap.analysis.aggregate import critical_depth_map, phase_grid  # noqa: E402
from phasemap.records import SCHEMA  # noqa: E402


def peak_mb() -> float:
    """Peak resident memory of this process (VmHWM; unlike ru_maxrss it is not inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(label, fn):
    t0 = time.perf_counter()
    out = fn()
    print(f"{label:<40} {time.perf_counter() - t0:7.2f} s   peak RSS {peak_mb():7.0f} MB")
    return out


def aggregate(root: str) -> None:
    """Read and aggregate in a fresh process, so peak memory is the aggregation's own."""
    cols = ["sweep_id", "run_id", "member", "step", "layer", "depth", "width", "weight_decay", "status",
            "rga_a", "rwa_a", "gwa_a", "rga_b", "rwa_b", "gwa_b"]
    print(f"fresh process: {peak_mb():.0f} MB after imports")
    records = timed("load (15 columns)", lambda: load(root, columns=cols))
    grid = timed("phase grid (wd x depth, facet width)", lambda: phase_grid(
        records, "weight_decay", "depth", facets=["width"], tau=0.9))
    cd = timed("critical-depth map (wd x depth, facet width)", lambda: critical_depth_map(
        records, "weight_decay", "depth", facets=["width"], relation="rga_b", tau=0.9))
    print(f"phase grid: {len(grid)} cells; critical-depth map: {len(cd)} cells")
    live_view(root)


def live_view(root: str) -> None:
    """`phasemap serve`'s reads: LiveRecords' refreshes, the sweep's frame and the phase diagram's SVG."""
    from phasemap.analysis.query import LiveRecords
    from phasemap.serve import api

    live = LiveRecords(root)
    timed("live: first refresh (every file)", live.refresh)
    frame = timed("live: the sweep's records (frame)", lambda: live.frame("syn"))
    timed("live: refresh, nothing new", live.refresh)
    timed("live: frame, nothing new", lambda: live.frame("syn"))
    one = load(root, filters={"run_id": frame["run_id"].iloc[0]})  # one more run lands: a copy under a new id
    folder = Path(root) / "sweep=syn" / "run=landed"
    folder.mkdir()
    pq.write_table(pa.Table.from_pandas(one.assign(run_id="landed", config_hash=one["config_hash"] + "-landed"),
                                        schema=SCHEMA, preserve_index=False), folder / "part-000000001.parquet")
    t0 = time.perf_counter()
    read = live.refresh()
    rows = len(live.frame("syn"))
    print(f"{'live: refresh after a run lands, + frame':<40} {time.perf_counter() - t0:7.2f} s   "
          f"({len(read)} file read, {rows:,} rows)   peak RSS {peak_mb():7.0f} MB")
    out = timed("live: phase diagram (SVG, cells)", lambda: api.figure(live, "syn", "phase-diagram", {}))
    print(f"phase diagram: {len(out['cells'])} cells, SVG {len(out['svg']) / 1e3:.0f} kB")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--aggregate":
        return aggregate(sys.argv[2])
    df = timed("synthesise records", million_rows)
    print(f"{len(df):,} rows, {df.groupby(['run_id', 'member']).ngroups:,} networks, "
          f"{df['run_id'].nunique()} runs")
    with tempfile.TemporaryDirectory() as root:
        def write():
            for (sweep, run), part in df.groupby(["sweep_id", "run_id"]):
                folder = Path(root) / f"sweep={sweep}" / f"run={run}"
                folder.mkdir(parents=True)
                pq.write_table(pa.Table.from_pandas(part, schema=SCHEMA, preserve_index=False),
                               folder / "part-000000001.parquet")

        timed("write Parquet (one file per run)", write)
        subprocess.run([sys.executable, __file__, "--aggregate", root], check=True)


if __name__ == "__main__":
    main()
