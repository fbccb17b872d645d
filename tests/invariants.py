"""One invariant checker for any records root (a folder or s3://...): every combination of
family x task x search x storage must pass it (tests/test_matrix.py runs it over the matrix).

    problems = check_root(root, sweep="quick", expected={cfg.config_hash(): cfg, ...})
    assert_root_ok(root)

It reads the root twice: the raw files (pyarrow, file by file, nothing filled in) and phasemap's
own reader (`phasemap.analysis.query.load`), and checks
- schema: every file's footer and every row carry the current `SCHEMA_VERSION`, and no file is
  skipped as unreadable;
- config columns: each member's config columns equal its own config (`expected`: a one-member
  `RunConfig`, or a mapping column -> value where None means the column must be null), in the
  raw files and as read; without `expected`, each config_hash has one set of config values and
  the reader returns exactly what the files hold (a reader filling in defaults is caught);
- layers: per (run, member, step) the whole-layer rows (null `head`) are layers 1..n_layers once
  each with one n_layers (so layers 1..n_layers-1 are the hidden ones, for every family), the
  last one as wide as the network's output (`output_dim`); per-head rows sit on a hidden layer;
- NaN: a NaN alignment has a `nan_reason`; a null (`<relation>_null`) is NaN only where its
  relation is or `null_samples` is 0;
- steps: each member's probe steps strictly increase, step 0 first;
- one network per config: in the read view a config_hash is one run per sweep, and in every
  run a config_hash is one member and a member one config_hash;
- accuracies in [0, 1] or NaN.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from phasemap.analysis.query import load, scan
from phasemap.config import RunConfig
from phasemap.records import CONFIG_COLUMNS, SCHEMA_VERSION, config_columns
RELATIONS = ("rga", "rwa", "gwa")  # the three alignments of each side (phasemap.measure.RELATIONS)

CONFIG_NAMES = [c for _, c, _ in CONFIG_COLUMNS] + ["output_dim"]
ALIGNMENTS = [f"{r}_{s}" for s in "ab" for r in RELATIONS]
ROW_KEYS = ["sweep_id", "run_id", "member", "step", "layer", "head"]
MAX_SHOWN = 3  # examples quoted per problem


def _is_null(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def _same(a: Any, b: Any) -> bool:
    if _is_null(a) or _is_null(b):
        return _is_null(a) and _is_null(b)
    if isinstance(a, (bool, np.bool_)) or isinstance(b, (bool, np.bool_)):
        return isinstance(a, (bool, np.bool_)) and isinstance(b, (bool, np.bool_)) and bool(a) == bool(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
    return a == b


def _py(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def _expected_columns(want: RunConfig | dict) -> dict:
    if isinstance(want, RunConfig):
        if len(want.members) != 1:
            raise ValueError(f"`expected configs have one member` must hold, but got {len(want.members)}")
        cols = config_columns(want)
        if cols["output_dim"] == 0:  # a text token file: its vocabulary is known once read
            del cols["output_dim"]
        return cols
    return dict(want)


def read_raw(root: str, sweep: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Every row of every record file under `root` as stored (no reader in between), with the
    file it came from (`_file`), and the problems met reading them."""
    found = scan(root, sweep_id=sweep)
    problems = [f"schema: {path} skipped by the reader: {why}" for path, why in found.skipped.items()]
    frames = []
    for path in found.files:
        with found.fs.open_input_file(path) as f:
            table = pq.read_table(f)
        version = (table.schema.metadata or {}).get(b"phasemap_schema_version", b"?").decode()
        if version != str(SCHEMA_VERSION):
            problems.append(f"schema: {path} has schema version {version!r} in its footer, not {SCHEMA_VERSION}")
        frames.append(table.to_pandas().assign(_file=path))
    raw = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return raw, problems


def check_root(root: str, sweep: str | None = None,
               expected: dict[str, RunConfig | dict] | None = None) -> list[str]:
    """The invariants above on the records under `root` (one sweep's if `sweep`): a list of
    problems, empty when every invariant holds. `expected`: config_hash -> the member's own
    config; every hash must be present, and no other."""
    raw, problems = read_raw(root, sweep)
    view = load(root, filters={"sweep_id": sweep} if sweep else None)
    if raw.empty:
        return problems + [f"records: no rows under {root}" + (f" for sweep {sweep!r}" if sweep else "")]
    problems += _check_schema(raw)
    problems += _check_config(raw, view, expected)
    for name, frame in (("raw", raw), ("read", view)):
        problems += [f"{p} ({name})" for p in _check_rows(frame)]
    problems += _check_one_network(raw, view)
    return problems


