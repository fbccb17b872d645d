"""The records: one Arrow schema, a writer and a reader.

One row per (run, member, step, layer). Layout under a storage root (a local folder or a
pyarrow filesystem URI such as s3://bucket/prefix):

    sweep=<sweep_id>/run=<run_id>/part-<step:09d>.parquet   rows produced at that step (while running)
    sweep=<sweep_id>/run=<run_id>/records.parquet           all rows of a finished run (compacted)
    sweep=<sweep_id>/run=<run_id>/_COMPLETE.json            written last: the run is done
    sweep=<sweep_id>/run=<run_id>/_LEASE-<n>.json           who trains the run (see leases.py)

File names depend only on the run and the step, and every file is written under a temporary
name starting with '_' and then renamed, so a reader never sees half a file and a rerun
overwrites instead of duplicating. Names starting with '_' or '.' are skipped by readers.

Compaction: when a run finishes, its parts are written as one `records.parquet` (atomically,
by rename), then the parts are deleted. A folder holding `records.parquet` is read from that
file alone, so a reader sees the parts or the compacted file, never both and never neither.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from urllib.parse import parse_qsl, unquote, urlsplit

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .columns import METRIC_COLUMNS

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)  # older files are read with V1_DEFAULTS filled in, and SORTED_BEFORE_V3
COMPLETE = "_COMPLETE.json"
ATTEMPT = "_ATTEMPT.json"  # who trains the run now and from which step (pid, host, from_step)
COMPACTED = "records.parquet"
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
# Every field of a member's run config is a column: (config path, column, type). `[i]` picks
# an item of a pair; the member fields (lr, momentum, weight_decay, seed) hold the member's value.
CONFIG_COLUMNS = [
    ("task.name", "task", pa.string()),
    ("task.input_dim", "input_dim", pa.int32()),
    ("task.teacher_seed", "teacher_seed", pa.int64()),
    ("task.teacher_width", "teacher_width", pa.int32()),
    ("task.output_dim", "task_output_dim", pa.int32()),  # fc2's teacher; `output_dim` is the network's
    ("task.phi", "phi", pa.float64()),
    ("task.n_classes", "n_classes", pa.int32()),
    ("task.noise", "noise", pa.float64()),
    ("task.path", "data_path", pa.string()),
    ("task.held_out", "held_out", pa.int32()),
    ("task.augment", "augment", pa.bool_()),
    ("task.modulus", "modulus", pa.int32()),
    ("task.operation", "operation", pa.string()),
    ("task.train_fraction", "train_fraction", pa.float64()),
    ("task.block", "block", pa.int32()),
    ("task.vocab_size", "vocab_size", pa.int32()),
    ("task.data", "ssl_data", pa.string()),  # ssl: the image task its images come from
    ("task.projection_dim", "projection_dim", pa.int32()),
    ("task.temperature", "temperature", pa.float64()),
    ("model.family", "family", pa.string()),
    ("model.depth", "depth", pa.int32()),
    ("model.width", "width", pa.int32()),
    ("model.activation", "activation", pa.string()),
    ("model.bias", "bias", pa.bool_()),
    ("model.norm", "norm", pa.string()),
    ("model.heads", "heads", pa.int32()),
    ("model.tied", "tied", pa.bool_()),
    ("model.factory", "factory", pa.string()),
    ("model.kwargs", "model_kwargs", pa.string()),  # JSON, keys sorted
    ("optimizer.name", "optimizer", pa.string()),
    ("optimizer.lr", "lr", pa.float64()),
    ("optimizer.momentum", "momentum", pa.float64()),
    ("optimizer.weight_decay", "weight_decay", pa.float64()),
    ("optimizer.betas[0]", "beta1", pa.float64()),
    ("optimizer.betas[1]", "beta2", pa.float64()),
    ("optimizer.eps", "eps", pa.float64()),
    ("train.steps", "steps", pa.int64()),
    ("train.batch_size", "batch_size", pa.int32()),
    ("train.seed", "seed", pa.int64()),
    ("train.data_seed", "data_seed", pa.int64()),
    ("train.device", "device", pa.string()),
    ("train.check_every", "check_every", pa.int64()),
    ("train.checkpoint_every", "checkpoint_every", pa.int64()),
    ("train.stop.stationary", "stop_stationary", pa.float64()),  # 0: train.stop off
    ("train.stop.patience", "stop_patience", pa.int32()),
    ("train.stop.loss_tolerance", "stop_loss_tolerance", pa.float64()),
    ("train.stop.min_gap", "stop_min_gap", pa.float64()),
    ("probe.n_samples", "n_samples", pa.int64()),
    ("probe.count", "probe_count", pa.int32()),
    ("probe.steps", "probe_steps", pa.string()),  # comma-separated; "" = the log-spaced schedule
    ("probe.covariance", "covariance", pa.string()),
    ("probe.pah_floor", "pah_floor", pa.float64()),
    ("probe.null_samples", "null_samples", pa.int32()),
    ("probe.max_samples", "max_samples", pa.int64()),
    ("probe.per_head", "per_head", pa.bool_()),
]
# Columns that older schema versions did not have, with the value every such run used (the defaults
# of the time: v1 sweeps could vary these fields but not record them).
V1_DEFAULTS = {
    "teacher_seed": 0, "teacher_width": 100, "task_output_dim": 100, "phi": 0.5, "n_classes": 10, "noise": 1.0,
    "bias": True, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "device": "auto", "check_every": 100,
    "checkpoint_every": 1000, "n_samples": 1000, "probe_count": 8, "probe_steps": "", "pah_floor": 1e-4,
    "null_samples": 0,  # v1 computed no null
    "layer_kind": "linear",  # before version 3 every measured layer was an MLP's linear layer
    "data_path": "", "held_out": 297, "augment": False, "family": "mlp", "norm": "batch", "factory": "",
    "model_kwargs": "{}", "max_samples": 32768, "modulus": 97, "operation": "add", "train_fraction": 0.5,
    "heads": 4, "tied": False, "block": 64, "vocab_size": 0, "per_head": False,  # before version 3 every network was an MLP on a synthetic task
    "stop_stationary": 0.0, "stop_patience": 2, "stop_loss_tolerance": 0.01, "stop_min_gap": 0.02,  # no train.stop yet
    "ssl_data": "digits", "projection_dim": 128, "temperature": 0.5,  # no ssl task yet: its defaults
}
# Before version 3, `pah_*` held the sorted-spectra fit: readers move it to the `_sorted` column
# and leave the paired one null (a sorted exponent must never be read as a paired one).
SORTED_BEFORE_V3 = {c: c.replace("_" + c.split("_")[2], "_" + c.split("_")[2] + "_sorted", 1)
                    for c in METRIC_COLUMNS if c.startswith("pah_") and "_sorted" not in c}
_CONFIG_FIELDS = [(c, t) for _, c, t in CONFIG_COLUMNS] + [("output_dim", pa.int32())]


def config_value(cfg, path: str):
    """The record value of a config path for a one-member run config (see CONFIG_COLUMNS)."""
    name, _, index = path.partition("[")
    node = cfg
    for key in name.split("."):
        node = getattr(node, key)
    if index:
        return node[int(index[:-1])]
    if path == "probe.steps":
        return ",".join(str(s) for s in node)
    if isinstance(node, dict):
        return json.dumps(node, sort_keys=True)
    if isinstance(node, tuple):  # a member field of a one-member config
        return node[0]
    return node


def config_columns(cfg) -> dict:
    """Every config column of a one-member run config. A factory's network is the user's:
    its `depth` and `width` are null unless `model.kwargs` sets them (never the MLP defaults
    the config holds; the config hash keeps hashing the config as it is)."""
    cols = {c: config_value(cfg, path) for path, c, _ in CONFIG_COLUMNS}
    if cfg.model.family == "factory":
        for c in ("depth", "width"):
            given = cfg.model.kwargs.get(c)
            cols[c] = given if isinstance(given, int) and not isinstance(given, bool) else None
    cols["output_dim"] = cfg.output_dim
    return cols


_ROW_FIELDS = [
    ("step", pa.int64()),
    ("layer", pa.int32()),  # 1-based position among the network's measured layers; the last is the output
    ("n_layers", pa.int32()),  # measured layers of the network: 1..n_layers-1 are hidden (MLP: depth + 1)
    ("layer_name", pa.string()),  # the layer's name in the model (fc1, features.0, block 2 attn.q, ...)
    ("layer_kind", pa.string()),  # linear | conv | attention.q | attention.k | attention.v | attention.out
    ("head", pa.int32()),  # per-head rows of attention q/k/v and head outputs (probe.per_head; kind attention.q.head ..., attention.head_out); else null
    ("dim_in", pa.int32()),
    ("dim_out", pa.int32()),
    ("status", pa.string()),  # ok | diverged | settled (train.stop: the last probe of a member that settled)
    ("train_loss", pa.float64()),
    ("probe_loss", pa.float64()),
    ("train_accuracy", pa.float64()),  # classification: on the first n_samples training samples; else NaN
    ("probe_accuracy", pa.float64()),  # classification: on the probe (held-out) samples; else NaN
]
_METRIC_FIELDS = [(c, pa.int32() if c.startswith("n_zero") or c.endswith("_n") else pa.float64()) for c in METRIC_COLUMNS]

SCHEMA = pa.schema(
    [pa.field(n, t) for n, t in _ID_FIELDS + _CONFIG_FIELDS + _ROW_FIELDS + _METRIC_FIELDS]
    + [pa.field("nan_reason", pa.string())],
    metadata={"phasemap_schema_version": str(SCHEMA_VERSION)},
)


_MOUNTS: dict[str, pafs.FileSystem] = {}


def mount(prefix: str, fs: pafs.FileSystem | None) -> None:
    """In this process, serve roots `prefix + path` through `fs` (None removes the mount).

    For embedding phasemap with a filesystem of your own, and for tests that inject storage
    faults (a wrapper that fails after N bytes).
    """
    if fs is None:
        _MOUNTS.pop(prefix, None)
    else:
        _MOUNTS[prefix] = fs


def filesystem(root: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and base path of a storage root (folder or URI)."""
    for prefix, fs in _MOUNTS.items():
        if root.startswith(prefix):
            return fs, root[len(prefix):].rstrip("/")
    if "://" in root:
        return _object_store(root)
    return pafs.LocalFileSystem(), os.path.abspath(root)


