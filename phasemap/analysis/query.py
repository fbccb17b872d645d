"""Read the records dataset: `load` (pandas) and `sql` (DuckDB over a `records` view).

Both read every Parquet file under a storage root (hive folders `sweep=`/`run=` included),
check each file's schema version first, and report unreadable files or files of an unknown
schema version by name: skipped with a warning, or an error with strict=True. Files of schema
version 1 are read with the config columns v1 lacked filled with the values v1 runs used;
files before version 3 with their power-law fits (sorted spectra then) in the `_sorted`
columns and the paired ones null.

One network per config: within a sweep, a member config (`config_hash`) found in more than
one run is read from one run only. The rule: a complete run beats an unfinished one; among
complete runs the latest completion marker wins; among unfinished ones the latest file; then
the larger run id. Folders holding a compacted `records.parquet` are read from it alone.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..records import COMPACTED, COMPLETE, READABLE_VERSIONS, SCHEMA, SORTED_BEFORE_V3, V1_DEFAULTS, filesystem

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
    # file -> the columns with an old default (V1_DEFAULTS, n_layers) that its schema lacks
    missing: dict[str, frozenset] = field(default_factory=dict)
    # (sweep, run) folder -> (complete, time) for the one-network-per-config rule
    runs: dict[tuple[str, str], tuple[int, float]] = field(default_factory=dict)
    # file -> (mtime in ns, size): what a reader keeping files between scans compares
    stamps: dict[str, tuple[int, int]] = field(default_factory=dict)

    def dataset(self, files: list[str] | None = None) -> ds.Dataset:
        return ds.dataset(self.files if files is None else files, filesystem=self.fs, format="parquet",
                          schema=DATASET_SCHEMA, partition_base_dir=self.base, partitioning=PARTITIONING)

    def groups(self) -> dict[frozenset, list[str]]:
        """The files grouped by the old columns they lack (one group where all are current)."""
        out: dict[frozenset, list[str]] = {}
        for path in self.files:
            out.setdefault(self.missing.get(path, frozenset()), []).append(path)
        return out


def scan(root: str, strict: bool = False, sweep_id: str | None = None, footers: dict | None = None) -> Scan:
    """Find the record files under `root` (one sweep's only, if given) and check each footer.

    `footers`: a dict kept between scans by a reader that scans again and again (`serve`);
    a file whose mtime and size are unchanged is not opened again."""
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
    folders: dict[str, list] = {}
    for info in fs.get_file_info(pafs.FileSelector(start, recursive=True)):
        if info.type == pafs.FileType.File:
            folders.setdefault(info.path.rsplit("/", 1)[0], []).append(info)
    for folder, infos in sorted(folders.items()):
        if any(p.startswith(("_", ".")) for p in folder[len(base):].split("/")):  # Tune's folder and the like
            continue
        names = {i.base_name: i for i in infos}
        data = [i for i in infos if i.base_name.endswith(".parquet") and not i.base_name.startswith(("_", "."))]
        if COMPACTED in names:  # a finished run: its one file, never its leftover parts beside it
            data = [names[COMPACTED]]
        for info in data:
            stamp = (info.mtime_ns or 0, info.size or 0)
            if footers is None:
                reason, columns = _check_file(fs, info.path)
            else:
                if (info.path, stamp) not in footers:
                    footers[(info.path, stamp)] = _check_file(fs, info.path)
                reason, columns = footers[(info.path, stamp)]
            found.stamps[info.path] = stamp
            if reason:
                found.skipped[info.path] = reason
            else:
                found.files.append(info.path)
                if _FILLED - columns:
                    found.missing[info.path] = frozenset(_FILLED - columns)
        keys = dict(p.split("=", 1) for p in folder.rsplit("/", 2)[-2:] if "=" in p)
        if data and {"sweep", "run"} <= set(keys):
            done = names.get(COMPLETE)
            latest = done or max(data, key=lambda i: i.mtime.timestamp() if i.mtime else 0.0)
            found.runs[(keys["sweep"], keys["run"])] = (int(done is not None),
                                                        latest.mtime.timestamp() if latest.mtime else 0.0)
    for path, reason in found.skipped.items():
        log.warning("skipped %s: %s", path, reason)
    if strict and found.skipped:
        lines = "\n".join(f"  {p}: {r}" for p, r in found.skipped.items())
        raise DatasetError(f"{len(found.skipped)} file(s) under {root} cannot be read:\n{lines}")
    return found


_FILLED = frozenset(V1_DEFAULTS) | {"n_layers"}  # columns that files written before them lack


def _check_file(fs: pafs.FileSystem, path: str) -> tuple[str, frozenset]:
    """Why the file cannot be read ("" if it can), and its column names."""
    try:
        with fs.open_input_file(path) as f:
            schema = pq.read_schema(f)
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported, not fatal
        return f"unreadable ({type(e).__name__}: {e})", frozenset()
    version = (schema.metadata or {}).get(b"phasemap_schema_version", b"?").decode()
    if version not in {str(v) for v in READABLE_VERSIONS}:
        return (f"unknown schema version {version!r} (this phasemap reads "
                f"{', '.join(map(str, READABLE_VERSIONS))})", frozenset())
    return "", frozenset(schema.names)


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


def _upgrade(table: pa.Table, missing: frozenset = frozenset()) -> pa.Table:
    """Rows of older files as this version reads them: the columns their files lack (`missing`)
    filled with the values runs of the time used, and pre-v3 sorted power-law fits moved to
    `_sorted`. A column the file has is never filled: a null there is the writer's."""
    for column, value in V1_DEFAULTS.items():
        if column in missing and column in table.column_names:
            i = table.column_names.index(column)
            table = table.set_column(i, column, pc.fill_null(table[column], pa.scalar(value, table.schema.field(column).type)))
    if "n_layers" in missing and "n_layers" in table.column_names and "depth" in table.column_names:
        i = table.column_names.index("n_layers")  # before version 3 every network was an MLP: depth + 1
        filled = pc.add(pc.cast(table["depth"], pa.int32()), pa.scalar(1, pa.int32()))
        table = table.set_column(i, "n_layers", pc.coalesce(table["n_layers"], filled))
    if "schema_version" not in table.column_names:
        return table
    old = pc.less(table["schema_version"], 3)
    if not pc.any(old).as_py():
        return table
    for paired, sorted_ in SORTED_BEFORE_V3.items():
        if paired not in table.column_names:
            continue
        if sorted_ in table.column_names:
            i = table.column_names.index(sorted_)
            table = table.set_column(i, sorted_, pc.if_else(old, table[paired], table[sorted_]))
        i = table.column_names.index(paired)
        table = table.set_column(i, paired, pc.if_else(old, pa.scalar(None, table[paired].type), table[paired]))
    return table


def _read_columns(cols: list[str]) -> list[str]:
    """The columns to read for `cols`: with the schema version and the other half of any
    power-law column, which `_upgrade` needs for older files."""
    partner = {**SORTED_BEFORE_V3, **{v: k for k, v in SORTED_BEFORE_V3.items()}, "n_layers": "depth"}
    return list(dict.fromkeys(cols + ["schema_version"] + [partner[c] for c in cols if c in partner]))


RUN_KEYS = ["sweep_id", "run_id", "config_hash"]


def losing_runs(table: pa.Table, runs: dict[tuple[str, str], tuple[int, float]]) -> pd.DataFrame:
    """The (sweep_id, run_id, config_hash) of `table` whose config another run of the same sweep
    holds by the rule in the module docstring: the rows readers leave out. The one place the
    rule lives; `load` and `sql` both apply it."""
    keys = table.select(RUN_KEYS).group_by(RUN_KEYS).aggregate([]).to_pandas()  # distinct, in Arrow
    if not keys.duplicated(["sweep_id", "config_hash"]).any():
        return keys.iloc[:0]
    rank = [runs.get((s, r), (0, 0.0)) for s, r in zip(keys["sweep_id"], keys["run_id"])]
    keys = keys.assign(complete=[c for c, _ in rank], time=[t for _, t in rank])
    keys = keys.sort_values(["complete", "time", "run_id"], ascending=False)
    return keys[keys.duplicated(["sweep_id", "config_hash"])][RUN_KEYS]


def _roots(root: str | Sequence[str]) -> list[str]:
    """One root or several, as a list; several must be distinct."""
    roots = [root] if isinstance(root, (str, os.PathLike)) else list(root)
    roots = [os.fspath(r) for r in roots]
    if not roots or len(set(roots)) < len(roots):
        raise DatasetError(f"`one or more distinct storage roots` must hold, but got {roots!r}")
    return roots


def _check_disjoint(scans: list[Scan]) -> None:
    """Several roots are read as the union of their records: a sweep id under two roots would
    make two different networks one (a network is its sweep, run and member)."""
    where: dict[str, list[str]] = {}
    for found in scans:
        for sweep in sorted({s for s, _ in found.runs}):
            where.setdefault(sweep, []).append(found.root)
    shared = {s: rs for s, rs in where.items() if len(rs) > 1}
    if shared:
        named = "; ".join(f"sweep {s!r} under {' and '.join(rs)}" for s, rs in shared.items())
        raise DatasetError(f"`each sweep id under one root only` must hold to read several roots together, but got "
                           f"{named} (compare sweeps of different names, or read one root)")


def load(
    root: str | Sequence[str],
    filters: dict[str, Any] | None = None,
    columns: Iterable[str] | None = None,
    strict: bool = False,
) -> pd.DataFrame:
    """Records under `root` as a DataFrame, reading only the columns and partitions needed.

    `root`: a storage root, or several (a list): the union of their records, each sweep id
    under one of them only. `filters`: {column: value or list}, e.g. {"sweep_id": "quick",
    "layer": [1, 2]}. One network per config and sweep (see the module docstring).
    """
    roots = _roots(root)
    if len(roots) > 1:
        sweep = filters.get("sweep_id") if filters and isinstance(filters.get("sweep_id"), str) else None
        _check_disjoint([scan(r, strict, sweep_id=sweep) for r in roots])  # footers only: cheap
        columns = list(columns) if columns is not None else None
        return pd.concat([load(r, filters, columns, strict) for r in roots], ignore_index=True)
    root = roots[0]
    sweep = filters.get("sweep_id") if filters and isinstance(filters.get("sweep_id"), str) else None
    found = scan(root, strict, sweep_id=sweep)
    cols = list(columns) if columns is not None else SCHEMA.names
    if not found.files:
        return SCHEMA.empty_table().select(cols).to_pandas()
    filters = dict(filters or {})
    upgraded = set(V1_DEFAULTS) | set(SORTED_BEFORE_V3) | set(SORTED_BEFORE_V3.values()) | {"n_layers"}
    late = {c: filters.pop(c) for c in list(filters) if c in upgraded}  # upgraded first, then filtered
    needed = _read_columns(cols + RUN_KEYS + list(late))
    table = pa.concat_tables([_upgrade(found.dataset(files).to_table(columns=needed, filter=_filter(filters)), missing)
                              for missing, files in found.groups().items()])
    if late:
        table = table.filter(_filter(late))
    return one_per_config(table, found.runs)[cols]


def one_per_config(table: pa.Table, runs: dict[tuple[str, str], tuple[int, float]]) -> pd.DataFrame:
    """`table` as a DataFrame without the rows `losing_runs` leaves out."""
    df = table.to_pandas()
    lost = losing_runs(table, runs)
    if len(lost):
        drop = pd.MultiIndex.from_frame(df[RUN_KEYS]).isin(pd.MultiIndex.from_frame(lost))
        log.info("%d rows of configs also found in a later or complete run left out", int(drop.sum()))
        df = df[~drop].reset_index(drop=True)
    return df


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    return f"'{value}'" if isinstance(value, str) else repr(value)


def _upgrade_sql(missing: frozenset) -> str:
    """`_upgrade` as the column replacements of a DuckDB SELECT over files lacking `missing`."""
    filled = [f"coalesce(a.{c}, {_literal(v)}) AS {c}" for c, v in V1_DEFAULTS.items() if c in missing]
    if "n_layers" in missing:
        filled += ["coalesce(a.n_layers, a.depth + 1) AS n_layers"]
    filled += [f"CASE WHEN a.schema_version < 3 THEN NULL ELSE a.{p} END AS {p}" for p in SORTED_BEFORE_V3]
    filled += [f"CASE WHEN a.schema_version < 3 THEN a.{p} ELSE a.{s} END AS {s}" for p, s in SORTED_BEFORE_V3.items()]
    return ", ".join(filled)


def sql(root: str | Sequence[str], query: str, strict: bool = False) -> pd.DataFrame:
    """Run DuckDB SQL over the view `records` (every record under `root`, plus hive columns;
    several roots, a list: the union of their records, each sweep id under one of them only).

    The view holds one network per config and sweep, and older files' missing columns filled
    in (see the module docstring); `last_records` is its whole-layer rows (no per-head rows) at
    each network's last step, as `aggregate.last_records` (a `Recorder` run has no `steps`: use
    this, not `step = steps`); `all_records` is every row as stored.
    """
    scans = [scan(r, strict) for r in _roots(root)]
    _check_disjoint(scans)
    con = connect(scans)
    try:
        return con.execute(query).df()
    finally:
        con.close()


def connect(scans: list[Scan], lost: pd.DataFrame | None = None):
    """A DuckDB connection with the views `records`, `last_records` and `all_records` (see `sql`)
    over the scanned files; `lost`: the rows `losing_runs` leaves out, where the caller knows them."""
    import duckdb

    con = duckdb.connect()
    stored, parts, losing = [], [], []
    for r, found in enumerate(scans):
        if not found.files:
            continue
        dataset = found.dataset()
        con.register(f"_all{r}", dataset)
        stored.append(f"SELECT * FROM _all{r}")
        if lost is None:
            losing.append(losing_runs(dataset.to_table(columns=RUN_KEYS), found.runs))
        for i, (missing, files) in enumerate(found.groups().items()):
            con.register(f"_files{r}_{i}", found.dataset(files))
            parts.append((f"_files{r}_{i}", missing))
    if not stored:  # no records anywhere: empty views of the right columns
        con.register("_all0", DATASET_SCHEMA.empty_table())
        stored.append("SELECT * FROM _all0")
        parts.append(("_all0", frozenset()))
    con.execute("CREATE TEMP VIEW all_records AS " + " UNION ALL ".join(stored))
    if lost is None:
        lost = pd.concat(losing, ignore_index=True) if losing else DATASET_SCHEMA.empty_table().select(RUN_KEYS).to_pandas()
    con.register("_lost", lost)
    con.execute("CREATE TEMP VIEW records AS " + " UNION ALL ".join(
        f"SELECT a.* REPLACE ({_upgrade_sql(missing)}) FROM {name} a "
        f"ANTI JOIN _lost l ON a.sweep_id = l.sweep_id AND a.run_id = l.run_id AND a.config_hash = l.config_hash"
        for name, missing in parts))
    # each network's whole-layer rows at its last step (final probe, or where it diverged):
    # `aggregate.last_records` in SQL, for queries of "the end of training"
    con.execute("CREATE TEMP VIEW last_records AS FROM records WHERE head IS NULL "
                "QUALIFY step = max(step) OVER (PARTITION BY sweep_id, run_id, member)")
    return con


class LiveRecords:
    """The records under a root kept in memory and brought up to date by `refresh`, which reads
    only the files new or changed (mtime, size) since the last one: what `phasemap serve` reads.

    `columns` are kept (default: `aggregate.FIGURE_COLUMNS`, what every figure reads); `frame`
    gives one sweep's records as `load` would (one network per config, older files upgraded),
    rebuilt only when that sweep's files changed; `connect` a DuckDB connection with the views
    of `sql` over every file of the last refresh.
    """

    def __init__(self, root: str, columns: Iterable[str] | None = None):
        from .aggregate import FIGURE_COLUMNS

        self.root = root
        self.columns = list(columns if columns is not None else FIGURE_COLUMNS)
        self.found = Scan(root, *filesystem(root))
        self._footers: dict = {}
        self._tables: dict[str, tuple[tuple[int, int], pa.Table]] = {}  # file -> (stamp, its rows)
        self._frames: dict[str, tuple[tuple, pd.DataFrame]] = {}  # sweep -> (its files' stamps, records)

    def refresh(self) -> list[str]:
        """List the root again and read what is new or changed; returns the files read."""
        found = scan(self.root, footers=self._footers)
        needed = _read_columns(self.columns + RUN_KEYS)
        tables, read = {}, []
        for missing, files in found.groups().items():
            for path in files:
                stamp = found.stamps[path]
                if path in self._tables and self._tables[path][0] == stamp:
                    tables[path] = self._tables[path]
                    continue
                try:
                    table = _upgrade(found.dataset([path]).to_table(columns=needed), missing)
                except (OSError, pa.ArrowInvalid) as e:  # removed or replaced since the listing (a compaction)
                    log.info("%s not read this time: %s", path, e)
                    continue
                tables[path] = (stamp, table)
                read.append(path)
        self._footers = {k: v for k, v in self._footers.items() if k[0] in found.stamps}
        self._tables, self.found = tables, found
        return read

    def sweeps(self) -> list[str]:
        return sorted({s for s, _ in self.found.runs})

    def _of(self, sweep: str) -> list[str]:
        return sorted(p for p in self._tables if f"/sweep={sweep}/" in p[len(self.found.base):] + "/")

    def stamp(self, sweep: str) -> tuple:
        """What changes whenever a sweep's records do: its files' paths, mtimes and sizes."""
        return tuple((p, self._tables[p][0]) for p in self._of(sweep))

    def frame(self, sweep: str) -> pd.DataFrame:
        """One sweep's records, as `load(root, filters={"sweep_id": sweep}, columns=self.columns)`."""
        stamp = self.stamp(sweep)
        if sweep in self._frames and self._frames[sweep][0] == stamp:
            return self._frames[sweep][1]
        tables = [self._tables[p][1] for p in self._of(sweep)]
        if tables:
            df = one_per_config(pa.concat_tables(tables), self.found.runs)[self.columns]
        else:
            df = SCHEMA.empty_table().select(self.columns).to_pandas()
        self._frames = {**{k: v for k, v in self._frames.items() if k in self.sweeps()}, sweep: (stamp, df)}
        return df

    def connect(self):
        """`connect` over the files of the last refresh (a query reads them from storage)."""
        keys = [t.select(RUN_KEYS) for _, t in self._tables.values()]
        lost = losing_runs(pa.concat_tables(keys), self.found.runs) if keys else None
        return connect([self.found], lost)
