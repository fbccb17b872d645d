"""Aggregation by value on synthetic records with planted phases and critical depths."""

import math

import numpy as np
import pandas as pd
import pytest
from synthetic import HIGH, LOW, default_l_star, synthetic_records

from phasemap.analysis.aggregate import critical_depth_map, evolution, layer_profile, pah_table, phase_grid, pick_layer


@pytest.fixture(scope="module")
def records():
    return synthetic_records(missing={(8, 1e-4)}, diverged={(2, 1e-2, 1)})


def cell(table, **where):
    mask = np.ones(len(table), dtype=bool)
    for k, v in where.items():
        mask &= table[k].to_numpy() == v
    assert mask.sum() == 1, where
    return table[mask].iloc[0]


def test_phase_grid_recovers_planted_phases_and_missing_cells(records):
    grid = phase_grid(records, x="weight_decay", y="depth", tau=0.9)
    assert len(grid) == 3 * 4  # every (depth, wd) cell, the missing one included
    for depth in (2, 4, 8):
        for wd in (0.0, 1e-4, 1e-3, 1e-2):
            c = cell(grid, depth=depth, weight_decay=wd)
            if (depth, wd) == (8, 1e-4):
                assert c["n"] == 0 and pd.isna(c["phase"])
                continue
            star = default_l_star(depth, wd)
            expected = "none" if star is None else ("CRH" if wd >= 1e-3 else "1")
            assert c["n"] == 3
            if (depth, wd) == (2, 1e-2):  # one of three seeds diverged
                assert c["phase"] == "CRH" and c["share"] == pytest.approx(2 / 3)
            else:
                assert c["phase"] == expected and c["share"] == 1.0


def test_phase_grid_means_and_spreads(records):
    grid = phase_grid(records, x="weight_decay", y="depth", tau=0.9)
    c = cell(grid, depth=4, weight_decay=1e-3)
    assert c["rga_b_mean"] == pytest.approx(HIGH) and c["rga_b_std"] == pytest.approx(0.0)
    c = cell(grid, depth=4, weight_decay=1e-4)
    assert c["rwa_b_mean"] == pytest.approx(LOW) and c["rga_b_mean"] == pytest.approx(HIGH)


def test_phase_grid_at_the_first_layer_and_at_a_fraction_of_depth(records):
    first = phase_grid(records, x="weight_decay", y="depth", layer=1)
    # depth 4, wd 1e-2: l* = 1, so layer 1 aligns; wd 1e-4: l* = 3, layer 1 does not
    assert cell(first, depth=4, weight_decay=1e-2)["phase"] == "CRH"
    assert cell(first, depth=4, weight_decay=1e-4)["phase"] == "none"
    half = phase_grid(records, x="weight_decay", y="depth", layer=0.5)  # layer 2 of 4, 4 of 8
    assert cell(half, depth=4, weight_decay=1e-3)["phase"] == "CRH"  # l* = 2
    assert cell(half, depth=8, weight_decay=1e-3)["phase"] == "none"  # l* = 6 > 4


def test_phase_grid_with_each_layer_and_facets(records):
    each = phase_grid(records, x="weight_decay", y="depth", layer="each", facets=["width"])
    c = cell(each, width=64, depth=4, weight_decay=1e-2, layer=5)  # the output layer never aligns here
    assert c["phase"] == "none"
    assert cell(each, width=64, depth=4, weight_decay=1e-2, layer=2)["phase"] == "CRH"


def test_critical_depth_map_recovers_planted_depths(records):
    cd = critical_depth_map(records, x="weight_decay", y="depth", relation="rga_b", tau=0.9)
    for depth in (2, 4, 8):
        for wd in (0.0, 1e-4, 1e-3, 1e-2):
            c = cell(cd, depth=depth, weight_decay=wd)
            if (depth, wd) == (8, 1e-4):
                assert c["n"] == 0
                continue
            star = default_l_star(depth, wd)
            diverged = 1 if (depth, wd) == (2, 1e-2) else 0
            assert c["n"] == 3 - diverged and c["n_diverged"] == diverged
            if star is None:
                assert c["n_aligned"] == 0 and math.isnan(c["l_star_mean"])
            else:
                assert c["n_aligned"] == 3 - diverged
                assert c["l_star_mean"] == star and c["l_star_frac_mean"] == pytest.approx(star / depth)


def test_layer_profile_and_evolution(records):
    prof = layer_profile(records[records["width"] == 64], by=["depth", "weight_decay"])
    c = cell(prof, depth=4, weight_decay=1e-4, layer=3)  # l* = 3: aligned, phase 1 relations only
    assert c["rga_b_mean"] == pytest.approx(HIGH) and c["gwa_b_mean"] == pytest.approx(LOW) and c["n"] == 3
    assert cell(prof, depth=4, weight_decay=1e-4, layer=2)["rga_b_mean"] == pytest.approx(LOW)
    evo = evolution(records, "rga_b", layer="last", by=["depth", "weight_decay"])
    curve = evo[(evo["depth"] == 4) & (evo["weight_decay"] == 1e-3)].set_index("step")["rga_b_mean"]
    assert curve.to_dict() == pytest.approx({0: LOW, 100: LOW, 1000: HIGH})


def test_pah_table_averages_exponents_per_layer():
    df = synthetic_records(depths=(2,), weight_decays=(1e-3,), seeds=(0, 1))
    df.loc[df["member"] == 0, "pah_hg_b"] = 1.0
    df.loc[df["member"] == 1, "pah_hg_b"] = 2.0
    table = pah_table(df, by=["depth"])
    row = table[(table["layer"] == 1) & (table["side"] == "b") & (table["pair"] == "hg")].iloc[0]
    assert row["exponent"] == pytest.approx(1.5) and row["exponent_std"] == pytest.approx(math.sqrt(0.5))


def test_pick_layer_rejects_nonsense():
    with pytest.raises(ValueError, match="got 0"):
        pick_layer(synthetic_records(depths=(2,), weight_decays=(0.0,)), 0)
