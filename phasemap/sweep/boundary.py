"""Boundary search: train networks where the phase boundary is, infer the phase elsewhere.

A phase label is the six alignments thresholded at tau, so the information of a phase diagram
is where an alignment crosses tau (Bryan, Schneider et al., "Active learning for identifying
function threshold boundaries", NIPS 2005). The candidates are the cells of the sweep's grid:
every combination of its axes but the seed (a cell's networks are its seeds, the noise). Per
relation that defines a phase (the six alignments at `search.layer`, judged raw or as the
excess over the null, and divergence), a Gaussian process over the cells' coordinates
(numeric axes scaled to [0, 1], in log where the values are log-spaced; categorical ones
one-hot) models the value of a network. A cell is uncertain where the straddle

    straddle = 1.96 sigma - |mu - tau|

is positive for some relation: the model cannot tell which side of tau it lies on. A round
trains the most uncertain cells; the batch is chosen by the kriging believer (each pick joins
the model at its predicted value, so the next pick goes where that does not already answer).
The search ends at the budget or when no cell straddles.

Everything here is a function of the sweep config and its records: a killed driver, `--resume`
or a grown grid recomputes the same state from storage and reuses every trained network.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..config import RunConfig, parse_config
from ..measure.phases import ALIGNMENT_COLUMNS, RELATIONS, judged, n_hidden, phase_of
from .spec import SEED_AXIS, SearchSpec, SweepConfig, _with, from_stored, stored_form

log = logging.getLogger(__name__)

STATE = "_BOUNDARY.json"  # in the sweep's folder: the search's config and where it stands
DIVERGED = "diverged"  # the seventh modelled quantity: 1 for a network that diverged, threshold 1/2
Z = 1.96  # Bryan et al.'s straddle: a 95% interval around the prediction


@dataclass(frozen=True)
class Cell:
    point: dict  # axis path -> value (the seed axis left out)
    members: tuple[RunConfig, ...]  # its networks, one-member run configs
    hashes: tuple[str, ...]  # their config hashes


def grid_cells(cfg: SweepConfig) -> list[Cell]:
    """The candidates: every combination of the axes but the seed, each with its networks."""
    axes = {k: v for k, v in cfg.axes.items() if k != SEED_AXIS}
    seeds = cfg.axes.get(SEED_AXIS)
    cells = []
    for values in itertools.product(*axes.values()):
        point = dict(zip(axes, values))
        found: dict[str, RunConfig] = {}
        for combo in ([point] if seeds is None else [{**point, SEED_AXIS: s} for s in seeds]):
            run = parse_config(_with(cfg.base, combo), check_environment=False)
            for member in run.members:
                single = run.member_config(member)
                found.setdefault(single.config_hash(), single)
        cells.append(Cell(point, tuple(found.values()), tuple(found)))
    return cells


def design_size(cfg: SweepConfig, n_cells: int) -> int:
    """Cells of the first design: `search.initial`, else max(2^axes, per_round), at most every cell."""
    n_axes = sum(k != SEED_AXIS for k in cfg.axes)
    return min(n_cells, cfg.search.initial or max(2 ** n_axes, cfg.search.per_round))


def budget(cfg: SweepConfig, cells: list[Cell], X: np.ndarray | None = None) -> int:
    """Networks the search may train: `search.budget`, else a third of the grid's (at least the
    first design's). `X`: the cells' coordinates, when already computed."""
    if cfg.search.budget:
        return cfg.search.budget
    X = coordinates(cfg, cells) if X is None else X
    design = initial_design(X, design_size(cfg, len(cells)))
    return max(math.ceil(sum(len(c.members) for c in cells) / 3), sum(len(cells[i].members) for i in design))


def check_design(cfg: SweepConfig, problems: list[str]) -> None:
    """A first design that fits the grid and the budget (problems named by field)."""
    cells = grid_cells(cfg)
    initial = design_size(cfg, len(cells))
    if cfg.search.initial > len(cells):
        problems.append(f"search.initial: `initial <= cells of the grid ({len(cells)})` must hold, "
                        f"but got {cfg.search.initial}")
        return
    first = sum(len(cells[i].members) for i in initial_design(coordinates(cfg, cells), initial))
    if cfg.search.budget and cfg.search.budget < first:
        problems.append(f"search.budget: `budget >= networks of the initial design ({initial} cells, {first} "
                        f"networks)` must hold, but got {cfg.search.budget}")
    if cfg.search.against == "null" and any(c.members[0].probe.null_samples == 0 for c in cells):
        problems.append("search.against: `probe.null_samples > 0` must hold to judge against the null, but "
                            "got null_samples=0 (no null is measured)")
    from ..analysis.aggregate import parse_layer

    layer = parse_layer(cfg.search.layer)
    depths = [c.members[0].model.depth for c in cells if c.members[0].model.family == "mlp"]
    if isinstance(layer, int) and depths and layer > min(depths) + 1:
        problems.append(f"search.layer: `layer <= the layers of every network (an MLP of depth "
                        f"{min(depths)} has {min(depths) + 1})` must hold, but got {layer}")


# ----------------------------------------------------------------------------- coordinates


def coordinates(cfg: SweepConfig, cells: list[Cell]) -> np.ndarray:
    """Each cell as a point in [0, 1]^d: a numeric axis scaled, in log where its values are
    log-spaced or span two decades (a 0 there sits one median step below the smallest positive
    value: weight decay 0, 1e-4, 1e-3 are evenly spaced), a categorical one one-hot."""
    from ..analysis.aggregate import log_spaced

    columns = []
    for key in (k for k in cfg.axes if k != SEED_AXIS):
        values = [c.point[key] for c in cells]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            v = np.asarray(values, dtype=float)
            positive = np.unique(v[v > 0])
            if (v >= 0).all() and len(positive) >= 2 and (log_spaced(values) or positive[-1] / positive[0] >= 100):
                step = np.median(np.diff(np.log10(positive)))
                v = np.where(v > 0, np.log10(np.where(v > 0, v, 1.0)), np.log10(positive[0]) - step)
            span = v.max() - v.min()
            columns.append((v - v.min()) / span if span > 0 else np.zeros_like(v))
        else:
            keys = [json.dumps(x, sort_keys=True) for x in values]
            for level in dict.fromkeys(keys):
                columns.append(np.array([k == level for k in keys], dtype=float))
    return np.stack(columns, axis=1)


def initial_design(X: np.ndarray, n: int) -> list[int]:
    """`n` cells spread over the space: from the cell nearest the origin, each next one the
    farthest from those chosen (greedy maximin), so a box's corners come first."""
    chosen = [int(np.argmin(np.linalg.norm(X, axis=1)))]
    distance = np.linalg.norm(X - X[chosen[0]], axis=1)
    while len(chosen) < min(n, len(X)):
        i = int(np.argmax(distance))  # ties: the first in grid order
        chosen.append(i)
        distance = np.minimum(distance, np.linalg.norm(X - X[i], axis=1))
    return chosen


