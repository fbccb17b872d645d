"""Configs: every file in configs/ validates; bad input lists every problem with its path."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import yaml

from phasemap import ConfigError, load_config, parse_config
from phasemap.cli import main

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates(path, capsys, tmp_path):
    data = yaml.safe_load(path.read_text())
    task = data.get("base", data).get("task", {})
    if task.get("path") and task["path"] != "python-stdlib":  # data on disk (res1: CIFAR-10, llm-small: tokens) is not here: a stand-in, by --set
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:  # a readable CIFAR folder
            with open(tmp_path / name, "wb") as f:
                pickle.dump({b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [0, 1]}, f)
        (np.arange(4096) % 64).astype("<u2").tofile(tmp_path / "train.bin")  # llm-small: a block of 256 fits
        stand_in = tmp_path / "train.bin" if task["name"] == "tokens" else tmp_path
        assert main(["validate", str(path)]) == 2  # as shipped: the path is named, nothing starts
        assert "task.path: `path exists` must hold" in capsys.readouterr().err
        assert main(["validate", str(path), "--set", f"base.task.path={stand_in}"]) == 0
    else:  # no data, data bundled (digits) or every machine's (llm-cpu: the interpreter's own source)
        assert main(["validate", str(path)]) == 0  # run and sweep configs alike
    assert ": ok (" in capsys.readouterr().out


def test_members_are_the_product_of_member_lists():
    cfg = parse_config({"optimizer": {"lr": [0.1, 0.01], "weight_decay": [0, 1e-3, 1e-2]}, "train": {"seed": [0, 1]}})
    assert len(cfg.members) == 12
    assert {(m.lr, m.weight_decay, m.seed) for m in cfg.members} == {
        (lr, wd, s) for lr in (0.1, 0.01) for wd in (0.0, 1e-3, 1e-2) for s in (0, 1)
    }


def test_yaml_exponent_without_dot_reads_as_a_number(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optimizer:\n  weight_decay: 1e-3\n")
    assert load_config(f).optimizer.weight_decay == (1e-3,)


def test_every_problem_is_reported_at_once_with_path_and_value():
    bad = {
        "model": {"width": 0, "activation": "swish", "colour": "red"},
        "optimizer": {"name": "lion", "weight_decay": -1e-4},
        "train": {"steps": "many"},
    }
    with pytest.raises(ConfigError) as err:
        parse_config(bad)
    text = str(err.value)
    for needle in [
        "model.width: `width >= 1` must hold, but got 0",
        "model.activation:",
        "'swish'",
        "model.colour: unknown key",
        "optimizer.name:",
        "'lion'",
        "optimizer.weight_decay: `weight_decay >= 0` must hold, but got -0.0001",
        "train.steps: must be an integer, but got 'many'",
    ]:
        assert needle in text, needle
    assert len(err.value.problems) == 6


def test_an_unknown_key_suggests_the_nearest_known_one():
    with pytest.raises(ConfigError) as err:
        parse_config({"modle": {"depth": 2}, "train": {"stpes": 10, "colour": "red"}})
    assert err.value.problems == [
        "modle: unknown key; did you mean `model`? (known: model, name, optimizer, pairing, probe, storage, task, train)",
        "train.stpes: unknown key; did you mean `steps`? (known: batch_size, check_every, checkpoint_every, "
        "data_seed, device, seed, steps, stop)",
        "train.colour: unknown key (known: batch_size, check_every, checkpoint_every, data_seed, device, seed, steps, stop)",
    ]


def test_batch_larger_than_probe_set_is_an_error():
    with pytest.raises(ConfigError, match=r"train.batch_size: .*batch_size=500, n_samples=100"):
        parse_config({"train": {"batch_size": 500}, "probe": {"n_samples": 100}})


def test_momentum_with_adam_is_an_error():
    with pytest.raises(ConfigError, match="optimizer.momentum: momentum applies to sgd only"):
        parse_config({"optimizer": {"name": "adam", "momentum": 0.9}})


def test_probe_schedule_includes_first_and_last_step():
    cfg = parse_config({"train": {"steps": 1000}, "probe": {"count": 4}})
    assert cfg.probe_steps() == [0, 1, 10, 100, 1000]
    cfg = parse_config({"train": {"steps": 50}, "probe": {"steps": [5, 20]}})
    assert cfg.probe_steps() == [0, 5, 20, 50]


def test_member_config_hash_is_the_same_in_a_pack_and_alone():
    pack = parse_config({"optimizer": {"weight_decay": [0, 1e-3]}})
    alone = parse_config({"optimizer": {"weight_decay": 1e-3}})
    assert pack.member_config(pack.members[1]).config_hash() == alone.config_hash()
    assert pack.config_hash() != alone.config_hash()


def test_cli_validate_exits_2_and_names_field_and_value(tmp_path, capsys):
    f = tmp_path / "bad.yaml"
    f.write_text("model:\n  width: 0\noptimizer:\n  name: sgdd\n")
    assert main(["validate", str(f)]) == 2
    err = capsys.readouterr().err
    assert "model.width" in err and "got 0" in err and "optimizer.name" in err and "'sgdd'" in err


def test_cli_run_with_bad_config_starts_nothing(tmp_path, capsys):
    f = tmp_path / "bad.yaml"
    f.write_text("model:\n  depth: -1\n")
    out = tmp_path / "out"
    assert main(["run", str(f), "--out", str(out)]) == 2
    assert not out.exists()


@pytest.mark.parametrize("command", ["validate", "run", "sweep", "status"])
def test_cli_missing_file_and_bad_yaml(tmp_path, capsys, command):
    assert main([command, str(tmp_path / "nope.yaml")]) == 2
    assert "file not found" in capsys.readouterr().err
    f = tmp_path / "broken.yaml"
    f.write_text("model: [unclosed\n")
    assert main([command, str(f)]) == 2
    assert "not valid YAML" in capsys.readouterr().err  # not "a run config" for sweep/status


def test_zip_pairing_pairs_lists_position_by_position():
    cfg = parse_config({"pairing": "zip", "optimizer": {"lr": [0.1, 0.2, 0.3], "weight_decay": 1e-3},
                        "train": {"seed": [5, 6, 7]}})
    assert [(m.lr, m.weight_decay, m.seed) for m in cfg.members] == [(0.1, 1e-3, 5), (0.2, 1e-3, 6), (0.3, 1e-3, 7)]
    with pytest.raises(ConfigError, match="pairing: .*lr=3, momentum=1, weight_decay=1, seed=2"):
        parse_config({"pairing": "zip", "optimizer": {"lr": [0.1, 0.2, 0.3]}, "train": {"seed": [1, 2]}})


def test_run_and_sweep_configs_are_not_mixed_up(capsys):
    root = Path(__file__).parent.parent / "configs"
    assert main(["run", str(root / "quick.yaml")]) == 2
    assert "a sweep config (it has `axes`): run it with `phasemap sweep" in capsys.readouterr().err
    assert main(["status", str(root / "default.yaml")]) == 2
    assert "a run config (no `axes`)" in capsys.readouterr().err
