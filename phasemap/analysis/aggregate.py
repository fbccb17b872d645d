"""Reduce records to plain tables: phase grids, critical-depth maps, curves.

Every function takes a records DataFrame (from `phasemap.load`) and returns a tidy table
that tests check by value and `plots` only draws. By default each network (sweep, run,
member) contributes its last record (the last probe, or the step it diverged at).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..measure.phases import (
    ALIGNMENT_COLUMNS, critical_depth, crossing_bracket, label_phases, layer_rows, learning_outcome, n_hidden,
)
from ..records import CONFIG_COLUMNS, SCHEMA
from ..records.columns import METRIC_COLUMNS

NETWORK = ["sweep_id", "run_id", "member"]
# seeds are what cells aggregate over; every other config column can be an axis
SEEDS = ["seed", "data_seed"]
AXES = [c for _, c, _ in CONFIG_COLUMNS if c not in SEEDS] + ["output_dim"]
# what the figures (but spectra) read: every record column but the metrics, the alignments and their nulls
FIGURE_COLUMNS = ([c for c in SCHEMA.names if c not in METRIC_COLUMNS] + list(ALIGNMENT_COLUMNS)
                  + [f"{c}_null" for c in ALIGNMENT_COLUMNS])


def varying_axes(df: pd.DataFrame) -> list[str]:
    """The config columns (every field of the run config but the seeds) that take more than
    one value in `df`, in config order: derived from the data, never from a fixed list."""
    return [c for c in AXES if c in df and df[c].nunique(dropna=False) > 1]


def log_spaced(values: Sequence) -> bool:
    """Whether an axis's positive values grow by similar factors (> 1.5): drawn and modelled in log."""
    v = np.array(sorted({float(x) for x in values if isinstance(x, (int, float, np.number)) and not isinstance(x, bool)
                         and x > 0}))
    if len(v) < 3:
        return False
    ratios = v[1:] / v[:-1]
    return bool(ratios.min() > 1.5 and ratios.max() / ratios.min() < 2.5)


def last_records(df: pd.DataFrame) -> pd.DataFrame:
    """Each network's layer rows at its last step (its final probe, or where it diverged)."""
    df = layer_rows(df)
    last = df.groupby(NETWORK, sort=False)["step"].transform("max")
    return df[df["step"] == last]


def last_hidden(df: pd.DataFrame) -> pd.DataFrame:
    """Each finished network's hidden layers (all but the output; the MLP's 1..depth) at its last step."""
    rows = last_records(df)
    return rows[(rows["status"] != "diverged") & (rows["layer"] <= n_hidden(rows))]


def pick_layer(df: pd.DataFrame, layer: int | float | str) -> pd.DataFrame:
    """Rows of one layer per network.

    layer: an int (1-based index), a float in (0, 1] (that fraction of the hidden layers,
    rounded up), "last" (last hidden layer), "output", or "each" (all rows). Hidden layers are
    every measured layer but the output (`phases.n_hidden`; the MLP's depth).
    """
    df = layer_rows(df)
    if layer == "each":
        return df
    depth = n_hidden(df)
    if layer == "last":
        target = depth
    elif layer == "output":
        target = depth + 1
    elif isinstance(layer, float) and 0 < layer <= 1:
        target = np.clip(np.ceil(layer * depth), 1, depth)
    elif isinstance(layer, (int, np.integer)) and not isinstance(layer, bool) and layer >= 1:
        target = np.full(len(df), layer)
    else:
        raise ValueError(f"`layer is an index >= 1, a fraction in (0, 1], 'last', 'output' or 'each'`"
                         f" must hold, but got {layer!r}")
    return df[df["layer"].to_numpy() == target]


def parse_layer(text: str) -> int | float | str:
    """A layer option from the command line: '3', '0.5', 'last', 'output', 'each'."""
    if text in ("last", "output", "each"):
        return text
    try:
        return int(text)
    except ValueError:
        return float(text)


def _complete(table: pd.DataFrame, keys: list[str], universe: pd.DataFrame) -> pd.DataFrame:
    """Every combination of the keys' observed values, cells without data included (n = 0)."""
    levels = [sorted(universe[k].dropna().unique()) for k in keys]
    full = pd.MultiIndex.from_product(levels, names=keys).to_frame(index=False)
    out = full.merge(table, on=keys, how="left")
    out["n"] = out["n"].fillna(0).astype(int)
    return out


