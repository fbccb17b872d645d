"""Boundary search (sweep/boundary.py): coordinates, the first design, the straddle and the label's
confidence by hand; a search replayed on a known boundary finds it with a third of the networks;
configs it cannot run are refused naming the field; `predict` on a grid sweep gives its measured
cells. The search on a real local Ray is in test_matrix.py."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from phasemap import train_pack
from phasemap.cli import main
from phasemap.config import ConfigError, parse_config
from phasemap.measure.phases import ALIGNMENT_COLUMNS
from phasemap.sweep import boundary
from phasemap.sweep.spec import parse_sweep

BASE = {"task": {"name": "fc1", "input_dim": 8}, "model": {"depth": 2, "width": 8}, "train": {"steps": 10}}


def sweep(axes, **search):
    return parse_sweep({"name": "b", "base": BASE, "axes": axes, "search": {"mode": "boundary", **search}})


def test_coordinates_are_log_where_values_are_log_spaced_and_one_hot_for_categories():
    cfg = sweep({"optimizer.weight_decay": [0.0, 1e-4, 1e-3, 1e-2], "model.width": [8, 16, 24],
                 "optimizer": [{"name": "sgd", "lr": 0.1}, {"name": "adam", "lr": 1e-3}]})
    cells = boundary.grid_cells(cfg)
    assert len(cells) == 24 and all(len(c.members) == 1 for c in cells)
    X = boundary.coordinates(cfg, cells)
    assert X.shape == (24, 4)  # weight decay, width, and the optimizer one-hot
    wd = {c.point["optimizer.weight_decay"]: x for c, x in zip(cells, X[:, 0])}
    assert wd == pytest.approx({0.0: 0.0, 1e-4: 1 / 3, 1e-3: 2 / 3, 1e-2: 1.0})  # 0 one decade below 1e-4
    width = {c.point["model.width"]: x for c, x in zip(cells, X[:, 1])}
    assert width == pytest.approx({8: 0.0, 16: 0.5, 24: 1.0})  # evenly spaced: linear
    sgd = np.array([c.point["optimizer"]["name"] == "sgd" for c in cells])
    assert (X[:, 2] == sgd).all() and (X[:, 3] == ~sgd).all()


def test_the_first_design_takes_the_corners_first_then_fills_the_space():
    xs, ys = np.meshgrid(np.linspace(0, 1, 5), np.linspace(0, 1, 5))
    X = np.stack([xs.ravel(), ys.ravel()], 1)
    design = boundary.initial_design(X, 5)
    corners = {tuple(X[i]) for i in design[:4]}
    assert corners == {(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0)}
    assert tuple(X[design[4]]) == (0.5, 0.5)  # the point farthest from every corner


def test_straddle_is_1_96_sigma_minus_the_distance_to_tau_largest_over_relations():
    prediction = {"rga_b": (np.array([0.8, 0.5]), np.array([0.1, 0.1])),
                  "rwa_b": (np.array([0.95, 0.9]), np.array([0.01, 0.2]))}
    got = boundary.straddle(prediction, 0.9)
    assert got[0] == pytest.approx(max(1.96 * 0.1 - 0.1, 1.96 * 0.01 - 0.05))
    assert got[1] == pytest.approx(max(1.96 * 0.1 - 0.4, 1.96 * 0.2 - 0.0))
    # divergence is modelled as 0/1 per network and judged at 1/2
    assert boundary.straddle({"diverged": (np.array([0.4]), np.array([0.1]))}, 0.9)[0] == pytest.approx(0.096)


def test_the_predicted_label_and_its_confidence_by_hand():
    far = (np.array([0.2, 0.2]), np.array([0.01, 0.01]))  # surely below tau
    prediction = {c: far for c in ALIGNMENT_COLUMNS}
    prediction["rga_b"] = (np.array([0.95, 0.95]), np.array([0.05, 0.05]))
    prediction["diverged"] = (np.array([0.1, 0.7]), np.array([0.2, 0.2]))
    labels, confidence = boundary.predicted_phase(prediction, 0.9, 2)
    assert labels == ["a:-|b:RGA", "diverged"]  # only forward RGA holds; the second diverges
    assert confidence[0] == pytest.approx(norm.cdf(1.0) * (1 - norm.cdf(-2.0)), rel=1e-6)
    assert confidence[1] == pytest.approx(norm.cdf(1.0), rel=1e-6)


def fake_records(cells, done, truth, rng_seed=0) -> pd.DataFrame:
    """Records of the networks in `done`: every alignment of a network = truth(cell) + noise."""
    rows = []
    for cell in cells:
        for k, h in enumerate(cell.hashes):
            if h not in done:
                continue
            value = truth(cell.point) + np.random.default_rng([rng_seed, int(h[:8], 16)]).normal(0, 0.02)
            for layer in (1, 2, 3):
                row = {"sweep_id": "b", "run_id": "r", "member": k, "config_hash": h, "step": 10, "layer": layer,
                       "n_layers": 3, "depth": 2, "head": None, "status": "ok"}
                row.update({c: value for c in ALIGNMENT_COLUMNS}, **{f"{c}_null": 0.1 for c in ALIGNMENT_COLUMNS})
                rows.append(row)
    return pd.DataFrame(rows)


def test_a_search_replayed_on_a_known_boundary_finds_it_with_a_third_of_the_networks():
    # alignment crosses tau = 0.9 on a line in (log weight decay, log lr): CRH above it, none below
    cfg = sweep({"optimizer.weight_decay": [0.0] + [float(f"{v:.3g}") for v in np.geomspace(1e-4, 1e-1, 9)],
                 "optimizer.lr": {"low": 1e-3, "high": 1e-1, "log": True}}, resolution=6, per_round=6)

    def truth(point):
        wd = max(point["optimizer.weight_decay"], 1e-5)
        return 0.9 + 0.3 * math.tanh(math.log10(wd) + 0.5 * math.log10(point["optimizer.lr"]) + 3.0)

    cells = boundary.grid_cells(cfg)
    assert len(cells) == 60
    done: dict[str, str] = {}
    for _ in range(20):
        chosen, _ = boundary.plan(cfg, done=done, table=fake_records(cells, done, truth), cells=cells).next_cells()
        if not chosen:
            break
        done |= {h: "r" for i in chosen for h in cells[i].hashes}
    assert len(done) <= 60 / 3  # the default budget: a third of the grid
    p = boundary.plan(cfg, done=done, table=fake_records(cells, done, truth), cells=cells)
    cells_out = boundary.predict(p, fake_records(cells, done, truth), 0.9, "last", "raw")
    want = ["CRH" if truth(c.point) >= 0.9 else "none" for c in cells]
    assert (cells_out["phase"].to_numpy() == np.array(want)).mean() >= 0.95
    assert cells_out["measured"].sum() == len(done)
    inferred = cells_out[cells_out["measured"] == 0]
    assert len(inferred) >= 40 and inferred["confidence"].between(0, 1).all()
    assert list(cells_out.columns) == ["lr", "weight_decay", "phase", "measured", "confidence"]


@pytest.mark.parametrize("axes, search, field", [
    ({"optimizer.weight_decay": [0.0, 1e-3], "optimizer.lr": [0.1]}, {}, "axes.optimizer.lr: `a boundary axis has at least 2"),
    ({"optimizer.weight_decay": [0.0, 1e-3, 1e-2]}, {"budget": 1}, "search.budget: `budget >= networks of the initial"),
    ({"optimizer.weight_decay": [0.0, 1e-3, 1e-2]}, {"initial": 4}, "search.initial: `initial <= cells of the grid (3)`"),
    ({"optimizer.weight_decay": [0.0, 1e-3]}, {"layer": "each"}, "search.layer: `layer is an index >= 1"),
    ({"train.seed": [0, 1]}, {}, "axes: `a boundary search has an axis other than train.seed`"),
    ({"optimizer.lr": {"low": 0.1, "high": 0.01}}, {}, "axes.optimizer.lr: `low < high"),
    ({"optimizer.weight_decay": [0.0, 1e-3], "model.depth": [2, 4]}, {"layer": 4},
     "search.layer: `layer <= the layers of every network (an MLP of depth 2 has 3)`"),
])
def test_a_boundary_search_it_cannot_run_is_refused_naming_the_field(axes, search, field):
    with pytest.raises(ConfigError) as e:
        sweep(axes, **search)
    assert any(p.startswith(field) for p in e.value.problems), e.value.problems


def test_judging_against_the_null_needs_a_measured_null():
    data = {"name": "b", "base": {**BASE, "probe": {"null_samples": 0}}, "axes": {"optimizer.weight_decay": [0.0, 1e-3]},
            "search": {"mode": "boundary", "against": None}}  # YAML's `against: null` is None: read as "null"
    with pytest.raises(ConfigError) as e:
        parse_sweep(data)
    assert e.value.problems == ["search.against: `probe.null_samples > 0` must hold to judge against the null, but "
                                "got null_samples=0 (no null is measured)"]
    data["base"]["probe"]["null_samples"] = 2
    assert parse_sweep(data).search.against == "null"


def test_the_default_budget_is_a_third_of_the_grid_and_never_below_the_first_design():
    cfg = sweep({"optimizer.weight_decay": [0.0, 1e-3, 1e-2], "optimizer.lr": [0.01, 0.1, 0.2]})
    cells = boundary.grid_cells(cfg)
    assert boundary.design_size(cfg, 9) == 8 and boundary.budget(cfg, cells) == 8  # a third would be 3
    cfg = sweep({"optimizer.weight_decay": [0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0], "optimizer.lr": [0.01, 0.02, 0.05, 0.1, 0.2]},
                per_round=2)
    assert boundary.budget(cfg, boundary.grid_cells(cfg)) == 10  # 30 cells / 3; the design is 4


def test_validate_refuses_a_budget_below_the_first_design_with_exit_2(tmp_path, capsys):
    path = tmp_path / "b.yaml"
    path.write_text("name: b\nbase: {task: {name: fc1, input_dim: 8}, train: {steps: 10, seed: [0, 1]}}\n"
                    "axes: {optimizer.weight_decay: [0.0, 1.0e-3, 1.0e-2], optimizer.lr: [0.01, 0.1]}\n"
                    "search: {mode: boundary, budget: 7}\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "search.budget: `budget >= networks of the initial design (6 cells, 12 networks)`" in err
    path.write_text(path.read_text().replace("budget: 7", "budget: 12"))
    assert main(["validate", str(path)]) == 0
    assert "6 cells, 12 networks; budget 12 networks, first design 6 cells" in capsys.readouterr().out


def test_predict_on_a_grid_sweep_gives_its_measured_cells(tmp_path, capsys):
    cfg = parse_config({**BASE, "name": "g", "optimizer": {"weight_decay": [0.0, 1e-2], "lr": 0.05},
                        "train": {"steps": 20, "batch_size": 16, "seed": [0, 1]}, "pairing": "product",
                        "probe": {"n_samples": 50, "count": 2, "null_samples": 0},
                        "storage": {"root": str(tmp_path), "sweep_id": "g"}})
    result = train_pack(cfg)
    out = tmp_path / "cells.csv"
    assert main(["predict", str(tmp_path), "--out", str(out), "--tau", "0.5"]) == 0
    assert "sweep g: 2 cells, 2 measured, 0 inferred" in capsys.readouterr().out
    cells = pd.read_csv(out, dtype={"phase": str})
    assert list(cells.columns) == ["weight_decay", "phase", "measured", "confidence"]
    assert cells["measured"].tolist() == [2, 2]
    from phasemap.analysis.aggregate import last_hidden
    from phasemap.measure.phases import label_phases

    last = last_hidden(result.records)
    last = last[last["layer"] == 2]
    for _, cell in cells.iterrows():  # the majority of its networks' labels, and its share
        labels = label_phases(last[last["weight_decay"] == cell["weight_decay"]], 0.5).value_counts()
        assert cell["confidence"] == pytest.approx(labels.max() / 2)
        assert cell["phase"] == (labels.idxmax() if labels.max() == 2 else "no majority")  # more than half
    assert main(["predict", str(tmp_path), "--sweep", "nope"]) == 2
    assert "--sweep: `a sweep under" in capsys.readouterr().err
    for bad, message in ((["--layer", "foo"], "--layer: `an index >= 1"), (["--layer", "each"], "--layer: `an index"),
                         (["--layer", "7"], "--layer: `a layer of the networks` must hold, but got 7 (they have 3"),
                         (["--tau", "1.5"], "--tau: `0 < tau < 1`"),
                         (["--against", "null"], "--against: `a null was measured")):  # null_samples 0 here
        assert main(["predict", str(tmp_path), *bad]) == 2, bad
        assert message in capsys.readouterr().err, bad
