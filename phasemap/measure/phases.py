"""Phase labels (paper Table 1) and critical depth: pure functions of alignment columns.

Records keep raw alignments and their nulls, so any table can be relabelled at any threshold
`tau` later, judged on raw alignment (`against="raw"`, the paper's rule) or on the excess over
the null (`against="null"`: a relation holds when (alpha - null) / (1 - null) >= tau).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

RELATIONS = ("RGA", "RWA", "GWA")
# numbered phases: exactly one relation holds on each side -> (backward a, forward b)
NUMBERED_PHASES = {
    ("RGA", "RGA"): "1",
    ("RWA", "RWA"): "2",
    ("GWA", "GWA"): "3",
    ("RGA", "RWA"): "4",
    ("RWA", "RGA"): "5",
    ("RGA", "GWA"): "6",
    ("GWA", "RGA"): "7",
    ("RWA", "GWA"): "8",
    ("GWA", "RWA"): "9",
}
ALIGNMENT_COLUMNS = [f"{r.lower()}_{side}" for side in "ab" for r in RELATIONS]


def phase_of(backward: frozenset | set, forward: frozenset | set) -> str:
    """Phase of one layer from the sets of relations that hold on each side."""
    a, b = set(backward), set(forward)
    full = set(RELATIONS)
    if a == full and b == full:
        return "CRH"
    if a == full:
        return "backward-CRH"
    if b == full:
        return "forward-CRH"
    if len(a) == 1 and len(b) == 1:
        return NUMBERED_PHASES[(next(iter(a)), next(iter(b)))]
    if not a and not b:
        return "none"

    def name(s):
        return "+".join(r for r in RELATIONS if r in s) or "-"

    return f"a:{name(a)}|b:{name(b)}"


def _code_labels() -> np.ndarray:
    """The phase of each 6-bit code: bits 0-2 backward RGA/RWA/GWA, bits 3-5 forward."""
    labels = []
    for code in range(64):
        a = {r for i, r in enumerate(RELATIONS) if code >> i & 1}
        b = {r for i, r in enumerate(RELATIONS) if code >> (i + 3) & 1}
        labels.append(phase_of(a, b))
    return np.array(labels, dtype=object)


_LABELS = _code_labels()


AGAINST = ("raw", "null")


def judged(table: pd.DataFrame, column: str, against: str = "raw") -> np.ndarray:
    """What a relation's threshold applies to: its alignment, or its excess over the null."""
    if against not in AGAINST:
        raise ValueError(f"`against in {AGAINST}` must hold, but got {against!r}")
    alpha = table[column].to_numpy(dtype=float)
    if against == "raw":
        return alpha
    if f"{column}_null" not in table:
        raise ValueError(f"`{column}_null is a column` must hold to judge against the null, but it is missing")
    null = table[f"{column}_null"].to_numpy(dtype=float)
    return (alpha - null) / (1 - null)


def label_phases(table: pd.DataFrame, tau: float, against: str = "raw") -> pd.Series:
    """Phase of every row at threshold tau; a relation holds when alignment >= tau (or, with
    against="null", when its excess over the null is).

    NaN values do not hold. Rows whose `status` is 'diverged' are labelled 'diverged'.
    """
    code = np.zeros(len(table), dtype=np.int64)
    for bit, col in enumerate(ALIGNMENT_COLUMNS):  # rga_a rwa_a gwa_a rga_b rwa_b gwa_b
        code |= (judged(table, col, against) >= tau).astype(np.int64) << bit
    labels = _LABELS[code]
    if "status" in table:
        labels = np.where(table["status"].to_numpy() == "diverged", "diverged", labels)
    return pd.Series(labels, index=table.index, name="phase", dtype=object)


def layer_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of whole layers: per-head rows of attention (probe.per_head: `head` set) left
    out; they share their projection's `layer` index and would count as layers of their own."""
    return table[table["head"].isna()] if "head" in table else table


def n_hidden(table: pd.DataFrame) -> np.ndarray:
    """Hidden layers of each row's network: every measured layer but the last (the output),
    from `n_layers`; the MLP's `depth` where that column is missing (it has depth + 1 layers)."""
    depth = table["depth"].to_numpy(dtype=float)
    if "n_layers" not in table:
        return depth
    n = table["n_layers"].to_numpy(dtype=float) - 1
    return np.where(np.isnan(n), depth, n)