def phase_grid(
    df: pd.DataFrame,
    x: str,
    y: str,
    *,
    layer: int | float | str = "last",
    tau: float = 0.9,
    facets: Sequence[str] = (),
    columns: Sequence[str] = ALIGNMENT_COLUMNS,
    against: str = "raw",
) -> pd.DataFrame:
    """Majority phase per cell of (facets, y, x) at threshold tau, with its share.

    One row per cell: `n` networks, `phase` (the most frequent; ties go to the name first in
    sort order), `share` of networks in it, and `<col>_mean`, `<col>_std` for `columns`.
    Cells with no data have n = 0 and phase NaN.
    """
    keys = [*facets, y, x] + (["layer"] if layer == "each" else [])
    rows = labelled(df, tau, layer, against)
    stats = rows.groupby(keys, sort=True)[list(columns)].agg(["mean", "std"])
    stats.columns = [f"{c}_{s}" for c, s in stats.columns]
    table = _majority(rows, keys).merge(stats.reset_index(), on=keys)
    return _complete(table, keys, rows if layer == "each" else df)


def has_majority(share):
    """A cell's most frequent phase is its majority when it holds more than half of the cell's
    networks; a tie (2 of 4) or a plurality (2 of 5) is no majority. `share` a number or an array."""
    return share > 0.5


def labelled(df: pd.DataFrame, tau: float, layer: int | float | str = "last", against: str = "raw") -> pd.DataFrame:
    """Each network's rows of `layer` at its last step, with its `phase` at threshold tau."""
    rows = pick_layer(last_records(df), layer).copy()
    rows["phase"] = label_phases(rows, tau, against)
    return rows


