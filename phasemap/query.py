"""Read the records dataset: `load` (pandas) and `sql` (DuckDB over a `records` view).

Both read every Parquet file under a storage root (hive folders `sweep=`/`run=` included),
check each file's schema version first, and report unreadable files or files of an unknown
schema version by name: skipped with a warning, or an error with strict=True.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .records import SCHEMA, SCHEMA_VERSION, filesystem

log = logging.getLogger(__name__)

_HIVE = pa.schema([("sweep", pa.string()), ("run", pa.string())])
PARTITIONING = ds.partitioning(_HIVE, flavor="hive")
DATASET_SCHEMA = pa.unify_schemas([SCHEMA, _HIVE])  # the records plus their folders' keys


class DatasetError(RuntimeError):
    """Unreadable files or an unknown schema version under strict reading."""


@dataclass
class Scan:
    """The usable files under a root, and those skipped with the reason."""

    root: str
    fs: pafs.FileSystem
    base: str
    files: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def dataset(self) -> ds.Dataset:
        return ds.dataset(self.files, filesystem=self.fs, format="parquet", schema=DATASET_SCHEMA,
                          partition_base_dir=self.base, partitioning=PARTITIONING)


def scan(root: str, strict: bool = False, sweep_id: str | None = None) -> Scan:
    """Find the record files under `root` (one sweep's only, if given) and check each footer."""
    fs, base = filesystem(root)
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        raise DatasetError(f"`the storage root is a folder of records` must hold, but {root!r} does not exist")
    start = f"{base}/sweep={sweep_id}" if sweep_id else base
    if fs.get_file_info(start).type != pafs.FileType.Directory:
        if strict:
            raise DatasetError(f"`{start} is a folder of records` must hold, but it does not exist")
        log.warning("no sweep %r under %s", sweep_id, root)
        return Scan(root, fs, base)
    found = Scan(root, fs, base)
    for info in fs.get_file_info(pafs.FileSelector(start, recursive=True)):
        parts = info.path[len(base):].split("/")
        if info.type != pafs.FileType.File or not info.base_name.endswith(".parquet"):
            continue
        if any(p.startswith(("_", ".")) for p in parts):  # temp files, spectra, Tune's folder
            continue
        reason = _check_file(fs, info.path)
        if reason:
            found.skipped[info.path] = reason
        else:
            found.files.append(info.path)
    for path, reason in found.skipped.items():
        log.warning("skipped %s: %s", path, reason)
    if strict and found.skipped:
        lines = "\n".join(f"  {p}: {r}" for p, r in found.skipped.items())
        raise DatasetError(f"{len(found.skipped)} file(s) under {root} cannot be read:\n{lines}")
    return found


def _check_file(fs: pafs.FileSystem, path: str) -> str:
    try:
        with fs.open_input_file(path) as f:
            schema = pq.read_schema(f)
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported, not fatal
        return f"unreadable ({type(e).__name__}: {e})"
    version = (schema.metadata or {}).get(b"phasemap_schema_version", b"?").decode()
    if version != str(SCHEMA_VERSION):
        return f"unknown schema version {version!r} (this phasemap reads {SCHEMA_VERSION})"
    return ""


def _filter(filters: dict[str, Any] | None):
    """{column: value or list of values} as a pyarrow expression (partitions pruned by sweep)."""
    expr = None
    for column, value in (filters or {}).items():
        values = list(value) if isinstance(value, (list, tuple, set)) else [value]
        term = ds.field(column).isin(values)
        if column == "sweep_id":
            term = term & ds.field("sweep").isin(values)
        expr = term if expr is None else expr & term
    return expr


def load(
    root: str,
    filters: dict[str, Any] | None = None,
    columns: Iterable[str] | None = None,
    strict: bool = False,
) -> pd.DataFrame:
    """Records under `root` as a DataFrame, reading only the columns and partitions needed.

    `filters`: {column: value or list}, e.g. {"sweep_id": "quick", "layer": [1, 2]}.
    """
    sweep = filters.get("sweep_id") if filters and isinstance(filters.get("sweep_id"), str) else None
    found = scan(root, strict, sweep_id=sweep)
    cols = list(columns) if columns is not None else SCHEMA.names
    if not found.files:
        return SCHEMA.empty_table().select(cols).to_pandas()
    return found.dataset().to_table(columns=cols, filter=_filter(filters)).to_pandas()


def sql(root: str, query: str, strict: bool = False) -> pd.DataFrame:
    """Run DuckDB SQL over the view `records` (every record under `root`, plus hive columns)."""
    import duckdb

    found = scan(root, strict)
    con = duckdb.connect()
    try:
        dataset = found.dataset() if found.files else DATASET_SCHEMA.empty_table()
        con.register("records", dataset)
        return con.execute(query).df()
    finally:
        con.close()
