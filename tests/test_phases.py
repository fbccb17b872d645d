"""Phase labels (paper Table 1) and critical depth on planted values."""

import math

import numpy as np
import pandas as pd
import pytest

from phasemap.measure.phases import ALIGNMENT_COLUMNS, NUMBERED_PHASES, critical_depth, label_phases, phase_of

HIGH, LOW = 0.95, 0.2


def row(backward, forward, status="ok"):
    r = {f"{rel.lower()}_a": HIGH if rel in backward else LOW for rel in ("RGA", "RWA", "GWA")}
    r.update({f"{rel.lower()}_b": HIGH if rel in forward else LOW for rel in ("RGA", "RWA", "GWA")})
    r["status"] = status
    return r


TABLE_1 = [
    ({"RGA", "RWA", "GWA"}, {"RGA", "RWA", "GWA"}, "CRH"),
    ({"RGA", "RWA", "GWA"}, {"RGA"}, "backward-CRH"),
    ({"RGA", "RWA", "GWA"}, set(), "backward-CRH"),
    ({"RWA", "GWA"}, {"RGA", "RWA", "GWA"}, "forward-CRH"),
    ({"RGA"}, {"RGA"}, "1"),
    ({"RWA"}, {"RWA"}, "2"),
    ({"GWA"}, {"GWA"}, "3"),
    ({"RGA"}, {"RWA"}, "4"),
    ({"RWA"}, {"RGA"}, "5"),
    ({"RGA"}, {"GWA"}, "6"),
    ({"GWA"}, {"RGA"}, "7"),
    ({"RWA"}, {"GWA"}, "8"),
    ({"GWA"}, {"RWA"}, "9"),
    ({"RGA", "RWA"}, set(), "a:RGA+RWA|b:-"),
    (set(), {"GWA"}, "a:-|b:GWA"),
    ({"RWA"}, {"RGA", "GWA"}, "a:RWA|b:RGA+GWA"),
    (set(), set(), "none"),
]


@pytest.mark.parametrize("backward,forward,expected", TABLE_1)
def test_each_table_1_combination_gives_its_phase(backward, forward, expected):
    assert phase_of(backward, forward) == expected
    table = pd.DataFrame([row(backward, forward)])
    assert label_phases(table, tau=0.9).iloc[0] == expected


def test_all_nine_numbered_phases_are_distinct():
    assert sorted(NUMBERED_PHASES.values()) == [str(i) for i in range(1, 10)]


def test_relabelling_at_another_threshold_changes_the_phase():
    table = pd.DataFrame([{c: 0.85 for c in ALIGNMENT_COLUMNS}])
    assert label_phases(table, 0.9).iloc[0] == "none"
    assert label_phases(table, 0.8).iloc[0] == "CRH"


def test_nan_does_not_hold_and_diverged_rows_are_labelled():
    r = {c: 0.95 for c in ALIGNMENT_COLUMNS}
    r["rga_b"] = r["rwa_b"] = r["gwa_b"] = float("nan")  # a 1x1 output layer
    table = pd.DataFrame([r, dict(row({"RGA"}, {"RGA"}), status="diverged")])
    assert list(label_phases(table, 0.9)) == ["backward-CRH", "diverged"]


@pytest.mark.parametrize(
    "alphas,expected",
    [
        ([0.1, 0.5, 0.95, 0.97], 3.0),
        ([0.95, 0.2, 0.95, 0.97], 3.0),  # a later dip resets: every layer from l* must align
        ([0.95, 0.96, 0.97, 0.99], 1.0),
        ([0.95, 0.96, 0.97, 0.5], math.nan),
        ([0.1, float("nan"), 0.99], 3.0),
    ],
)
def test_critical_depth_of_a_network(alphas, expected):
    depth = len(alphas)
    table = pd.DataFrame({"run_id": "r", "member": 0, "step": 1, "depth": depth,
                          "layer": np.arange(1, depth + 1), "rga_b": alphas})
    got = critical_depth(table, "rga_b", 0.9)["l_star"].iloc[0]
    assert (math.isnan(got) and math.isnan(expected)) or got == expected


def test_critical_depth_is_undefined_when_a_hidden_layer_is_missing():
    table = pd.DataFrame({"run_id": "r", "member": 0, "step": 1, "depth": 3, "layer": [1, 3], "rga_b": [0.95, 0.95]})
    assert math.isnan(critical_depth(table, "rga_b", 0.9)["l_star"].iloc[0])