def _majority(rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per cell of `keys`: `n` rows, the most frequent `phase` (ties: the name first in sort
    order) and the `share` of rows in it."""
    counts = rows.groupby(keys + ["phase"], sort=True).size().rename("count").reset_index()
    counts = counts.sort_values(keys + ["count", "phase"], ascending=[True] * len(keys) + [False, True])
    top = counts.drop_duplicates(keys)[keys + ["phase", "count"]]
    table = top.merge(rows.groupby(keys, sort=True).size().rename("n").reset_index(), on=keys)
    table["share"] = table.pop("count") / table["n"]
    return table


def critical_depth_map(
    df: pd.DataFrame,
    x: str,
    y: str,
    *,
    relation: str = "rga_b",
    tau: float = 0.9,
    facets: Sequence[str] = (),
    against: str = "raw",
) -> pd.DataFrame:
    """Critical depth l* per cell of (facets, y, x), networks (seeds) aggregated.

    One row per cell: `n` networks that finished, `n_aligned` of them with an aligned suffix,
    `l_star_mean`, `l_star_frac_mean` (l*/depth) and `l_star_frac_std` over those, and
    `n_diverged`. Cells with no data have n = 0.
    """
    keys = [*facets, y, x]
    last = last_records(df)
    per_net = critical_depth(last, relation, tau, by=NETWORK + [k for k in keys if k not in NETWORK], against=against)
    grouped = per_net.groupby(keys, sort=True)
    table = grouped.agg(
        n=("l_star", "size"),
        n_aligned=("l_star", "count"),
        l_star_mean=("l_star", "mean"),
        l_star_frac_mean=("l_star_frac", "mean"),
        l_star_frac_std=("l_star_frac", "std"),
    ).reset_index()
    diverged = last[last["status"] == "diverged"].drop_duplicates(NETWORK).groupby(keys).size().rename("n_diverged")
    table = table.merge(diverged.reset_index(), on=keys, how="outer")
    out = _complete(table, keys, df)
    out["n_aligned"] = out["n_aligned"].fillna(0).astype(int)
    out["n_diverged"] = out["n_diverged"].fillna(0).astype(int)
    return out


def _config_keys(df: pd.DataFrame, by: Sequence[str] | None) -> list[str]:
    return list(by) if by is not None else varying_axes(df)


def layer_profile(df: pd.DataFrame, columns: Sequence[str] = ALIGNMENT_COLUMNS, by: Sequence[str] | None = None) -> pd.DataFrame:
    """Alignment by layer at the last step: mean and std over seeds per config and layer."""
    keys = _config_keys(df, by) + ["layer"]
    rows = last_records(df)
    rows = rows[rows["status"] != "diverged"]
    columns = list(columns) + [f"{c}_null" for c in columns if f"{c}_null" in rows]  # the chance level
    table = rows.groupby(keys, sort=True)[columns].agg(["mean", "std"])
    table.columns = [f"{c}_{s}" for c, s in table.columns]
    table = table.join(rows.groupby(keys, sort=True).size().rename("n"))
    if "layer_name" in rows:  # the layer's name in the model (conv1, fc2, stage1_block1.conv1, ...)
        table = table.join(rows.groupby(keys, sort=True)["layer_name"].first())
    return table.reset_index()


def evolution(df: pd.DataFrame, column: str = "rga_b", layer: int | float | str = "last",
              by: Sequence[str] | None = None) -> pd.DataFrame:
    """One alignment column over training steps: mean and std over seeds per config."""
    keys = _config_keys(df, by) + ["step"]
    rows = pick_layer(df[df["status"] != "diverged"], layer)
    table = rows.groupby(keys, sort=True)[column].agg(["mean", "std", "size"])
    return table.rename(columns={"mean": f"{column}_mean", "std": f"{column}_std", "size": "n"}).reset_index()


def pah_table(df: pd.DataFrame, by: Sequence[str] | None = None) -> pd.DataFrame:
    """PAH exponents per config, layer, side and pair at the last step (mean over seeds)."""
    keys = _config_keys(df, by) + ["layer"]
    rows = last_records(df)
    rows = rows[rows["status"] != "diverged"]
    parts = []
    for side in "ab":
        for pair in ("hg", "hz", "gz"):
            col = f"pah_{pair}_{side}"
            g = rows.groupby(keys, sort=True).agg(exponent=(col, "mean"), exponent_std=(col, "std"),
                                                    r2=(f"{col}_r2", "mean"), n_eigs=(f"{col}_n", "mean"))
            parts.append(g.reset_index().assign(side=side, pair=pair))
    return pd.concat(parts, ignore_index=True)


def learning_phases(df: pd.DataFrame, threshold: float = 0.9, soon: float = 2.0) -> pd.DataFrame:
    """One row per network: its config axes, `outcome` (comprehension, grokking, unresolved,
    memorisation, confusion: `phases.learning_outcome`), `train_step` and `held_out_step` (first
    probe step at or above `threshold`), `train_after` and `held_out_after` (the probes before:
    the crossings lie in (train_after, train_step] and (held_out_after, held_out_step]; -inf
    when at the first probe), and `delay` = held_out_step - train_step (as the probes see it:
    resolved beyond `soon` x the train crossing where grokking). Needs the accuracy columns
    (classification and modular tasks)."""
    rows = df[(df["status"] != "diverged") & df["train_accuracy"].notna()]
    if rows.empty:
        raise ValueError("`records with train and held-out accuracy` must hold (classification or modular "
                         "tasks), but got none")
    axes = [c for c in AXES if c in rows]  # every config column: a figure may put a fixed one on an axis
    per_step = rows.groupby(NETWORK + ["step"], sort=True)[["train_accuracy", "probe_accuracy"]].first().reset_index()
    out = []
    for key, net in per_step.groupby(NETWORK, sort=True):
        outcome, t_train, t_test = learning_outcome(net["step"], net["train_accuracy"], net["probe_accuracy"],
                                                    threshold, soon)
        train_after, _ = crossing_bracket(net["step"], net["train_accuracy"], threshold)
        after, _ = crossing_bracket(net["step"], net["probe_accuracy"], threshold)
        out.append(dict(zip(NETWORK, key), outcome=outcome, train_step=t_train, held_out_step=t_test,
                        train_after=train_after, held_out_after=after, delay=t_test - t_train, final_train_accuracy=net["train_accuracy"].iloc[-1],
                        final_held_out_accuracy=net["probe_accuracy"].iloc[-1]))
    config = rows.drop_duplicates(NETWORK)[NETWORK + axes + [s for s in SEEDS if s in rows]]
    return pd.DataFrame(out).merge(config, on=NETWORK)


def learning_phase_grid(df: pd.DataFrame, x: str, y: str, *, facets: Sequence[str] = (), threshold: float = 0.9,
                        soon: float = 2.0) -> pd.DataFrame:
    """Majority learning outcome per cell of (facets, y, x), shaped like `phase_grid` (`phase`
    is the outcome), with the mean grokking step and delay of the cell's grokking networks and
    `n_unresolved`, its networks whose probes (of the train or the held-out crossing) were
    too sparse to tell grokking from comprehension at this `soon`."""
    nets = learning_phases(df, threshold, soon).rename(columns={"outcome": "phase"})
    keys = [*facets, y, x]
    grok = nets[nets["phase"] == "grokking"].groupby(keys, sort=True)[["held_out_step", "delay"]].mean()
    grok.columns = ["grok_step_mean", "delay_mean"]
    accuracy = nets.groupby(keys, sort=True)[["final_train_accuracy", "final_held_out_accuracy"]].mean()
    accuracy["n_unresolved"] = (nets["phase"] == "unresolved").groupby([nets[k] for k in keys], sort=True).sum()
    table = _majority(nets, keys).merge(accuracy.reset_index(), on=keys)
    table = table.merge(grok.reset_index(), on=keys, how="left")
    return _complete(table, keys, nets)
