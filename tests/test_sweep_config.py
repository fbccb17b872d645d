"""Sweep configs: validation before Ray starts, grid expansion into packs (no Ray needed)."""

from pathlib import Path

import pytest

from phasemap import ConfigError
from phasemap.cli import main
from phasemap.sweep import expand, load_sweep, parse_sweep
from phasemap.train import run_id_of

CONFIGS = Path(__file__).parent.parent / "configs"


def sweep(**over):
    data = {
        "name": "s",
        "base": {"task": {"name": "fc1", "input_dim": 8}, "train": {"steps": 20, "batch_size": 16},
                 "probe": {"n_samples": 32}},
        "axes": {"model.depth": [1, 2], "optimizer.weight_decay": [0.0, 1e-3, 1e-2], "train.seed": [0, 1]},
    }
    data.update(over)
    return parse_sweep(data)


def test_grid_groups_configs_of_one_shape_into_packs():
    packs = expand(sweep())
    assert len(packs) == 2  # one per depth
    assert sorted(len(p.members) for p in packs) == [6, 6]
    members = {(p.model.depth, m.weight_decay, m.seed) for p in packs for m in p.members}
    assert len(members) == 12


def test_pack_size_splits_packs_and_ids_are_stable():
    packs = expand(sweep(pack_size=4))
    assert sorted(len(p.members) for p in packs) == [2, 2, 4, 4]
    again = expand(sweep(pack_size=4))
    assert [p.config_hash() for p in packs] == [p.config_hash() for p in again]
    hashes = [p.member_config(m).config_hash() for p in packs for m in p.members]
    assert len(set(hashes)) == 12


def test_a_mapping_axis_sets_several_fields():
    cfg = sweep(axes={"optimizer": [{"name": "sgd", "lr": 0.1, "momentum": 0.9}, {"name": "adam", "lr": 1e-3}]})
    packs = expand(cfg)
    assert {(p.optimizer.name, p.optimizer.lr[0], p.optimizer.momentum[0]) for p in packs} == {
        ("sgd", 0.1, 0.9), ("adam", 1e-3, 0.0)}


def test_bad_sweep_lists_every_problem_before_anything_starts():
    with pytest.raises(ConfigError) as err:
        parse_sweep({
            "name": "s",
            "base": {"model": {"width": 0}},
            "axes": {"model.depth": [2, -1], "optimizer.name": ["sgd", "rmsprop"], "model.colour": ["red"]},
            "resources": {"gpus": -1},
            "pack_size": 0,
            "flavour": 1,
        })
    text = str(err.value)
    for needle in ["base.model.width: `width >= 1` must hold, but got 0",
                   "axes.model.depth[1] = -1: model.depth: `depth >= 1` must hold, but got -1",
                   "axes.optimizer.name[1] = 'rmsprop'", "axes.model.colour[0] = 'red': model.colour: unknown key",
                   "resources.gpus: `gpus >= 0` must hold, but got -1", "pack_size: `pack_size >= 1`",
                   "flavour: unknown key"]:
        assert needle in text, needle


def test_a_misspelt_top_level_key_is_still_a_sweep_and_suggests_the_nearest(tmp_path, capsys):
    f = tmp_path / "typo.yaml"
    f.write_text("name: t\naxis:\n  model.depth: [1, 2]\n")  # `axes` misspelt, and no `base`
    assert main(["validate", str(f)]) == 2
    err = capsys.readouterr().err
    assert "axis: unknown key; did you mean `axes`? (known: axes, base, max_failures" in err
    assert "axes: must be a non-empty mapping" in err
    assert main(["run", str(f)]) == 2
    assert "a sweep config (it has `axis`): run it with `phasemap sweep" in capsys.readouterr().err


def test_each_problem_is_listed_once_not_once_per_axis_value():
    with pytest.raises(ConfigError) as err:
        parse_sweep({"name": "s", "base": {"model": {"dpeth": 2}},
                     "axes": {"optimizer.weight_decay": [0.0, 1e-3, 1e-2], "model.widht": [8, 16],
                              "model.width": [8, 0]}})
    known = "(known: activation, bias, depth, factory, family, heads, kwargs, norm, tied, width)"
    assert err.value.problems == [
        f"base.model.dpeth: unknown key; did you mean `depth`? {known}",
        f"axes.model.widht: model.widht: unknown key; did you mean `width`? {known}",
        "axes.model.width[1] = 0: model.width: `width >= 1` must hold, but got 0",
    ]


def test_combinations_are_checked_too():
    with pytest.raises(ConfigError, match=r"axes combination .*batch_size: `batch_size <= probe.n_samples`"):
        sweep(base={"train": {"batch_size": 16}, "probe": {"n_samples": 128}},
              axes={"train.batch_size": [16, 64], "probe.n_samples": [32, 128]})


