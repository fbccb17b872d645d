"""train.stop: the settling rule on hand-made values, packs that stop early or run on, config errors."""

import json
import math

import pandas as pd
import pytest

from phasemap import train_pack
from phasemap.analysis.aggregate import last_hidden
from phasemap.cli import main
from phasemap.config import ConfigError, parse_config
from phasemap.records import COMPLETE, read_file
from phasemap.train.stopping import Settling, is_settled, next_probe, pack_done, worst_stationarity
from test_train import small

nan = math.nan


# ----------------------------------------------------------------------------- the rule


def test_settled_needs_patience_probes_below_and_a_flat_loss():
    flat = [1.0, 0.5, 0.5, 0.5]
    assert is_settled([nan, 0.01, 0.01, 0.01], flat, 0.02, 2, 0.01)
    assert not is_settled([nan, 0.01, 0.03, 0.01], flat, 0.02, 2, 0.01)  # one above: patience starts again
    assert is_settled([nan, 0.03, 0.01, 0.01], flat, 0.02, 2, 0.01)
    assert not is_settled([nan, 0.01, 0.01, 0.01], flat, 0.02, 4, 0.01)  # the first probe has no stat
    assert not is_settled([nan, 0.01, nan, 0.01], flat, 0.02, 2, 0.01)  # NaN is never below
    assert not is_settled([nan, 0.01], [1.0, 0.5], 0.02, 1, 0.01)  # the loss halved: still falling
    assert is_settled([nan, 0.01], [1.0, 0.995], 0.02, 1, 0.01)  # fell by 0.5% < 1%: flat
    assert not is_settled([nan, 0.01], [1.0, 0.985], 0.02, 1, 0.01)  # 1.5% > 1%
    assert is_settled([nan, 0.01], [1.0, 1.2], 0.02, 1, 0.01)  # rising counts as not falling
    assert not is_settled([0.01], [1.0], 0.02, 1, 0.01)  # one interval: no trend to judge


def test_worst_stationarity_is_the_largest_over_hidden_layers_and_sides():
    values = [{"stat_h_b": [0.01, 0.01], "stat_g_b": [0.02, 0.01]},
              {"stat_h_b": [0.05, 0.01], "stat_g_b": [0.01, nan]},
              {"stat_h_b": [9.0, 9.0], "stat_g_b": [9.0, 9.0]}]  # the output layer: not passed
    assert worst_stationarity(values, [0, 1], 2)[0] == 0.05
    assert math.isnan(worst_stationarity(values, [0, 1], 2)[1])  # any NaN: not judged
    assert worst_stationarity(values, [0], 2) == [0.02, 0.01]


def test_probes_are_even_after_the_first_settle_and_close_ones_do_not_count():
    schedule = [0, 10, 100, 1000, 10000]
    assert next_probe(-1, schedule, None, 10000) == 0
    assert next_probe(100, schedule, None, 10000) == 1000
    assert next_probe(1000, schedule, 900, 10000) == 1900
    assert next_probe(9500, schedule, 900, 10000) == 10000  # never past the last step

    s = Settling(K=2, stationary=0.1, patience=1, loss_tolerance=0.01, min_gap=50)
    assert s.update(0, [nan, nan], [1.0, 1.0]) == [False, False]
    assert s.update(10, [0.01, 0.01], [1.0, 1.0]) == [False, False]  # 10 steps < min_gap: not judged
    assert s.interval is None
    assert s.update(100, [0.01, 0.5], [1.0, 1.0]) == [True, False]
    assert (s.first_settled, s.interval) == (100, 90)  # the gap of the last two probes
    assert s.update(190, [0.5, 0.01], [1.0, 1.0]) == [False, True]  # judged afresh: member 0 moved again
    s2 = Settling(K=2, stationary=0.1, patience=1, loss_tolerance=0.01, min_gap=50)
    s2.load(None)  # a checkpoint without train.stop state: a fresh history
    assert s2.probes == [] and s2.stats == [[], []]
    s2 = Settling(K=2, stationary=0.1, patience=1, loss_tolerance=0.01, min_gap=50)
    s2.load(json.loads(json.dumps(s.state())))
    assert (s2.probes, s2.interval) == ([0, 10, 100, 190], 90)


def test_a_pack_is_done_when_each_member_settled_or_diverged():
    assert pack_done([True, True], ["ok", "ok"])
    assert not pack_done([True, False], ["ok", "ok"])
    assert pack_done([True, False], ["ok", "diverged"])
    assert not pack_done([False, False], ["diverged", "diverged"])  # nothing settled: runs on as before


# ----------------------------------------------------------------------------- config


def test_stop_is_off_by_default_and_keeps_the_config_hash():
    cfg = small()
    assert not cfg.train.stop.enabled
    assert "stop" not in json.dumps({k: v for k, v in cfg.to_dict()["train"].items() if k != "stop"})
    # the hash of this config before train.stop existed (phasemap at 5b36cb2)
    data = {"name": "t", "task": {"name": "fc1", "input_dim": 8, "teacher_width": 8},
            "model": {"depth": 3, "width": 8}, "train": {"steps": 40, "device": "cpu"}}
    assert parse_config(data).config_hash() == "93ecc74889f7"
    on = parse_config({**data, "train": {**data["train"], "stop": {"stationary": 0.02}}})
    assert on.train.stop.enabled and on.train.stop.patience == 2
    assert on.config_hash() != "93ecc74889f7"
    assert on.member_config(on.members[0]).train.stop == on.train.stop
    off = parse_config({**data, "train": {**data["train"], "stop": {"stationary": 0}}})  # 0: off, as by default
    assert off.config_hash() == "93ecc74889f7" and off.member_config(off.members[0]).config_hash() == "93ecc74889f7"