# ----------------------------------------------------------------------------- observations


def network_values(table: pd.DataFrame, layer, against: str) -> pd.DataFrame:
    """Per network (config hash) at its last step and `layer`: the six judged alignments, its
    phase at no threshold yet, and `diverged` (1.0 or 0.0). A diverged network's alignments are NaN."""
    from ..analysis.aggregate import last_records, pick_layer

    last = last_records(table)
    diverged = last.groupby("config_hash")["status"].agg(lambda s: float((s == "diverged").any()))
    rows = pick_layer(last[last["status"] != "diverged"], layer)
    values = pd.DataFrame({c: judged(rows, c, against) for c in ALIGNMENT_COLUMNS}, index=rows["config_hash"].values)
    values = values[~values.index.duplicated()]
    out = pd.DataFrame({DIVERGED: diverged}).join(values, how="left")
    out.index.name = "config_hash"
    return out


# The GPs' priors, in the units of an alignment (about 0 to 1): a prior standard deviation of at
# least 0.2 and length scales of at most half the space, so the model stays unsure away from its
# data instead of extending a flat fit over cells it has not seen; seed noise up to 0.22.
AMPLITUDE = (0.2**2, 1.0)
LENGTH = (0.05, 0.5)
NOISE = (1e-6, 0.05)