def critical_depth(table: pd.DataFrame, relation: str, tau: float, by: list[str] | None = None,
                   against: str = "raw") -> pd.DataFrame:
    """Critical depth per network (and step) for one alignment column, e.g. 'rga_b'.

    Uses the hidden layers (1 <= layer <= n_hidden: every measured layer but the output; the
    MLP's depth) of rows not diverged (ok or settled), whole layers only (per-head rows left out). Returns one row per group of `by` (default: run_id,
    member, step) with `depth`, `n_hidden`, `l_star` and `l_star_frac` = l*/n_hidden; NaN when
    no suffix of layers aligns or a layer is missing.
    """
    by = list(by or ["run_id", "member", "step"])
    table = layer_rows(table)
    table = table.assign(n_hidden=n_hidden(table))
    hidden = table[(table["layer"] <= table["n_hidden"]) & (table["layer"] >= 1)]
    if "status" in hidden:
        hidden = hidden[hidden["status"] != "diverged"]  # ok or settled (train.stop)
    below = np.where(judged(hidden, relation, against) >= tau, 0, hidden["layer"].to_numpy())
    grouped = hidden.assign(_below=below).groupby(by, sort=True)
    extra = {} if "depth" in by else {"depth": ("depth", "first")}
    out = grouped.agg(**extra, n_hidden=("n_hidden", "first"), _n=("layer", "nunique"),
                      _last_bad=("_below", "max")).reset_index()
    l_star = (out["_last_bad"] + 1).astype(float)
    undefined = (out["_last_bad"] >= out["n_hidden"]) | (out["_n"] != out["n_hidden"])
    out["l_star"] = l_star.where(~undefined)
    out["l_star_frac"] = out["l_star"] / out["n_hidden"]
    return out.drop(columns=["_n", "_last_bad"])


LEARNING_OUTCOMES = ("comprehension", "grokking", "unresolved", "memorisation", "confusion")


def learning_outcome(steps, train_accuracy, held_out_accuracy, threshold: float = 0.9,
                     soon: float = 2.0) -> tuple[str, float, float]:
    """A run's learning phase from its accuracies at the probe steps (SCIENCE.md, Learning
    phases; Liu et al. 2022): (outcome, t_train, t_held), the first probe steps at which train
    and held-out accuracy are at or above `threshold` (NaN where never).

    confusion: train never reaches the threshold; memorisation: train does, held-out never.
    Otherwise the probes only bracket both crossings (`crossing_bracket`): train's lies in
    (a, b], b = t_train and a the probe before it (a run already at the threshold at its first
    probe crossed by then: a = -inf, so at step 0 exactly when that probe is step 0), and
    held-out's in (c, d], d = t_held. Steps are integers, so the earliest train crossing is
    a + 1 and the earliest held-out one c + 1. Judged on the worst case, with the horizon
    soon x the train crossing (at least 1, so a run that starts learnt has one):
    comprehension: d <= soon * max(a + 1, 1), held-out reached it within `soon` times even the
    earliest possible train crossing;
    grokking: c + 1 > soon * max(b, 1), even the earliest possible held-out crossing is later
    than `soon` times the latest possible train crossing (the delay is resolved);
    unresolved: otherwise, the probes are too sparse for this `soon` to tell (probe more often
    around the train crossing and between the two crossings).
    """
    a, t_train = crossing_bracket(steps, train_accuracy, threshold)
    c, t_held = crossing_bracket(steps, held_out_accuracy, threshold)
    if math.isnan(t_train):
        return "confusion", t_train, t_held
    if math.isnan(t_held):
        return "memorisation", t_train, t_held
    if t_held <= soon * max(a + 1, 1.0):
        return "comprehension", t_train, t_held
    if c + 1 > soon * max(t_train, 1.0):
        return "grokking", t_train, t_held
    return "unresolved", t_train, t_held


def crossing_bracket(steps, accuracy, threshold: float = 0.9) -> tuple[float, float]:
    """Where an accuracy first crossed `threshold`, as the probes know it: (t_prev, t_first],
    t_first the first probe step at or above it and t_prev the probe step before (-inf when
    t_first is the first probe); (NaN, NaN) when it never is."""
    order = np.argsort(np.asarray(steps), kind="stable")
    s = np.asarray(steps, dtype=float)[order]
    reached = np.asarray(accuracy, dtype=float)[order] >= threshold
    if not reached.any():
        return math.nan, math.nan
    i = int(np.argmax(reached))
    return (float(s[i - 1]) if i > 0 else -math.inf), float(s[i])


def held_out_bracket(steps, held_out_accuracy, threshold: float = 0.9) -> tuple[float, float]:
    """Where the held-out accuracy first crossed `threshold`: `crossing_bracket` of it."""
    return crossing_bracket(steps, held_out_accuracy, threshold)
