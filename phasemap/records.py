"""The records: one Arrow schema, a writer and a reader.

One row per (run, member, step, layer). Layout under a storage root (a local folder or a
pyarrow filesystem URI such as s3://bucket/prefix):

    sweep=<sweep_id>/run=<run_id>/part-<step:09d>.parquet   rows produced at that step
    sweep=<sweep_id>/run=<run_id>/_COMPLETE.json            written last: the run is done

File names depend only on the run and the step, and every file is written under a temporary
name starting with '_' and then renamed, so a reader never sees half a file and a rerun
overwrites instead of duplicating. Names starting with '_' or '.' are skipped by readers.
"""

from __future__ import annotations

import json
import logging
import os
import uuid

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .probes import METRIC_COLUMNS

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
COMPLETE = "_COMPLETE.json"
SPECTRA = "_spectra.parquet"  # eigenvalues at the last probe; beside, not in, the records

_ID_FIELDS = [
    ("schema_version", pa.int16()),
    ("phasemap_version", pa.string()),
    ("sweep_id", pa.string()),
    ("trial_id", pa.string()),
    ("run_id", pa.string()),
    ("config_hash", pa.string()),  # of the member's own config: equal in a pack and alone
    ("member", pa.int32()),
]
_CONFIG_FIELDS = [
    ("task", pa.string()),
    ("input_dim", pa.int32()),
    ("output_dim", pa.int32()),
    ("depth", pa.int32()),
    ("width", pa.int32()),
    ("activation", pa.string()),
    ("batch_size", pa.int32()),
    ("optimizer", pa.string()),
    ("lr", pa.float64()),
    ("momentum", pa.float64()),
    ("weight_decay", pa.float64()),
    ("seed", pa.int64()),
    ("data_seed", pa.int64()),
    ("steps", pa.int64()),
    ("covariance", pa.string()),
]
_ROW_FIELDS = [
    ("step", pa.int64()),
    ("layer", pa.int32()),  # 1-based; layers 1..depth produce hidden layers, depth+1 the output
    ("dim_in", pa.int32()),
    ("dim_out", pa.int32()),
    ("status", pa.string()),  # ok | diverged
    ("train_loss", pa.float64()),
    ("probe_loss", pa.float64()),
]
_METRIC_FIELDS = [(c, pa.int32() if c.startswith("n_zero") or c.endswith("_n") else pa.float64()) for c in METRIC_COLUMNS]

SCHEMA = pa.schema(
    [pa.field(n, t) for n, t in _ID_FIELDS + _CONFIG_FIELDS + _ROW_FIELDS + _METRIC_FIELDS]
    + [pa.field("nan_reason", pa.string())],
    metadata={"phasemap_schema_version": str(SCHEMA_VERSION)},
)


def filesystem(root: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and base path of a storage root (folder or URI)."""
    if "://" in root:
        return pafs.FileSystem.from_uri(root)
    return pafs.LocalFileSystem(), os.path.abspath(root)


def resolve_root(root: str) -> str:
    """A local root made absolute (workers run in folders of their own); URIs unchanged."""
    return root if "://" in root else os.path.abspath(root)


def run_dir(root: str, sweep_id: str, run_id: str) -> tuple[pafs.FileSystem, str]:
    fs, base = filesystem(root)
    return fs, f"{base}/sweep={sweep_id}/run={run_id}"


def to_table(rows: list[dict]) -> pa.Table:
    """Rows (dicts with every schema column) as a table of exactly SCHEMA."""
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def write_part(root: str, sweep_id: str, run_id: str, step: int, rows: list[dict]) -> str | None:
    """Atomically write the rows produced at `step`; returns the file name (None if no rows)."""
    if not rows:
        return None
    sink = pa.BufferOutputStream()
    pq.write_table(to_table(rows), sink)
    name = f"part-{step:09d}.parquet"
    write_file(root, sweep_id, run_id, name, sink.getvalue().to_pybytes())
    return name


def write_file(root: str, sweep_id: str, run_id: str, name: str, data: bytes) -> None:
    """Atomically write one file of a run's folder (temp name, then rename)."""
    fs, folder = run_dir(root, sweep_id, run_id)
    fs.create_dir(folder, recursive=True)
    tmp = f"{folder}/_tmp-{uuid.uuid4().hex}"
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    fs.move(tmp, f"{folder}/{name}")


def read_file(root: str, sweep_id: str, run_id: str, name: str) -> bytes | None:
    """A file of a run's folder, or None if it is not there."""
    fs, folder = run_dir(root, sweep_id, run_id)
    path = f"{folder}/{name}"
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read()


def delete_file(root: str, sweep_id: str, run_id: str, name: str) -> None:
    fs, folder = run_dir(root, sweep_id, run_id)
    if fs.get_file_info(f"{folder}/{name}").type == pafs.FileType.File:
        fs.delete_file(f"{folder}/{name}")


def mark_complete(root: str, sweep_id: str, run_id: str, summary: dict) -> None:
    """Write the run's completion marker; status and resume trust only this."""
    write_file(root, sweep_id, run_id, COMPLETE, json.dumps(summary, indent=2, default=str).encode())


def is_complete(root: str, sweep_id: str, run_id: str) -> bool:
    fs, folder = run_dir(root, sweep_id, run_id)
    return fs.get_file_info(f"{folder}/{COMPLETE}").type == pafs.FileType.File


def clear_run(root: str, sweep_id: str, run_id: str) -> None:
    """Remove a run's folder so a fresh attempt starts clean (no stale parts)."""
    fs, folder = run_dir(root, sweep_id, run_id)
    if fs.get_file_info(folder).type == pafs.FileType.Directory:
        fs.delete_dir(folder)


def read_run(root: str, sweep_id: str, run_id: str, before_step: int | None = None) -> pd.DataFrame:
    """The records of one run (only its parts written at steps before `before_step`, if given)."""
    fs, folder = run_dir(root, sweep_id, run_id)
    infos = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    parts = [i.path for i in infos if i.base_name.startswith("part-") and i.base_name.endswith(".parquet")]
    if before_step is not None:
        parts = [p for p in parts if int(p.rsplit("part-", 1)[1].split(".")[0]) < before_step]
    if not parts:
        return SCHEMA.empty_table().to_pandas()
    return ds.dataset(sorted(parts), filesystem=fs, format="parquet", schema=SCHEMA).to_table().to_pandas()


SPECTRA_SCHEMA = pa.schema([
    ("sweep_id", pa.string()), ("run_id", pa.string()), ("member", pa.int32()), ("config_hash", pa.string()),
    ("step", pa.int64()), ("layer", pa.int32()),
    ("side", pa.string()),  # a (input side) | b (output side)
    ("matrix", pa.string()),  # H | G | Z
    ("rank", pa.int32()),  # 1 = largest eigenvalue
    ("eigenvalue", pa.float64()),
])


def write_spectra(root: str, sweep_id: str, run_id: str, table: pa.Table) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table.cast(SPECTRA_SCHEMA), sink)
    write_file(root, sweep_id, run_id, SPECTRA, sink.getvalue().to_pybytes())


def read_spectra(root: str, run_id: str | None = None) -> pd.DataFrame:
    """Eigenvalues of H, G, Z at the last probe of every run (or one run) under a root."""
    fs, base = filesystem(root)
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    files = [i.path for i in infos if i.base_name == SPECTRA and (run_id is None or f"/run={run_id}/" in i.path)]
    if not files:
        return SPECTRA_SCHEMA.empty_table().to_pandas()
    return ds.dataset(files, filesystem=fs, format="parquet", schema=SPECTRA_SCHEMA).to_table().to_pandas()
