"""Model families in the packed engine: cnn and resnet on real (bundled) images, packed
members equal to members trained alone, per-member BatchNorm statistics."""

import pytest
import torch

from packs import assert_members_equal_alone
from phasemap import ConfigError, parse_config, train_pack
from phasemap.models.cnn import cnn
from phasemap.models.packed import PackedModel


def small_cnn(family="cnn", **over):
    data = {
        "name": "c",
        "task": {"name": "digits"},
        "model": {"family": family, "depth": 2 if family == "cnn" else 8, "width": 4 if family == "cnn" else 1,
                  "norm": "batch"},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": [0.0, 1e-3]},
        "train": {"steps": 12, "batch_size": 32, "seed": [0, 1], "check_every": 4},
        "probe": {"n_samples": 100, "steps": [0, 6, 12]},
    }
    for key, value in over.items():
        section, field = key.split("__")
        data[section][field] = value
    return parse_config(data)


@pytest.mark.parametrize("family", ["cnn", "resnet"])
def test_a_packed_family_equals_its_members_trained_alone(tmp_path, family):
    pack = small_cnn(family)
    assert len(pack.members) == 4
    packed = assert_members_equal_alone(pack, tmp_path, atol=1e-5, paired_tol=1e-3)
    assert set(packed["layer_kind"]) == {"conv", "linear"}


def test_batchnorm_statistics_stay_per_member():
    make = lambda: cnn((1, 8, 8), 10, 2, 4, norm="batch")  # noqa: E731
    packed = PackedModel(make, seeds=[0, 1, 2])
    x = torch.randn(16, 1, 8, 8)
    packed.train()
    packed(x)
    for k in range(3):
        torch.manual_seed(k)
        alone = make().train()
        alone(x)  # the same batch through the member built alone
        mine = packed.member(k)
        assert torch.allclose(mine.norm1.running_mean, alone.norm1.running_mean, atol=1e-6)
        assert torch.allclose(mine.norm1.running_var, alone.norm1.running_var, atol=1e-6)
        assert int(mine.norm1.num_batches_tracked) == 1
    means = [packed.member(k).norm1.running_mean for k in range(3)]
    assert not torch.allclose(means[0], means[1])  # each member its own statistics


def test_cnn_quick_learns_digits_well_above_chance(tmp_path):
    cfg = small_cnn("cnn", train__steps=150, optimizer__weight_decay=1e-3, train__seed=0,
                    probe__steps=[150], model__width=8)
    result = train_pack(cfg, root=str(tmp_path))
    last = result.records[result.records["step"] == 150]
    assert last["probe_accuracy"].iloc[0] > 0.8  # 10 classes: chance is 0.1
    assert last["layer_name"].tolist() == ["conv1", "conv2", "fc1", "fc2"]
    assert last["dim_in"].tolist() == [9, 72, 32, 8]
    # hidden layers are every measured layer but the output: the convolutions and fc1
    from phasemap.analysis.aggregate import last_hidden, pick_layer
    from phasemap.measure import critical_depth

    assert last["n_layers"].tolist() == [4] * 4
    assert pick_layer(last, "last")["layer_name"].tolist() == ["fc1"]
    assert pick_layer(last, "output")["layer_name"].tolist() == ["fc2"]
    assert last_hidden(result.records)["layer_name"].tolist() == ["conv1", "conv2", "fc1"]
    cd = critical_depth(last.assign(rga_b=[0.1, 0.95, 0.95, 0.2]), "rga_b", 0.9)
    assert (cd["n_hidden"].iloc[0], cd["l_star"].iloc[0], cd["l_star_frac"].iloc[0]) == (3, 2, 2 / 3)


def test_family_errors_name_the_field_before_anything_starts():
    with pytest.raises(ConfigError, match=r"model.family: `an image task for family cnn` must hold"):
        parse_config({"task": {"name": "fc1"}, "model": {"family": "cnn"}})
    with pytest.raises(ConfigError, match=r"model.depth: `resnet depth = 6 n \+ 2"):
        parse_config({"task": {"name": "digits"}, "model": {"family": "resnet", "depth": 9}})
    with pytest.raises(ConfigError, match=r"model.factory: `importable` must hold, but got 'nope.nets:make'"):
        parse_config({"task": {"name": "digits"}, "model": {"family": "factory", "factory": "nope.nets:make"}})
    with pytest.raises(ConfigError, match=r"task.path: `the data's file or folder for task cifar10` must be given"):
        parse_config({"task": {"name": "cifar10"}, "model": {"family": "cnn"}})