# Object-store clients, built once per bucket, URI options and AWS_* / GOOGLE_* environment:
# a client per call cost ~6 s against a dead endpoint (a region lookup, default retries).
_STORES: dict[tuple, pafs.FileSystem] = {}
S3_TIMEOUTS = {"connect_timeout": 5.0, "request_timeout": 30.0}  # seconds (Arrow applies the second on macOS/Windows)
S3_ATTEMPTS = 3  # tries of one request before its error is raised
_S3_OPTIONS = {"region": str, "scheme": str, "endpoint_override": str, "anonymous": bool,
               "force_virtual_addressing": bool, "allow_bucket_creation": bool, "allow_bucket_deletion": bool}


def _object_store(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem of an `s3://` or `gs://` root (timeouts, bounded retries; built once) or of
    another URI (pyarrow's `from_uri`), and the root's path in it."""
    parts = urlsplit(uri)
    if parts.scheme not in ("s3", "gs", "gcs") or (parts.scheme != "s3" and parts.query):
        return pafs.FileSystem.from_uri(uri)
    userinfo, _, bucket = parts.netloc.rpartition("@")  # s3://KEY:SECRET@bucket/... as from_uri reads it
    path = (bucket + parts.path).rstrip("/")
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(("AWS_", "GOOGLE_"))))
    key = (parts.scheme, parts.netloc, parts.query, env)
    if key not in _STORES:
        if parts.scheme == "s3":
            _STORES[key] = _s3(bucket, dict(parse_qsl(parts.query)), userinfo)
        else:
            _STORES[key] = pafs.GcsFileSystem(retry_limit_seconds=15)
    return _STORES[key], path


def _s3(bucket: str, query: dict[str, str], userinfo: str = "") -> pafs.S3FileSystem:
    unknown = sorted(set(query) - set(_S3_OPTIONS))
    if unknown:
        raise ValueError(f"`s3:// options in {sorted(_S3_OPTIONS)}` must hold, but got {unknown}")
    options = {k: (v.lower() in ("1", "true", "yes") if _S3_OPTIONS[k] is bool else v) for k, v in query.items()}
    if userinfo:
        key, _, secret = userinfo.partition(":")
        options.update(access_key=unquote(key), secret_key=unquote(secret))
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint and "endpoint_override" not in options:  # as from_uri reads it: scheme and host:port
        url = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        options.setdefault("scheme", url.scheme)
        options["endpoint_override"] = url.netloc + url.path.rstrip("/")
    region = options.pop("region", None) or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    if not region and "endpoint_override" not in options:
        try:  # a bucket on AWS itself: ask where it lives, as pyarrow's from_uri does
            region = pafs.resolve_s3_region(bucket)
        except OSError:
            region = None
    return pafs.S3FileSystem(region=region or "us-east-1", **S3_TIMEOUTS, **options,
                             retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=S3_ATTEMPTS))


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
    _write_atomic(*run_dir(root, sweep_id, run_id), name, data)


def write_sweep_file(root: str, sweep_id: str, name: str, data: bytes) -> None:
    """Atomically write one file of a sweep's folder (beside its runs): a search's state."""
    fs, base = filesystem(root)
    _write_atomic(fs, f"{base}/sweep={sweep_id}", name, data)


def read_sweep_file(root: str, sweep_id: str, name: str) -> bytes | None:
    """A file of a sweep's folder, or None if it is not there."""
    fs, base = filesystem(root)
    return _read(fs, f"{base}/sweep={sweep_id}/{name}")


def _write_atomic(fs: pafs.FileSystem, folder: str, name: str, data: bytes) -> None:
    fs.create_dir(folder, recursive=True)
    tmp = f"{folder}/_tmp-{uuid.uuid4().hex}"
    try:
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, f"{folder}/{name}")
    except BaseException:
        _remove_quietly(fs, tmp)  # a full disk or a lost connection leaves no temp file behind
        raise


def _remove_quietly(fs: pafs.FileSystem, path: str) -> None:
    try:
        fs.delete_file(path)
    except (FileNotFoundError, NotADirectoryError):  # nothing there (or no folder to hold it)
        pass
    except OSError as e:
        log.warning("could not remove %s: %s", path, e)


def read_file(root: str, sweep_id: str, run_id: str, name: str) -> bytes | None:
    """A file of a run's folder, or None if it is not there."""
    fs, folder = run_dir(root, sweep_id, run_id)
    return _read(fs, f"{folder}/{name}")


def _read(fs: pafs.FileSystem, path: str) -> bytes | None:
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


def sweep_files(root: str, sweep_id: str) -> list[pafs.FileInfo]:
    """Every file under a sweep's folder: one listing, for the readers of markers, leases and
    temp files below (on S3 a recursive listing is one paged call, not one per run)."""
    fs, base = filesystem(root)
    infos = fs.get_file_info(pafs.FileSelector(f"{base}/sweep={sweep_id}", recursive=True, allow_not_found=True))
    return [i for i in infos if i.type == pafs.FileType.File]


def run_of(info: pafs.FileInfo) -> str | None:
    """The run id of a file directly in a run folder, else None."""
    folder = info.path.rsplit("/", 2)[-2]
    return folder[len("run="):] if folder.startswith("run=") else None


def complete_members(root: str, sweep_id: str, files: list[pafs.FileInfo] | None = None) -> dict[str, str]:
    """{config_hash: run_id} of every member of a complete run in the sweep's folder.

    Read from the completion markers alone; markers written before they listed their members
    give them through the pack config they hold. Where a config completed in several runs
    (roots written by older versions), the latest marker's run is named, as readers choose it.
    """
    from ..config import parse_config  # records stay importable without the config machinery

    fs, _ = filesystem(root)
    files = sweep_files(root, sweep_id) if files is None else files
    markers = sorted((i for i in files if i.base_name == COMPLETE and run_of(i)),
                     key=lambda i: (i.mtime.timestamp() if i.mtime else 0.0, i.path))
    found: dict[str, str] = {}
    for info in markers:
        run_id = run_of(info)
        with fs.open_input_stream(info.path) as f:
            summary = json.loads(f.read())
        hashes = summary.get("members")
        if not isinstance(hashes, list):
            cfg = parse_config(summary["config"], check_environment=False)  # perhaps trained elsewhere
            hashes = [cfg.member_config(m).config_hash() for m in cfg.members]
        found.update({h: run_id for h in hashes})
    return found


def temp_files(root: str, sweep_id: str, files: list[pafs.FileInfo] | None = None) -> dict[str, list[str]]:
    """{run_id: paths} of the temp files (`_tmp-*`) in a sweep's run folders.

    A write interrupted by a crash, or by storage that failed between upload and rename (an
    object store cut off mid-move), leaves one; the driver removes those of runs nobody holds.
    """
    found: dict[str, list[str]] = {}
    for info in sweep_files(root, sweep_id) if files is None else files:
        if info.base_name.startswith("_tmp-") and run_of(info):
            found.setdefault(run_of(info), []).append(info.path)
    return found


def remove_files(root: str, paths: list[str]) -> None:
    fs, _ = filesystem(root)
    for path in paths:
        _remove_quietly(fs, path)


def check_writable(root: str) -> None:
    """Raise the OSError that writing under `root` meets (full disk, permissions, no endpoint)."""
    fs, base = filesystem(root)
    probe = f"{base}/_phasemap-check-{uuid.uuid4().hex}"
    try:
        fs.create_dir(base, recursive=True)
        with fs.open_output_stream(probe) as f:
            f.write(b"phasemap checks that it can write here")
    finally:
        _remove_quietly(fs, probe)


def clear_run(root: str, sweep_id: str, run_id: str, keep_leases: bool = True) -> None:
    """Remove a run's files so a fresh attempt starts clean (no stale parts); its lease stays."""
    fs, folder = run_dir(root, sweep_id, run_id)
    if fs.get_file_info(folder).type != pafs.FileType.Directory:
        return
    if not keep_leases:
        fs.delete_dir(folder)
        return
    for info in fs.get_file_info(pafs.FileSelector(folder, recursive=True)):
        if info.type == pafs.FileType.File and not info.base_name.startswith("_LEASE-"):
            fs.delete_file(info.path)


def _parts(fs: pafs.FileSystem, folder: str) -> list[str]:
    infos = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    return sorted(i.path for i in infos if i.base_name.startswith("part-") and i.base_name.endswith(".parquet"))


def compact(root: str, sweep_id: str, run_id: str, table: pa.Table | None = None) -> None:
    """One `records.parquet` for a finished run's parts (atomic rename), then the parts go.

    `table`: the run's rows when the caller holds them (the union of its parts), so the parts
    need not be read back. Readers take `records.parquet` alone where it exists, so at no moment
    do they see both or neither; parts left by a crash between the two steps are ignored.
    """
    fs, folder = run_dir(root, sweep_id, run_id)
    parts = _parts(fs, folder)
    if not parts:
        return
    if fs.get_file_info(f"{folder}/{COMPACTED}").type != pafs.FileType.File:
        if table is None:
            table = ds.dataset(parts, filesystem=fs, format="parquet", schema=SCHEMA).to_table()
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        write_file(root, sweep_id, run_id, COMPACTED, sink.getvalue().to_pybytes())
    for path in parts:
        fs.delete_file(path)


def read_run(root: str, sweep_id: str, run_id: str, before_step: int | None = None) -> pd.DataFrame:
    """The records of one run (only its parts written at steps before `before_step`, if given)."""
    fs, folder = run_dir(root, sweep_id, run_id)
    if fs.get_file_info(f"{folder}/{COMPACTED}").type == pafs.FileType.File:  # finished: one file
        table = ds.dataset([f"{folder}/{COMPACTED}"], filesystem=fs, format="parquet", schema=SCHEMA).to_table()
        table = table.to_pandas()
        return table if before_step is None else table[table["step"] < before_step].reset_index(drop=True)
    parts = _parts(fs, folder)
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