def test_optuna_axes_are_distributions_or_choices():
    cfg = sweep(axes={"optimizer.lr": {"low": 1e-4, "high": 1e-1, "log": True}, "model.depth": [1, 2]},
                search={"mode": "optuna", "trials": 3})
    assert cfg.search.trials == 3
    with pytest.raises(ConfigError, match="axes.optimizer.lr: `low > 0` must hold for a log axis"):
        sweep(axes={"optimizer.lr": {"low": 0, "high": 1, "log": True}}, search={"mode": "optuna"})


@pytest.mark.parametrize("name", ["quick.yaml", "cluster.yaml"])
def test_shipped_sweeps_validate(name):
    cfg = load_sweep(CONFIGS / name)
    n = sum(len(p.members) for p in expand(cfg))
    assert n >= (24 if name == "quick.yaml" else 200)


def test_cli_validate_and_status_of_a_sweep(tmp_path, capsys):
    assert main(["validate", str(CONFIGS / "quick.yaml")]) == 0
    assert "48 configs in 16 packs" in capsys.readouterr().out
    assert main(["status", str(CONFIGS / "quick.yaml"), "--out", str(tmp_path)]) == 0
    assert "16 missing of 16 packs" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\naxes:\n  model.width: [0]\n")
    assert main(["sweep", str(bad), "--out", str(tmp_path)]) == 2
    assert "axes.model.width[0] = 0" in capsys.readouterr().err


def test_auto_pack_size_follows_network_size_and_device():
    from phasemap import parse_config
    from phasemap.sweep import auto_pack_size

    fc1 = parse_config({"model": {"depth": 4, "width": 100}, "train": {"batch_size": 100}})
    assert auto_pack_size(fc1, gpu=False) == 8
    big = parse_config({"model": {"depth": 12, "width": 512}, "train": {"batch_size": 512}, "probe": {"n_samples": 3000}})
    assert auto_pack_size(big, gpu=False) == 1
    assert auto_pack_size(fc1, gpu=True) > 100 and auto_pack_size(big, gpu=True) < auto_pack_size(fc1, gpu=True)
    cfg = sweep(axes={"optimizer.weight_decay": [0.0, 1e-4, 1e-3, 1e-2, 1e-1], "train.seed": [0, 1, 2, 3]},
                base={**sweep().base, "task": {"name": "fc1", "input_dim": 100}, "model": {"depth": 4, "width": 100},
                      "train": {"steps": 10, "batch_size": 100}, "probe": {"n_samples": 200}})
    assert sorted(len(p.members) for p in expand(cfg)) == [4, 8, 8]


def test_status_of_an_optuna_sweep_with_nothing_run(tmp_path, capsys):
    cfg = tmp_path / "opt.yaml"
    cfg.write_text("name: o\nstorage: {root: %s}\naxes:\n  optimizer.lr: {low: 0.001, high: 0.1, log: true}\n"
                   "search: {mode: optuna, trials: 2}\n" % tmp_path)
    assert main(["status", str(cfg)]) == 0
    assert "0 complete" in capsys.readouterr().out


def test_an_optuna_bound_written_without_a_dot_is_a_number():
    data = {"name": "o", "base": {}, "axes": {"optimizer.lr": {"low": "1e-4", "high": "1e-1", "log": True}},
            "search": {"mode": "optuna", "objective": "rga_b", "trials": 2}}
    cfg = parse_sweep(data)
    assert cfg.axes["optimizer.lr"] == {"low": 1e-4, "high": 0.1, "log": True}


def test_an_optuna_objective_may_be_an_accuracy_and_a_near_miss_is_suggested():
    data = {"name": "o", "base": {}, "axes": {"optimizer.lr": {"low": 1e-4, "high": 1e-1}},
            "search": {"mode": "optuna", "objective": "probe_accuracy", "trials": 2}}
    assert parse_sweep(data).search.objective == "probe_accuracy"
    data["search"]["objective"] = "accuracy"
    with pytest.raises(ConfigError, match=r"did you mean `train_accuracy` or `probe_accuracy`\?"):
        parse_sweep(data)


def test_a_grid_with_its_axes_in_another_order_packs_as_a_fresh_process_would():
    """members() is cached per grid: the order of the axes is the grid's, and the packs follow it."""
    from phasemap.sweep import spec

    def sweep(axes):
        return parse_sweep({"name": "o", "base": {"task": {"name": "fc1"}}, "axes": axes, "pack_size": 2})

    forward = {"optimizer.weight_decay": [0.0, 0.01], "train.seed": [0, 1]}
    backward = dict(reversed(list(forward.items())))
    spec._MEMBERS.clear()
    fresh = [run_id_of(p) for p in expand(sweep(backward))]
    spec._MEMBERS.clear()
    expand(sweep(forward))  # cached first
    assert [run_id_of(p) for p in expand(sweep(backward))] == fresh