class Surrogate:
    """One Gaussian process per modelled quantity over the cells' coordinates (scikit-learn),
    around the mean of its observations."""

    def __init__(self, X: np.ndarray, y: dict[str, np.ndarray]):
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

        self.models, self.means = {}, {}
        d = X.shape[1]
        fitted: dict[bytes, tuple] = {}  # relations with the same values share one fit
        for name, values in y.items():
            keep = ~np.isnan(values)
            if keep.sum() < 2:
                continue
            if values.tobytes() not in fitted:
                kernel = ConstantKernel(0.1, AMPLITUDE) * Matern(np.full(d, 0.3), LENGTH, nu=2.5) \
                    + WhiteKernel(1e-3, NOISE)
                gp = GaussianProcessRegressor(kernel, random_state=0)
                mean = float(values[keep].mean())
                with warnings.catch_warnings():  # a bound reached is an answer here (a flat or rough relation)
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    gp.fit(X[keep], values[keep] - mean)
                fitted[values.tobytes()] = (gp, mean)
            self.models[name], self.means[name] = fitted[values.tobytes()]

    def predict(self, X: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per quantity: the mean and the standard deviation of the cell's value (the seeds'
        noise left out: a cell measured near tau is known, not uncertain)."""
        out = {}
        for name, gp in self.models.items():
            mu, sigma = gp.predict(X, return_std=True)
            noise = gp.kernel_.k2.noise_level
            out[name] = (mu + self.means[name], np.sqrt(np.maximum(sigma**2 - noise, 0.0)))
        return out

    def believe(self, X: np.ndarray, picks: np.ndarray, copies: int) -> Surrogate:
        """The same GPs (kernels fixed) with `copies` pseudo-observations at each pick's prediction."""
        from sklearn.gaussian_process import GaussianProcessRegressor

        out = object.__new__(Surrogate)
        out.models, out.means = {}, dict(self.means)
        refitted: dict[int, GaussianProcessRegressor] = {}
        for name, gp in self.models.items():
            if id(gp) not in refitted:
                extra = np.repeat(X[picks], copies, axis=0)
                fixed = GaussianProcessRegressor(gp.kernel_, optimizer=None)
                refitted[id(gp)] = fixed.fit(np.vstack([gp.X_train_, extra]),
                                             np.concatenate([gp.y_train_, gp.predict(extra)]))
            out.models[name] = refitted[id(gp)]
        return out


def thresholds(tau: float) -> dict[str, float]:
    return {**dict.fromkeys(ALIGNMENT_COLUMNS, tau), DIVERGED: 0.5}


def straddle(prediction: dict, tau: float) -> np.ndarray:
    """Per cell: the largest 1.96 sigma - |mu - threshold| over the modelled quantities."""
    limits = thresholds(tau)
    scores = [Z * sigma - np.abs(mu - limits[name]) for name, (mu, sigma) in prediction.items()]
    return np.max(scores, axis=0) if scores else np.full(0, np.nan)


def predicted_phase(prediction: dict, tau: float, n: int) -> tuple[list[str], np.ndarray]:
    """Per cell: the label of the predicted alignments and the probability that it is right
    (relations independent: the product of each one's probability of being on its side)."""
    from scipy.stats import norm

    limits = thresholds(tau)
    p_side, holds = {}, {}
    for name, (mu, sigma) in prediction.items():
        p = norm.cdf((mu - limits[name]) / np.maximum(sigma, 1e-12))
        holds[name] = mu >= limits[name]
        p_side[name] = np.where(holds[name], p, 1 - p)
    labels, confidence = [], np.ones(n)
    for i in range(n):
        if DIVERGED in holds and holds[DIVERGED][i]:
            labels.append("diverged")
            confidence[i] = p_side[DIVERGED][i]
            continue
        sides = {s: {r for r in RELATIONS if holds.get(f"{r.lower()}_{s}", np.zeros(n, bool))[i]} for s in "ab"}
        labels.append(phase_of(sides["a"], sides["b"]))
        confidence[i] = math.prod(float(p[i]) for p in p_side.values())
    return labels, confidence


# ----------------------------------------------------------------------------- the search's state