def test_critical_depth_table_uses_hidden_layers_only_and_reports_fraction():
    rows = []
    for member, alphas in enumerate([[0.1, 0.2, 0.95, 0.99], [0.1, 0.2, 0.3, 0.4]]):
        for layer, a in enumerate(alphas + [0.99], start=1):  # layer 5 = output, ignored
            rows.append({"run_id": "r", "member": member, "step": 10, "layer": layer, "depth": 4,
                         "rga_b": a, "status": "ok"})
    cd = critical_depth(pd.DataFrame(rows), "rga_b", 0.9)
    assert cd["l_star"].iloc[0] == 3.0 and cd["l_star_frac"].iloc[0] == 0.75
    assert math.isnan(cd["l_star"].iloc[1])


def test_critical_depth_leaves_out_per_head_rows():
    # whole layers 1..3 all align (l* = 1); per-head rows of layer 2 (probe.per_head, head set)
    # do not, and must not count: aggregate leaves them out the same way
    rows = [{"run_id": "r", "member": 0, "step": 1, "layer": l, "n_layers": 4, "depth": 1, "head": math.nan,
             "rga_b": 0.95} for l in (1, 2, 3, 4)]
    rows += [{"run_id": "r", "member": 0, "step": 1, "layer": 2, "n_layers": 4, "depth": 1, "head": h,
              "rga_b": 0.1} for h in (1, 2)]
    cd = critical_depth(pd.DataFrame(rows), "rga_b", 0.9)
    assert len(cd) == 1 and cd["l_star"].iloc[0] == 1.0 and cd["l_star_frac"].iloc[0] == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    "steps,held_out,soon,expected",
    [
        # the case: train crosses at 347; held-out 0.899 at 347, next probe 1,500. The
        # crossing lies in (347, 1500]: it may be at 348 <= 2 x 347, so the delay is not resolved
        ([0, 347, 1500], [0.0, 0.899, 0.95], 2.0, "unresolved"),
        # probes dense enough: the crossing lies in (800, 1000], after 2 x 347 = 694 whatever it is
        ([0, 347, 800, 1000], [0.0, 0.5, 0.6, 0.95], 2.0, "grokking"),
        # earliest possible crossing 695 > 694: resolved by one step; at 694 it is not
        ([0, 347, 694, 1000], [0.0, 0.5, 0.6, 0.95], 2.0, "grokking"),
        ([0, 347, 693, 1000], [0.0, 0.5, 0.6, 0.95], 2.0, "unresolved"),
        # crossing seen at 694 = 2 x 347: comprehension whatever lies before it
        ([0, 347, 694], [0.0, 0.5, 0.95], 2.0, "comprehension"),
        # a larger `soon` makes the same sparse probes resolve comprehension
        ([0, 347, 1500], [0.0, 0.899, 0.95], 5.0, "comprehension"),
    ],
)
def test_grokking_needs_the_delay_resolved_by_the_probes(steps, held_out, soon, expected):
    from phasemap.measure.phases import learning_outcome

    # train reaches the threshold at 347 and is probed just before (346): its crossing is at 347
    steps, held_out = [0, 346, *steps[1:]], [0.0, 0.0, *held_out[1:]]
    train = [0.0, 0.5] + [1.0] * (len(steps) - 2)
    outcome, t_train, t_held = learning_outcome(steps, train, held_out, 0.9, soon)
    assert (outcome, t_train, t_held) == (expected, 347, steps[-1])  # the held-out crossing is at the last probe


