"""Phase labels (paper Table 1) and critical depth: pure functions of alignment columns.

Records keep raw alignments, so any table can be relabelled at any threshold `tau` later.
"""

from __future__ import annotations

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


def label_phases(table: pd.DataFrame, tau: float) -> pd.Series:
    """Phase of every row at threshold tau; a relation holds when alignment >= tau.

    NaN alignments do not hold. Rows whose `status` is 'diverged' are labelled 'diverged'.
    """
    holds = {c: (table[c].to_numpy(dtype=float) >= tau) for c in ALIGNMENT_COLUMNS}
    labels = []
    for i in range(len(table)):
        a = {r for r in RELATIONS if holds[f"{r.lower()}_a"][i]}
        b = {r for r in RELATIONS if holds[f"{r.lower()}_b"][i]}
        labels.append(phase_of(a, b))
    out = pd.Series(labels, index=table.index, name="phase", dtype=object)
    if "status" in table:
        out[table["status"].to_numpy() == "diverged"] = "diverged"
    return out


def critical_depth_of(alphas: np.ndarray, tau: float) -> float:
    """Smallest 1-based hidden-layer index l* with alpha >= tau at l* and every later layer.

    `alphas` are a network's hidden layers in order; NaN if the last layer is below tau.
    """
    ok = np.asarray(alphas, dtype=float) >= tau
    if ok.size == 0 or not ok[-1]:
        return float("nan")
    bad = np.flatnonzero(~ok)
    return float(bad[-1] + 2) if bad.size else 1.0


def critical_depth(table: pd.DataFrame, relation: str, tau: float, by: list[str] | None = None) -> pd.DataFrame:
    """Critical depth per network (and step) for one alignment column, e.g. 'rga_b'.

    Uses the hidden layers (layer <= depth). Returns one row per group with `l_star` and
    `l_star_frac` = l*/depth (NaN when no suffix of layers aligns).
    """
    by = by or ["run_id", "member", "step"]
    hidden = table[table["layer"] <= table["depth"]]
    if "status" in hidden:
        hidden = hidden[hidden["status"] == "ok"]
    rows = []
    for key, group in hidden.sort_values("layer").groupby(by, sort=True):
        depth = int(group["depth"].iloc[0])
        l_star = critical_depth_of(group[relation].to_numpy(), tau) if len(group) == depth else float("nan")
        rows.append((*(key if isinstance(key, tuple) else (key,)), depth, l_star, l_star / depth))
    return pd.DataFrame(rows, columns=[*by, "depth", "l_star", "l_star_frac"])