def assert_root_ok(root: str, sweep: str | None = None, expected: dict[str, RunConfig | dict] | None = None) -> None:
    problems = check_root(root, sweep, expected)
    assert not problems, f"{len(problems)} invariant(s) broken under {root}:\n" + "\n".join(f"  - {p}" for p in problems)


def _examples(frame: pd.DataFrame, cols: list[str]) -> str:
    cols = [c for c in cols if c in frame.columns]
    return "; ".join(", ".join(f"{c}={_py(v)!r}" for c, v in row.items()) for _, row in
                     frame[cols].head(MAX_SHOWN).iterrows())


def _check_schema(raw: pd.DataFrame) -> list[str]:
    bad = raw[raw["schema_version"] != SCHEMA_VERSION]
    if len(bad):
        return [f"schema: {len(bad)} row(s) with schema_version != {SCHEMA_VERSION}: "
                + _examples(bad, ["run_id", "member", "step", "schema_version"])]
    return []


def _check_config(raw: pd.DataFrame, view: pd.DataFrame, expected: dict | None) -> list[str]:
    problems = []
    keys = ["sweep_id", "run_id", "config_hash"]
    # each config_hash holds one set of config values, and the reader gives back what is stored
    for (sweep, run, h), rows in raw.groupby(keys, dropna=False):
        for col in CONFIG_NAMES:
            values = rows[col].tolist()
            if any(not _same(v, values[0]) for v in values):
                problems.append(f"config: column {col!r} of config {h} in run {run} takes several values "
                                f"{sorted({repr(_py(v)) for v in values})}")
        read = view[(view["sweep_id"] == sweep) & (view["run_id"] == run) & (view["config_hash"] == h)]
        if len(read) == 0:
            continue  # left out by the one-network rule; checked below
        for col in CONFIG_NAMES:
            stored, got = rows[col].iloc[0], read[col].tolist()
            if any(not _same(v, stored) for v in got):
                problems.append(f"config: column {col!r} of config {h} in run {run} is stored as {_py(stored)!r} "
                                f"but read as {sorted({repr(_py(v)) for v in got})} (a reader filled it in)")
    if expected is None:
        return problems
    stored = set(raw["config_hash"])
    for h in sorted(stored - set(expected)):
        problems.append(f"config: config_hash {h} is stored but not expected")
    for h in sorted(set(expected) - stored):
        problems.append(f"config: expected config_hash {h} is not stored")
    for h, want in expected.items():
        cols = _expected_columns(want)
        for name, frame in (("stored", raw), ("read", view)):
            rows = frame[frame["config_hash"] == h]
            if len(rows) == 0:
                continue
            for col, value in cols.items():
                got = rows[col].tolist()
                if any(not _same(v, value) for v in got):
                    problems.append(f"config: column {col!r} of config {h} is {name} as "
                                    f"{sorted({repr(_py(v)) for v in got})}, but the member's config says {value!r}")
    return problems