@dataclass
class Plan:
    """Where a boundary search stands, from its config and storage."""

    cells: list[Cell]
    X: np.ndarray
    done: dict[str, str]  # config hash -> run id of every complete network of the sweep
    values: pd.DataFrame  # per complete network: its modelled quantities
    budget: int
    initial: int
    search: SearchSpec

    @property
    def complete(self) -> np.ndarray:
        """Per cell: how many of its networks are complete."""
        return np.array([sum(h in self.done for h in c.hashes) for c in self.cells])

    @property
    def used(self) -> int:
        return int(self.complete.sum())

    def observations(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        rows, y = [], {c: [] for c in [DIVERGED, *ALIGNMENT_COLUMNS]}
        for i, cell in enumerate(self.cells):
            for h in cell.hashes:
                if h in self.values.index:
                    rows.append(i)
                    for c in y:
                        y[c].append(float(self.values.at[h, c]))
        y = {c: np.asarray(v, dtype=float) for c, v in y.items()}
        if not np.nansum(y[DIVERGED]):  # nothing diverged: divergence is not part of the model
            y.pop(DIVERGED)
        return self.X[rows], y

    def surrogate(self) -> Surrogate | None:
        X, y = self.observations()
        return Surrogate(X, y) if len(X) >= 2 else None

    def next_cells(self, per_round: int | None = None, tau: float | None = None) -> tuple[list[int], int]:
        """The cells the next round trains (their missing networks) and how many candidates
        still straddle. Cells begun but not complete come first; then the initial design while
        it is not measured; then the kriging-believer batch of the most uncertain cells."""
        per_round = per_round or self.search.per_round
        tau = self.search.tau if tau is None else tau
        complete = self.complete
        sizes = np.array([len(c.members) for c in self.cells])
        left = self.budget - self.used
        started = [i for i in range(len(self.cells)) if 0 < complete[i] < sizes[i]]
        chosen, cost = [], 0

        def take(i) -> bool:
            nonlocal cost
            need = int(sizes[i] - complete[i])
            if cost + need > left:
                return False
            chosen.append(i)
            cost += need
            return True

        for i in started:
            take(i)
        design = [i for i in initial_design(self.X, self.initial) if complete[i] == 0 and i not in chosen]
        if design:
            for i in design:
                take(i)
            return chosen, len(design)
        candidates = np.flatnonzero(complete == 0)
        model = self.surrogate()
        if model is None or not model.models or not len(candidates):
            if model is not None and not model.models:
                log.warning("no alignment at layer %s (judged %s) and no divergence to model: nothing to search "
                            "(is the layer there, are nulls measured?)", self.search.layer, self.search.against)
            return chosen, 0
        scores = straddle(model.predict(self.X[candidates]), tau)
        uncertain = int((scores > 0).sum())
        picks: list[int] = []
        while len(picks) < per_round and len(candidates):
            best = int(np.argmax(scores))
            if scores[best] <= 0 or not take(int(candidates[best])):
                break
            picks.append(int(candidates[best]))
            candidates = np.delete(candidates, best)
            if len(picks) < per_round and len(candidates):
                model = model.believe(self.X, np.array([picks[-1]]), int(sizes[picks[-1]]))
                scores = straddle(model.predict(self.X[candidates]), tau)
        return chosen, uncertain


def plan(cfg: SweepConfig, done: dict[str, str] | None = None, table: pd.DataFrame | None = None,
         cells: list[Cell] | None = None) -> Plan:
    """The search's state from storage: complete networks (markers) and their records."""
    from .. import records
    from ..analysis.aggregate import parse_layer

    cells = cells if cells is not None else grid_cells(cfg)
    done = records.complete_members(cfg.root, cfg.sweep_id) if done is None else done
    wanted = {h for c in cells for h in c.hashes if h in done}
    if table is None:
        table = read_records(cfg.root, cfg.sweep_id) if wanted else None
    values = pd.DataFrame(columns=[DIVERGED, *ALIGNMENT_COLUMNS])
    if table is not None and len(table):
        values = network_values(table[table["config_hash"].isin(wanted)], parse_layer(cfg.search.layer),
                                cfg.search.against)
    X = coordinates(cfg, cells)
    return Plan(cells, X, {h: r for h, r in done.items() if h in wanted}, values, budget(cfg, cells, X),
                design_size(cfg, len(cells)), cfg.search)


def read_records(root: str, sweep_id: str) -> pd.DataFrame:
    """The columns a boundary search models, of one sweep."""
    from ..analysis.query import load

    columns = ["sweep_id", "run_id", "member", "config_hash", "step", "layer", "n_layers", "depth", "head", "status",
               *ALIGNMENT_COLUMNS, *(f"{c}_null" for c in ALIGNMENT_COLUMNS)]
    return load(root, filters={"sweep_id": sweep_id}, columns=columns)


def predict(p: Plan, table: pd.DataFrame | None, tau: float, layer, against: str) -> pd.DataFrame:
    """One row per cell: its config columns, `phase` (the measured majority where a network of
    it is complete, else the model's), `measured` (networks), `confidence` (measured: the
    majority's share; inferred: the probability that the label is right under the model)."""
    from .. import records
    from ..analysis.aggregate import _majority, labelled, varying_axes

    columns = pd.DataFrame([records.config_columns(c.members[0]) for c in p.cells])
    axes = [c for c in varying_axes(columns) if c not in ("seed", "data_seed")]
    out = columns[axes].copy()
    out["cell"] = range(len(p.cells))
    cell_of = {h: i for i, c in enumerate(p.cells) for h in c.hashes}
    measured = pd.DataFrame(columns=["cell", "phase", "share", "n"])
    if table is not None and len(table):
        rows = labelled(table[table["config_hash"].isin(list(cell_of))], tau, layer, against)
        rows = rows.drop_duplicates("config_hash")
        if len(rows):
            rows["cell"] = rows["config_hash"].map(cell_of)
            measured = _majority(rows, ["cell"])
    out = out.merge(measured[["cell", "phase", "share", "n"]], on="cell", how="left")
    out["measured"] = out.pop("n").fillna(0).astype(int)
    out["confidence"] = out.pop("share").astype(float)
    inferred = (out["measured"] == 0).to_numpy()
    if inferred.any():
        model = p.surrogate() if len(p.values) else None
        if model is not None and model.models:
            labels, confidence = predicted_phase(model.predict(p.X[inferred]), tau, int(inferred.sum()))
            out.loc[inferred, "phase"] = labels
            out.loc[inferred, "confidence"] = confidence
    return out.drop(columns="cell")


def stored_map(root: str, state: dict, table: pd.DataFrame, tau: float, layer, against: str) -> pd.DataFrame:
    """`predict` for a stored boundary search (its state file), judged at `layer`, `tau`, `against`."""
    cfg = from_stored(root, state["config"])
    cfg = dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, layer=str(layer), tau=tau, against=against))
    return predict(plan(cfg, table=table), table, tau, layer, against)