@pytest.mark.parametrize(
    "steps,train,held_out,soon,expected",
    [
        # the reviewer's case: train seen crossing at 1000 lies in (0, 1000] (perhaps step 1),
        # held-out in (1000, 2000]: neither comprehension (2000 > 2 x 1) nor grokking (1001 <= 2 x 1000)
        ([0, 1000, 2000], [0.1, 1, 1], [0.1, 0.5, 1.0], 2.0, ("unresolved", 1000, 2000)),
        # the same run probed densely: train crosses in (0, 10], held-out in (1000, 1500]: grokking
        ([0, 10, 500, 1000, 1500, 2000], [0.1, 0.95, 1, 1, 1, 1], [0.1, 0.2, 0.3, 0.5, 0.95, 1.0], 2.0,
         ("grokking", 10, 1500)),
        # the train crossing bracketed (999, 1000]: held-out by 2000 <= 2 x 1000 is comprehension
        ([0, 999, 1000, 2000], [0.1, 0.5, 1, 1], [0.1, 0.2, 0.5, 1.0], 2.0, ("comprehension", 1000, 2000)),
        # the held-out crossing (347, 694] within `soon` of 347, but train's (0, 347] may be at step 1
        ([0, 347, 694], [0.0, 1, 1], [0.0, 0.5, 0.95], 2.0, ("unresolved", 347, 694)),
        # a larger `soon` no longer resolves the sparse train crossing either: 1500 > 5 x 1
        ([0, 347, 1500], [0.0, 1, 1], [0.0, 0.899, 0.95], 5.0, ("unresolved", 347, 1500)),
        # train at the first probe (step 0): it crossed at 0 exactly; held-out at 0 is comprehension,
        # held-out in (2, 10] grokking (3 > 2 x 1)
        ([0, 10], [1, 1], [0.95, 1], 2.0, ("comprehension", 0, 0)),
        ([0, 2, 10], [1, 1, 1], [0, 0, 1], 2.0, ("grokking", 0, 10)),
        ([0, 1, 10], [1, 1, 1], [0, 0, 1], 2.0, ("unresolved", 0, 10)),
    ],
)
def test_the_train_crossing_is_bracketed_by_the_probes_too(steps, train, held_out, soon, expected):
    from phasemap.measure.phases import learning_outcome

    assert learning_outcome(steps, train, held_out, 0.9, soon) == expected


def test_learning_phases_mark_unresolved_networks_and_the_figure_warns():
    from phasemap.analysis.aggregate import learning_phase_grid, learning_phases
    from phasemap.figures.report import FigureOptions, make_figure

    rows = []
    for net, (steps, train, held) in enumerate([
            ([0, 346, 347, 1500], [0, 0.5, 1, 1], [0.0, 0.0, 0.899, 0.95]),  # held-out too sparse for --soon 2
            ([0, 346, 347, 800, 1000], [0, 0.5, 1, 1, 1], [0.0, 0.0, 0.5, 0.6, 0.95]),  # grokking
            ([0, 1000, 2000], [0.1, 1, 1], [0.1, 0.5, 1.0])]):  # train too sparse: it may cross at step 1
        for step, a, b in zip(steps, train, held):
            rows.append({"sweep_id": "s", "run_id": f"r{net}", "member": 0, "step": step, "status": "ok",
                         "weight_decay": float(net), "depth": 1, "seed": 0, "data_seed": 0,
                         "train_accuracy": a, "probe_accuracy": b})
    df = pd.DataFrame(rows)
    nets = learning_phases(df).set_index("run_id")
    assert nets["outcome"].to_dict() == {"r0": "unresolved", "r1": "grokking", "r2": "unresolved"}
    # where the crossings may lie: (train_after, train_step] and (held_out_after, held_out_step]
    assert (nets.loc["r0", "held_out_after"], nets.loc["r0", "held_out_step"]) == (347, 1500)
    assert (nets.loc["r0", "train_after"], nets.loc["r0", "train_step"]) == (346, 347)
    assert (nets.loc["r2", "train_after"], nets.loc["r2", "train_step"]) == (0, 1000)
    grid = learning_phase_grid(df, "weight_decay", "depth").set_index("weight_decay")
    assert grid["phase"].to_dict() == {0.0: "unresolved", 1.0: "grokking", 2.0: "unresolved"}
    assert grid["n_unresolved"].to_dict() == {0.0: 1, 1.0: 0, 2.0: 1}
    assert grid.loc[1.0, "grok_step_mean"] == 1000 and math.isnan(grid.loc[0.0, "grok_step_mean"])
    _, table, caption = make_figure(df, "learning-phase", FigureOptions(x="weight_decay", y="depth"))
    assert "2 of 3 networks unresolved" in caption and "too sparse for --soon 2" in caption
    # --soon 5 resolves r0 and r1 (comprehension: 1500 <= 5 x 347) but not r2 (2000 > 5 x 1, 1001 <= 5 x 1000)
    _, table, caption = make_figure(df, "learning-phase", FigureOptions(x="weight_decay", y="depth", soon=5))
    assert "1 of 3 networks unresolved" in caption and "too sparse for --soon 5" in caption
    assert table.set_index("weight_decay")["phase"].to_dict() == {0.0: "comprehension", 1.0: "comprehension",
                                                                  2.0: "unresolved"}