def test_an_mlp_trains_on_images_flattened(tmp_path):
    cfg = parse_config({"task": {"name": "digits"}, "model": {"depth": 1, "width": 16},
                        "optimizer": {"lr": 0.05, "momentum": 0.9}, "train": {"steps": 20, "batch_size": 32},
                        "probe": {"n_samples": 100, "steps": [20]}})
    recs = train_pack(cfg, root=str(tmp_path)).records
    assert recs["dim_in"].tolist()[:2] == [64, 16] and recs["layer_kind"].unique().tolist() == ["linear"]
    assert recs["probe_accuracy"].notna().all()


FACTORY = '''
from torch import nn


def make(hidden=8):
    """A user's own network: conv, pool, linear."""
    return nn.Sequential(nn.Conv2d(1, hidden, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(4 * hidden, 10))
'''


VECTOR_FACTORY = '''
from torch import nn


def make(hidden=4, depth=1):
    """A user's own network on fc1's 8 inputs: `depth` hidden layers of `hidden` units."""
    dims = [8] + [hidden] * depth
    layers = [m for a, b in zip(dims, dims[1:]) for m in (nn.Linear(a, b), nn.ReLU())]
    return nn.Sequential(*layers, nn.Linear(hidden, 1))
'''


@pytest.fixture
def cwd_factory(tmp_path, monkeypatch):
    """`cwd_nets.py` in the current directory, which is not on sys.path (as for the `phasemap` script)."""
    import os
    import sys

    (tmp_path / "cwd_nets.py").write_text(VECTOR_FACTORY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd())])
    yield tmp_path
    sys.modules.pop("cwd_nets", None)


def factory_config(factory="cwd_nets:make", **kwargs):
    return parse_config({"task": {"name": "fc1", "input_dim": 8, "teacher_width": 8},
                         "model": {"family": "factory", "factory": factory, "kwargs": kwargs},
                         "optimizer": {"weight_decay": [0.0, 1e-3]},
                         "train": {"steps": 2, "batch_size": 100}, "probe": {"n_samples": 100, "steps": [2]}})


def test_a_factory_in_the_current_directory_is_imported_and_a_missing_one_names_pythonpath(cwd_factory):
    assert factory_config().model.factory == "cwd_nets:make"  # imported from the current directory
    with pytest.raises(ConfigError) as e:
        factory_config("absent_nets:make")
    (problem,) = e.value.problems
    assert "No module named 'absent_nets'" in problem and "PYTHONPATH" in problem and str(cwd_factory) in problem
    from phasemap.sweep import parse_sweep

    with pytest.raises(ConfigError) as e:  # named once, not once per axis value
        parse_sweep({"name": "s", "base": {"task": {"name": "fc1"}, "model": {"family": "factory",
                                                                             "factory": "absent_nets:make"}},
                     "axes": {"optimizer.lr": [0.1, 0.2, 0.3]}})
    assert [p for p in e.value.problems if "absent_nets" in p] == [problem.replace("model.", "base.model.", 1)]


def test_auto_pack_size_of_a_factory_is_measured_on_the_built_model(cwd_factory):
    from phasemap.sweep import auto_pack_size

    sizes = {h: auto_pack_size(factory_config(hidden=h), gpu=False) for h in (100, 100_000)}
    # one forward pass: 8 h + h multiply-adds a sample, batches of 100, 4e8 a CPU core for the packed engine
    assert sizes == {100: 64, 100_000: round(4e8 / (100 * 9 * 100_000))}
    gpu = {h: auto_pack_size(factory_config(hidden=h), gpu=True) for h in (100, 100_000)}
    assert gpu[100] > gpu[100_000] >= 1