def check_measurable(table: pd.DataFrame, layer, against: str) -> None:
    """A ValueError naming the option unless the finished networks have `layer` and, judged
    against the null, a measured null."""
    from ..analysis.aggregate import last_records, pick_layer

    if not len(table):
        return
    last = last_records(table)
    rows = pick_layer(last[last["status"] != "diverged"], layer)
    if (last["status"] != "diverged").any() and rows.empty:
        layers = n_hidden(last) + 1  # n_layers, or an MLP's depth + 1 where older records lack it
        raise ValueError(f"--layer: `a layer of the networks` must hold, but got {layer!r} (they have "
                         f"{int(layers.min())} to {int(layers.max())} layers)")
    nulls = [f"{c}_null" for c in ALIGNMENT_COLUMNS]
    if against == "null" and len(rows) and rows[nulls].isna().all().all():
        raise ValueError("--against: `a null was measured (probe.null_samples > 0)` must hold to judge against it, "
                         "but got none in these records")


def measured_cells(table: pd.DataFrame, tau: float, layer, against: str) -> pd.DataFrame:
    """`predict`'s table for a sweep without a model (a grid): the cells of the config columns
    that vary in the records, each with its networks' majority phase, every one measured."""
    from ..analysis.aggregate import _majority, labelled, varying_axes

    rows = labelled(table, tau, layer, against)
    axes = varying_axes(rows)
    if not axes:
        raise ValueError("`a config column varies in the sweep` must hold to map it, but none does")
    cells = _majority(rows, axes).rename(columns={"n": "measured", "share": "confidence"})
    return cells[[*axes, "phase", "measured", "confidence"]]


def write_state(cfg: SweepConfig, p: Plan, round_: int, uncertain: int, finished: bool) -> dict:
    """The search's config and progress, for `status` and `predict` (which have no config)."""
    from .. import records

    state = {"config": stored_form(cfg), "round": round_, "budget": p.budget, "used": p.used, "cells": len(p.cells),
             "measured": int((p.complete > 0).sum()), "uncertain": uncertain, "finished": finished}
    records.write_sweep_file(cfg.root, cfg.sweep_id, STATE, json.dumps(state, indent=2, default=list).encode())
    return state


def judging(state: dict | None) -> dict:
    """The layer, tau and against a sweep is judged at unless asked otherwise: a boundary
    search's own (its state's config), else the last hidden layer, 0.9 and raw alignment."""
    search = state["config"]["search"] if state is not None else {}
    return {"layer": search.get("layer", "last"), "tau": search.get("tau", 0.9), "against": search.get("against", "raw")}


def read_state(root: str, sweep_id: str) -> dict | None:
    from .. import records

    data = records.read_sweep_file(root, sweep_id, STATE)
    return json.loads(data) if data is not None else None