@pytest.mark.parametrize("stop, probe, needle", [
    ({"stationary": -0.1}, {}, "train.stop.stationary: `stationary > 0 (0: off)` must hold, but got -0.1"),
    ({"stationary": 0.02, "patience": 0}, {}, "train.stop.patience: `patience >= 1` must hold, but got 0"),
    ({"patience": 3}, {}, "train.stop.stationary: `stationary > 0` must be given"),
    ({"stationary": 0.02, "patience": 2}, {"steps": [], "count": 0}, "train.stop: `at least patience + 1 probes`"),
    ({"stationary": 0.02, "patience": 4}, {"steps": [10, 20]}, "got 4 probe(s) with patience=4"),
    ({"stationary": 0.02, "patiense": 3}, {}, "train.stop.patiense: unknown key; did you mean `patience`?"),
])
def test_stop_errors_name_the_field(stop, probe, needle):
    with pytest.raises(ConfigError) as e:
        small(train__stop=stop, **{f"probe__{k}": v for k, v in probe.items()})
    assert needle in str(e.value)


def test_cli_validate_exits_2_on_stop_with_too_few_probes(tmp_path, capsys):
    f = tmp_path / "stop.yaml"
    f.write_text("train:\n  steps: 100\n  stop: {stationary: 0.02, patience: 2}\nprobe:\n  count: 0\n")
    out = tmp_path / "out"
    assert main(["validate", str(f)]) == 2
    assert main(["run", str(f), "--out", str(out)]) == 2
    assert "train.stop" in capsys.readouterr().err and not out.exists()


# ----------------------------------------------------------------------------- packs

# tanh nets on fc1 whose H and G change by < 0.25 between the probes at 78 and 135 (lr 0.01)
STOP = {"stationary": 0.25, "patience": 2, "loss_tolerance": 0.5}


def stopping(**over):
    spec = dict(model__activation="tanh", optimizer__weight_decay=1e-2, optimizer__lr=[0.01], train__steps=400,
                train__stop=STOP, probe__steps=[], probe__count=12, probe__null_samples=0)
    return small(**{**spec, **over})


def test_a_settled_pack_stops_early_and_is_complete(tmp_path):
    cfg = stopping(optimizer__lr=[0.01, 50.0])  # the second member diverges: done for the pack
    result = train_pack(cfg, root=str(tmp_path))
    table = result.records
    assert result.status == ["settled", "diverged"]
    assert result.last_step == table["step"].max() == 135 < cfg.train.steps
    final = table[(table["member"] == 0) & (table["step"] == 135)]
    assert len(final) == 4 and set(final["status"]) == {"settled"}
    assert set(table[(table["member"] == 0) & (table["step"] < 135)]["status"]) == {"ok"}
    gone = table[table["member"] == 1]
    assert set(gone[gone["step"] == gone["step"].max()]["status"]) == {"diverged"}
    summary = json.loads(read_file(str(tmp_path), cfg.storage.sweep_id, result.run_id, COMPLETE))
    assert summary["status"] == ["settled", "diverged"] and summary["last_step"] == 135
    # a settled network is a finished one: aggregates take its last step
    assert set(last_hidden(table)["step"]) == {135} and len(last_hidden(table)) == 3
    from phasemap.sweep.status import stored_status
    (pack,) = stored_status(str(tmp_path), cfg.storage.sweep_id)
    assert (pack["state"], pack["last_step"], pack["steps"]) == ("complete", 135, 400)
    again = train_pack(cfg, root=str(tmp_path))
    assert again.reused and again.last_step == 135 and again.status == ["settled", "diverged"]
    assert len(again.records) == len(table)


def test_a_pack_runs_to_the_end_while_a_member_has_not_settled(tmp_path):
    cfg = stopping(optimizer__lr=[0.01, 0.05], train__stop={**STOP, "stationary": 0.2})
    result = train_pack(cfg, root=str(tmp_path))
    table = result.records
    assert result.last_step == table["step"].max() == 400
    assert result.status == ["settled", "ok"]  # member 0 settled at 232 and trained on, recorded
    steps = sorted(table["step"].unique())
    assert steps[steps.index(232):] == [232, 329, 400]  # every 97 steps (the gap 135 -> 232) from the settle
    assert set(table[table["step"] == 400].groupby("member")["status"].first()) == {"settled", "ok"}
    assert set(table[table["step"] < 400]["status"]) == {"ok"}


class Killed(Exception):
    pass


def test_a_stopping_run_killed_after_the_first_settle_resumes_to_the_same_end(tmp_path):
    cfg = stopping(optimizer__lr=[0.01, 0.05], train__stop={**STOP, "stationary": 0.2}, train__checkpoint_every=50)

    def die_at_310(step):  # after the settle at 232, checkpointed at 300, before the probe at 329
        if step == 310:
            raise Killed

    with pytest.raises(Killed):
        train_pack(cfg, root=str(tmp_path / "a"), progress=die_at_310)
    resumed = train_pack(cfg, root=str(tmp_path / "a"))
    straight = train_pack(cfg, root=str(tmp_path / "b"))
    assert resumed.status == straight.status == ["settled", "ok"] and resumed.last_step == 400
    key = ["member", "step", "layer"]
    cols = key + ["status", "train_loss", "stat_h_b", "stat_g_b", "rga_b"]
    pd.testing.assert_frame_equal(resumed.records.sort_values(key).reset_index(drop=True)[cols],
                                  straight.records.sort_values(key).reset_index(drop=True)[cols])