def test_records_of_a_factory_hold_depth_and_width_only_from_its_kwargs(cwd_factory):
    recs = train_pack(factory_config(hidden=5), root=str(cwd_factory / "a")).records
    assert recs["depth"].isna().all() and recs["width"].isna().all() and recs["layer"].max() == 2
    recs = train_pack(factory_config(hidden=5, depth=2), root=str(cwd_factory / "b")).records
    assert (recs["depth"] == 2).all() and recs["width"].isna().all() and recs["layer"].max() == 3
    # the config's identity is the config, not its record columns: hashes as before the columns changed
    cfg = factory_config(hidden=5)
    assert (cfg.config_hash(), cfg.member_config(cfg.members[0]).config_hash()) == ("a2f5db6aa693", "8e636140ac7b")
    assert recs["config_hash"].iloc[0] == factory_config(hidden=5, depth=2).member_config(cfg.members[0]).config_hash()


@pytest.mark.integration
def test_a_factory_model_trains_in_a_sweep_on_a_real_local_ray(tmp_path, monkeypatch):
    """Starts a local Ray (`start_ray`) whose workers import the user's module from the current
    directory, as the driver does."""
    import sys

    import ray

    from phasemap import load
    from phasemap.sweep import parse_sweep, run_sweep

    ray.shutdown()  # a Ray of its own, started here: its workers get this folder as their current directory
    (tmp_path / "my_nets.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)  # the module is in the current directory, which is not on sys.path
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    cfg = parse_sweep({
        "name": "fac", "storage": {"root": str(tmp_path / "results")},
        "base": {"task": {"name": "digits"},
                 "model": {"family": "factory", "factory": "my_nets:make", "kwargs": {"hidden": 6}},
                 "optimizer": {"lr": 0.05, "momentum": 0.9},
                 "train": {"steps": 30, "batch_size": 32}, "probe": {"n_samples": 100, "count": 2}},
        "axes": {"optimizer.weight_decay": [0.0, 1e-3]},
        "resources": {"cpus": 1},
    })
    try:
        result = run_sweep(cfg, progress=False, num_cpus=2)
    finally:
        ray.shutdown()
        sys.modules.pop("my_nets", None)
    assert not result.failed and result.trained == 2
    recs = load(str(tmp_path / "results"))
    assert recs["config_hash"].nunique() == 2 and set(recs["factory"]) == {"my_nets:make"}
    assert set(recs["model_kwargs"]) == {'{"hidden": 6}'}
    assert recs.groupby("config_hash")["layer_name"].apply(list).iloc[0][:2] == ["0", "4"]
    assert recs["layer_kind"].tolist()[:2] == ["conv", "linear"] and recs["probe_accuracy"].notna().all()


def test_the_res1_config_is_the_papers_family_over_the_sweep_axes(tmp_path):
    import pickle

    import numpy as np
    import yaml

    from phasemap.sweep import expand, parse_sweep

    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:  # a stand-in CIFAR folder
        with open(tmp_path / name, "wb") as f:
            pickle.dump({b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [0, 1]}, f)
    data = yaml.safe_load(open("configs/res1.yaml"))
    with pytest.raises(ConfigError, match="task.path: `path exists` must hold"):
        parse_sweep(data)  # no CIFAR-10 here: the error names the path before anything starts
    data["base"]["task"]["path"] = str(tmp_path)
    packs = expand(parse_sweep(data))
    assert len(packs) == 36 and {len(p.members) for p in packs} == {8}
    first = packs[0]
    assert (first.model.family, first.optimizer.name, set(first.optimizer.lr), set(first.optimizer.momentum)) == \
        ("resnet", "sgd", {0.01}, {0.9})
    assert {p.train.batch_size for p in packs} == {64, 128, 256} and {p.model.depth for p in packs} == {8, 14, 20, 32}


def test_the_vectorised_path_equals_the_member_loop():
    # vmap (the GPU path) and the CPU's member loop: same outputs, gradients and BatchNorm updates
    make = lambda: cnn((1, 8, 8), 10, 2, 4, norm="batch")  # noqa: E731
    x = torch.randn(16, 1, 8, 8)
    results = []
    for vectorize in (True, False):
        packed = PackedModel(make, seeds=[0, 1, 2]).train()
        packed.vectorize = vectorize
        out = packed(x)
        out.square().sum().backward()
        grads = [p.grad.clone() for p in packed.parameters()]
        results.append((out.detach(), grads, packed.member(2).norm1.running_var))
    (out_v, grads_v, var_v), (out_l, grads_l, var_l) = results
    assert torch.allclose(out_v, out_l, atol=1e-5) and torch.allclose(var_v, var_l, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(grads_v, grads_l))