def _check_rows(df: pd.DataFrame) -> list[str]:
    problems = []
    whole = df[df["head"].isna()]
    heads = df[df["head"].notna()]
    # hidden layers: the whole-layer rows of each (run, member, step) are 1..n_layers, once each
    for (sweep, run, member, step), rows in whole.groupby(["sweep_id", "run_id", "member", "step"]):
        n = rows["n_layers"].unique().tolist()
        if len(n) != 1 or _is_null(n[0]):
            problems.append(f"layers: run {run} member {member} step {step} has n_layers {n}, not one value")
            continue
        layers = sorted(int(v) for v in rows["layer"])
        if layers != list(range(1, int(n[0]) + 1)):
            problems.append(f"layers: run {run} member {member} step {step}: whole layers {layers}, "
                            f"expected 1..{int(n[0])} once each")
    # the last layer is the output: its width is the network's output_dim
    out = whole[(whole["layer"] == whole["n_layers"]) & whole["output_dim"].notna()]
    bad = out[out["dim_out"] != out["output_dim"]]
    if len(bad):
        problems.append(f"layers: {len(bad)} output-layer row(s) (layer = n_layers) whose dim_out is not output_dim: "
                        + _examples(bad, ["run_id", "member", "step", "layer_name", "dim_out", "output_dim"]))
    if len(heads):
        off = heads[(heads["layer"] < 1) | (heads["layer"] >= heads["n_layers"])]
        if len(off):
            problems.append(f"layers: {len(off)} per-head row(s) not on a hidden layer: "
                            + _examples(off, ["run_id", "member", "step", "layer", "n_layers", "head"]))
    n_per_member = whole.groupby(["sweep_id", "run_id", "member"])["n_layers"].nunique()
    if (n_per_member > 1).any():
        problems.append(f"layers: n_layers changes between steps for {int((n_per_member > 1).sum())} member(s)")
    # NaN: an undefined alignment says why; a null is undefined only with its relation, or when off
    reason = df["nan_reason"].fillna("").astype(str).str.len() > 0
    for col in ALIGNMENTS:
        bad = df[df[col].isna() & ~reason]
        if len(bad):
            problems.append(f"nan: {len(bad)} row(s) with {col} NaN and no nan_reason: "
                            + _examples(bad, ["run_id", "member", "step", "layer_name"]))
        for suffix in ("_null", "_null_se"):
            null = f"{col}{suffix}"
            on = df["null_samples"].fillna(0) > 0
            bad = df[df[null].isna() & df[col].notna() & on]
            if len(bad):
                problems.append(f"nan: {len(bad)} row(s) with {null} NaN though {col} is defined and "
                                f"null_samples > 0: " + _examples(bad, ["run_id", "member", "step", "layer_name"]))
    # steps: strictly increasing per member (as stored: in row order, files in name order), step 0
    # first, none past the config's train.steps
    for (sweep, run, member), rows in whole.groupby(["sweep_id", "run_id", "member"], sort=False):
        if "_file" in rows.columns:
            rows = rows.sort_values("_file", kind="stable")
        steps = rows["step"].tolist()
        distinct = [s for i, s in enumerate(steps) if i == 0 or s != steps[i - 1]]
        if not distinct or distinct[0] != 0:
            problems.append(f"steps: run {run} member {member} does not start at step 0 (steps {distinct[:5]})")
        if any(b <= a for a, b in zip(distinct, distinct[1:])):
            problems.append(f"steps: run {run} member {member}: steps do not increase: {distinct}")
        last = rows["steps"].dropna()
        if len(last) and max(steps) > int(last.iloc[0]):
            problems.append(f"steps: run {run} member {member} has step {max(steps)} > train.steps {int(last.iloc[0])}")
    dup = df[df.duplicated(ROW_KEYS, keep=False)]
    if len(dup):
        problems.append(f"steps: {len(dup)} duplicated (run, member, step, layer, head) row(s): "
                        + _examples(dup, ROW_KEYS))
    # accuracies
    for col in ("train_accuracy", "probe_accuracy"):
        v = pd.to_numeric(df[col], errors="coerce")
        bad = df[v.notna() & ((v < 0) | (v > 1))]
        if len(bad):
            problems.append(f"accuracy: {len(bad)} row(s) with {col} outside [0, 1]: "
                            + _examples(bad, ["run_id", "member", "step", col]))
    return problems


def _check_one_network(raw: pd.DataFrame, view: pd.DataFrame) -> list[str]:
    problems = []
    runs = view.groupby(["sweep_id", "config_hash"])["run_id"].nunique()
    for (sweep, h), n in runs[runs > 1].items():
        problems.append(f"one network: config {h} is read from {n} runs of sweep {sweep}")
    for (sweep, run), rows in raw.groupby(["sweep_id", "run_id"]):
        members = rows.groupby("config_hash")["member"].nunique()
        for h, n in members[members > 1].items():
            problems.append(f"one network: config {h} is {n} members of run {run}")
        hashes = rows.groupby("member")["config_hash"].nunique()
        for m, n in hashes[hashes > 1].items():
            problems.append(f"one network: member {m} of run {run} has {n} config hashes")
    return problems
