"""The configuration matrix (integration): every family x every task it accepts trains a tiny pack
end to end and its records pass one invariant checker (tests/invariants.py); grid and Optuna
sweeps on a real local Ray, S3 storage (moto on loopback) and the `Recorder` in a user's own loop
go through the same checker; configs that are not allowed exit 2 naming the field.

Tiny on purpose: 2 members, 4 steps, probes at steps 0 and 4, 16 probe samples, 2 null rotations.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from invariants import assert_root_ok, check_root
from servers import moto_server
from phasemap import Recorder, load, parse_config, records, train_pack
from phasemap.cli import main as cli
from phasemap.config import replace
from phasemap.data import make_task
from phasemap.records import CONFIG_COLUMNS

pytestmark = pytest.mark.integration

FACTORIES = '''
"""Users' own networks for the matrix's factory family."""
from torch import nn


def image_net(hidden=4, classes=10):
    """(N, 1, 8, 8) images -> (N, classes): conv, pool, linear."""
    return nn.Sequential(nn.Conv2d(1, hidden, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(4 * hidden, classes))


def vector_net(hidden=4, inputs=8, outputs=1):
    """(N, inputs) -> (N, outputs): one hidden layer."""
    return nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, outputs))


class SequenceNet(nn.Module):
    """(N, T) token ids -> (N, T, vocab): an embedding, a hidden linear layer, the unembedding."""

    def __init__(self, vocab, hidden=4):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.hidden = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, idx):
        return self.out(self.hidden(self.embed(idx)).relu())


def sequence_net(vocab, hidden=4):
    return SequenceNet(vocab, hidden)
'''

TEXT = "the cat sat on the mat; the dog sat on the log.\n" * 12  # 588 characters, 17 distinct


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A small npz of images, a text token file, a .bin token file and a factory module."""
    folder = tmp_path_factory.mktemp("matrix-data")
    rng = np.random.default_rng(0)
    np.savez(folder / "images.npz", x=rng.integers(0, 256, (96, 8, 8), dtype=np.uint8),
             y=rng.integers(0, 3, 96))
    (folder / "text.txt").write_text(TEXT)
    rng.integers(0, 11, 600).astype("<u2").tofile(folder / "tokens.bin")
    (folder / "matrix_nets.py").write_text(FACTORIES)
    write_mnist(folder / "mnist", rng)
    write_cifar10(folder / "cifar10", rng)
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))


def write_mnist(folder: Path, rng) -> None:
    """The four IDX files of a tiny MNIST (8x8 images)."""
    import struct

    folder.mkdir()
    for name, shape in (("train-images-idx3-ubyte", (64, 8, 8)), ("train-labels-idx1-ubyte", (64,)),
                        ("t10k-images-idx3-ubyte", (32, 8, 8)), ("t10k-labels-idx1-ubyte", (32,))):
        arr = rng.integers(0, 256 if "images" in name else 10, shape).astype(np.uint8)
        header = struct.pack(">HBB", 0, 8, len(shape)) + b"".join(struct.pack(">I", n) for n in shape)
        (folder / name).write_bytes(header + arr.tobytes())


def write_cifar10(folder: Path, rng) -> None:
    """A tiny CIFAR-10 as its python pickle batches (16 images each)."""
    import pickle

    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (16, 3072)).astype(np.uint8),
                 b"labels": rng.integers(0, 10, 16).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))


def tasks(data: Path) -> dict:
    return {
        "fc1": {"name": "fc1", "input_dim": 8, "teacher_width": 8},
        "fc2": {"name": "fc2", "input_dim": 8, "teacher_width": 8, "output_dim": 3, "phi": 0.3},
        "clusters": {"name": "clusters", "input_dim": 8, "n_classes": 3},
        "digits": {"name": "digits"},
        "mnist": {"name": "mnist", "path": str(data / "mnist")},
        "cifar10": {"name": "cifar10", "path": str(data / "cifar10")},
        "npz": {"name": "npz", "path": str(data / "images.npz"), "n_classes": 3, "held_out": 32},
        "modular": {"name": "modular", "modulus": 5, "train_fraction": 0.5},
        "tokens": {"name": "tokens", "path": str(data / "text.txt"), "block": 6},
        "tokens-bin": {"name": "tokens", "path": str(data / "tokens.bin"), "vocab_size": 11, "block": 6},
        # SimCLR on any image task's images (RGB: colour jitter too)
        "ssl-digits": {"name": "ssl", "data": "digits", "projection_dim": 4},
        "ssl-npz": {"name": "ssl", "data": "npz", "path": str(data / "images.npz"), "n_classes": 3, "held_out": 32,
                    "projection_dim": 4},
        "ssl-cifar10": {"name": "ssl", "data": "cifar10", "path": str(data / "cifar10"), "projection_dim": 4},
    }


MODELS = {
    "mlp": {"family": "mlp", "depth": 1, "width": 4},
    "cnn": {"family": "cnn", "depth": 2, "width": 2},
    "resnet": {"family": "resnet", "depth": 8, "width": 1},
    "transformer": {"family": "transformer", "depth": 1, "width": 4, "heads": 2},
    "transformer-tied": {"family": "transformer", "depth": 1, "width": 4, "heads": 2, "tied": True},
}


def factory_model(task: str) -> dict:
    if task.startswith("ssl"):  # the user's network is the backbone: images -> (N, 6) embeddings
        return {"family": "factory", "factory": "matrix_nets:image_net", "kwargs": {"hidden": 2, "classes": 6}}
    if task in ("digits", "npz"):
        kwargs = {"hidden": 2, "classes": 10 if task == "digits" else 3}
        return {"family": "factory", "factory": "matrix_nets:image_net", "kwargs": kwargs}
    if task in ("modular", "tokens", "tokens-bin"):
        vocab = {"modular": 5 + 2, "tokens": len(set(TEXT)), "tokens-bin": 11}[task]
        return {"family": "factory", "factory": "matrix_nets:sequence_net", "kwargs": {"vocab": vocab}}
    return {"family": "factory", "factory": "matrix_nets:vector_net", "kwargs": {"hidden": 3, "inputs": 8}}


# family -> every task it accepts (the MLP sees images flattened)
MATRIX = [("mlp", t) for t in ("fc1", "fc2", "clusters", "digits", "npz")] + \
         [(f, t) for f in ("cnn", "resnet") for t in ("digits", "npz")] + [("cnn", "mnist"), ("cnn", "cifar10")] + \
         [(f, t) for f in ("transformer", "transformer-tied") for t in ("modular", "tokens", "tokens-bin")] + \
         [("factory", t) for t in ("fc1", "digits", "npz", "modular", "tokens")] + \
         [("cnn", "ssl-digits"), ("resnet", "ssl-npz"), ("cnn", "ssl-cifar10"), ("factory", "ssl-digits")]


def run_data(data: Path, family: str, task: str, root, sweep="matrix", **probe) -> dict:
    model = factory_model(task) if family == "factory" else dict(MODELS[family])
    return {
        "name": f"{family}-{task}",
        "task": tasks(data)[task],
        "model": model,
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": [0.0, 1e-3]},
        "train": {"steps": 4, "batch_size": 8, "check_every": 2, "checkpoint_every": 2, "device": "cpu"},
        "probe": {"n_samples": 16, "steps": [0, 4], "null_samples": 2, "max_samples": 256, **probe},
        "storage": {"root": str(root), "sweep_id": sweep},
    }


def expected_of(cfg) -> dict:
    return {cfg.member_config(m).config_hash(): cfg.member_config(m) for m in cfg.members}


@pytest.mark.parametrize("family, task", MATRIX, ids=[f"{f}-{t}" for f, t in MATRIX])
def test_every_family_on_every_task_it_accepts(tmp_path, data, family, task):
    # attention's per-head rows on one of the transformer cases
    probe = {"per_head": True} if (family, task) == ("transformer", "tokens") else {}
    if family == "resnet":  # its 576-dim patches make it the slowest case: the nulls off (0 is a setting too)
        probe["null_samples"] = 0
    cfg = parse_config(run_data(data, family, task, tmp_path, **probe))
    assert len(cfg.members) == 2 and cfg.probe_steps() == [0, 4]
    result = train_pack(cfg, root=str(tmp_path))
    assert result.status == ["ok", "ok"]
    assert_root_ok(str(tmp_path), sweep="matrix", expected=expected_of(cfg))
    recs = load(str(tmp_path))
    assert sorted(recs["step"].unique()) == [0, 4]
    hidden = recs[recs["head"].isna() & (recs["layer"] < recs["n_layers"])]
    assert len(hidden) and hidden["layer_kind"].notna().all()  # every family has hidden layers
    if task not in ("fc1", "fc2"):  # classification: accuracies at every probe (ssl: the linear probe's, held out)
        assert recs["probe_accuracy"].notna().all()
        assert recs["train_accuracy"].notna().all() if not task.startswith("ssl") else recs["train_accuracy"].isna().all()
    if probe.get("per_head"):
        assert recs["head"].notna().any()
    # the measured layers of each family (the last is the output)
    depth = cfg.model.depth
    n_layers = {"mlp": depth + 1, "cnn": depth + 2, "resnet": depth + 2,  # ResNet-8: 7 convs, 2 skips, fc
                "transformer": 6 * depth + 1}.get(cfg.model.family)  # q, k, v, out, mlp_in, mlp_out; unembed
    if task.startswith("ssl") and family == "resnet":  # SimCLR's head of two linear layers for the fc
        n_layers += 1
    if n_layers is not None:
        assert set(recs["n_layers"]) == {n_layers}
    else:  # a factory's depth and width are its kwargs' business: null unless they set them (issue 19, 11c)
        assert recs["depth"].isna().all() and recs["width"].isna().all()


def test_a_diverged_member_is_a_result_that_passes_the_checker(tmp_path, data):
    raw = run_data(data, "mlp", "fc1", tmp_path)
    raw["optimizer"].update(lr=[0.05, 1e6], weight_decay=0.0)
    cfg = parse_config(raw)
    assert train_pack(cfg, root=str(tmp_path)).status == ["ok", "diverged"]
    assert_root_ok(str(tmp_path), sweep="matrix", expected=expected_of(cfg))
    assert set(load(str(tmp_path))["status"]) == {"ok", "diverged"}


# ------------------------------------------------------------------------------------- refusals

# (what, task, model, the field the error names): configs that are not allowed exit 2
REFUSED = [
    ("transformer on fc1", {"name": "fc1"}, {"family": "transformer"}, "model.family"),
    ("transformer on digits", {"name": "digits"}, {"family": "transformer"}, "model.family"),
    ("cnn on fc1", {"name": "fc1"}, {"family": "cnn"}, "model.family"),
    ("resnet on clusters", {"name": "clusters"}, {"family": "resnet", "depth": 8}, "model.family"),
    ("cnn on modular", {"name": "modular"}, {"family": "cnn"}, "model.family"),
    ("resnet on tokens", "tokens", {"family": "resnet", "depth": 8}, "model.family"),
    ("mlp on modular", {"name": "modular"}, {"family": "mlp"}, "model.family"),
    ("mlp on tokens", "tokens", {"family": "mlp"}, "model.family"),
    ("resnet of depth 10", {"name": "digits"}, {"family": "resnet", "depth": 10}, "model.depth"),
    ("transformer width 6 with 4 heads", {"name": "modular"}, {"family": "transformer", "width": 6, "heads": 4},
     "model.heads"),
    ("factory that does not import", {"name": "digits"}, {"family": "factory", "factory": "no_such_mod:make"},
     "model.factory"),
    ("factory string on a cnn", {"name": "digits"}, {"family": "cnn", "factory": "matrix_nets:image_net"},
     "model.factory"),
    ("npz without a path", {"name": "npz"}, {"family": "cnn"}, "task.path"),
    ("token .bin without vocab_size", "tokens-bin-novocab", {"family": "transformer"}, "task.vocab_size"),
    ("a block longer than the token file", "tokens-long-block", {"family": "transformer"}, "task.block"),
    ("a block longer than the .bin", "tokens-bin-long-block", {"family": "transformer"}, "task.block"),
    ("npz labels beyond n_classes", "npz-few-classes", {"family": "cnn"}, "task.n_classes"),
    ("ssl with an mlp (no backbone)", {"name": "ssl"}, {"family": "mlp"}, "model.family"),
    ("ssl with a transformer", {"name": "ssl"}, {"family": "transformer"}, "model.family"),
    ("ssl with a projection of 1", {"name": "ssl", "projection_dim": 1}, {"family": "cnn"}, "task.projection_dim"),
    ("ssl at temperature 0", {"name": "ssl", "temperature": 0}, {"family": "cnn"}, "task.temperature"),
    ("ssl of non-images", {"name": "ssl", "data": "fc1"}, {"family": "cnn"}, "task.data"),
    ("ssl of cifar10 without a path", {"name": "ssl", "data": "cifar10"}, {"family": "cnn"}, "task.path"),
]


@pytest.mark.parametrize("command", ["validate", "run"])
def test_configs_not_allowed_exit_2_naming_the_field(tmp_path, data, capsys, command):
    every = tasks(data)
    every["tokens-bin-novocab"] = {"name": "tokens", "path": str(data / "tokens.bin")}
    every["tokens-long-block"] = {**every["tokens"], "block": 200}
    every["tokens-bin-long-block"] = {**every["tokens-bin"], "block": 200}
    every["npz-few-classes"] = {**every["npz"], "n_classes": 2}
    for what, task, model, field in REFUSED:
        cfg = {"task": every[task] if isinstance(task, str) else task, "model": model,
               "train": {"steps": 2, "batch_size": 8}, "probe": {"n_samples": 8, "steps": [0, 2]},
               "storage": {"root": str(tmp_path / "out")}}
        path = tmp_path / f"{what.replace(' ', '_')}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        code = cli([command, str(path), "--no-progress"] if command == "run" else [command, str(path)])
        err = capsys.readouterr().err
        assert code == 2, f"{what}: exit {code}, stderr {err!r}"
        assert f"{field}:" in err, f"{what}: the error does not name {field}: {err!r}"
    # a sweep whose axis makes one of its points not allowed: the field named, the sweep refused
    sweep = {"name": "bad", "storage": {"root": str(tmp_path / "out")},
             "base": {"model": {"family": "transformer", "width": 4, "heads": 2},
                      "train": {"steps": 2, "batch_size": 8}, "probe": {"n_samples": 8, "steps": [0, 2]}},
             "axes": {"task.name": ["modular", "fc1"]}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    code = cli([command if command == "validate" else "sweep", str(path)] + (["--no-progress"] if command == "run" else []))
    err = capsys.readouterr().err
    assert code == 2 and "model.family:" in err, (code, err)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.parquet"))


# -------------------------------------------------------------------------------------- Recorder


def recorder_model(family: str, task, data: Path) -> torch.nn.Module:
    from phasemap.models.cnn import cnn
    from phasemap.models.resnet import resnet
    from phasemap.models.transformer import Transformer

    torch.manual_seed(0)
    shape, n_out = task.input_shape, task.output_dim
    if family == "mlp":
        return torch.nn.Sequential(torch.nn.Linear(shape[0], 4), torch.nn.ReLU(), torch.nn.Linear(4, n_out))
    if family == "cnn":
        return cnn(shape, n_out, 2, 2, norm="batch")
    if family == "resnet":
        return resnet(shape, n_out, 8, 1, norm="batch")
    if family.startswith("transformer"):
        return Transformer(n_out, shape[0], 1, 4, 2, tied=family.endswith("tied"))
    import matrix_nets

    return matrix_nets.sequence_net(n_out) if len(shape) == 1 else matrix_nets.image_net(2, n_out)


RECORDED = [("mlp", "clusters"), ("cnn", "digits"), ("resnet", "npz"), ("transformer", "modular"),
            ("transformer-tied", "tokens"), ("factory", "digits"), ("factory", "modular")]


@pytest.mark.parametrize("family, task_name", RECORDED, ids=[f"{f}-{t}" for f, t in RECORDED])
def test_recorder_in_a_users_loop(tmp_path, data, family, task_name):
    """A user's own loop: a RunConfig for member 0's columns, or a mapping whose other columns stay null."""
    spec = parse_config(run_data(data, "mlp" if task_name in ("clusters",) else "factory", task_name, tmp_path))
    task = make_task(spec.task)
    model = recorder_model(family, task, data)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(0)
    x_probe, y_probe = task.probe_set(16, torch.Generator().manual_seed(1))
    given = {"family": family.split("-")[0], "tied": family.endswith("tied") or None, "weight_decay": 1e-3, "null_samples": 0 if family == "resnet" else 2,
             "n_samples": 16, "task": task_name}
    with Recorder(str(tmp_path), "mine", f"{family}-{task_name}", config=given, null_samples=given["null_samples"]) as rec:
        for step in range(5):
            if step in (0, 4):
                model.eval()
                rec.probe(model, x_probe, y_probe, task.loss, step, labels=y_probe)
                model.train()
            x, y = task.sample(8, gen)
            loss = task.loss(model(x), y).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    stored = load(str(tmp_path))
    n_layers = int(stored["n_layers"].iloc[0])
    # the Recorder's own measurement options are written; columns not given stay null
    want = {c: None for _, c, _ in CONFIG_COLUMNS} | given | {"depth": n_layers - 1, "covariance": "centered",
                                                               "pah_floor": 1e-4, "max_samples": 32768,
                                                               "per_head": False}  # how the recorder measured
    (h,) = stored["config_hash"].unique()
    assert_root_ok(str(tmp_path), sweep="mine", expected={h: want})


def test_a_recorder_given_a_run_config_measures_as_the_config_says(tmp_path, data):
    """The records say how they were measured: a one-member RunConfig's probe fields (covariance,
    null_samples, max_samples, per_head) are what the Recorder measures with, not only what it writes."""
    from phasemap import measure

    raw = run_data(data, "transformer", "modular", tmp_path)
    raw["probe"].update(per_head=True, covariance="raw")
    cfg = parse_config(raw)
    one = cfg.member_config(cfg.members[0])
    task = make_task(one.task)
    model = recorder_model("transformer", task, data).eval()
    x, y = task.probe_set(16)
    with Recorder(str(tmp_path), "mine", "configured", config=one) as rec:
        rec.probe(model, x, y, task.loss, 0)
    assert_root_ok(str(tmp_path), sweep="mine", expected={one.config_hash(): one})
    got = load(str(tmp_path))
    p = one.probe
    want = measure(model, x, y, task.loss, covariance=p.covariance, pah_floor=p.pah_floor, null_samples=p.null_samples,
                   max_samples=p.max_samples, per_head=p.per_head, weight_decay=one.optimizer.weight_decay[0])
    assert got["layer_name"].tolist() == want["name"].tolist()  # per-head rows included
    for col in ("rga_b", "rwa_a", "rga_b_null", "rga_b_null_se"):
        assert got[col].to_numpy() == pytest.approx(want[col].to_numpy(), rel=1e-6, abs=1e-9, nan_ok=True), col


# ------------------------------------------------------------------------------ Ray, Optuna, S3


def test_grid_and_optuna_sweeps_on_a_real_local_ray(tmp_path, data, local_ray):
    from phasemap.sweep import expand, parse_sweep, run_sweep

    base = run_data(data, "cnn", "digits", tmp_path)
    base.pop("storage"), base.pop("name")
    grid = parse_sweep({"name": "grid", "storage": {"root": str(tmp_path)}, "base": base,
                        "axes": {"train.seed": [0, 1]}, "resources": {"cpus": 1}})
    result = run_sweep(grid, progress=False)
    assert result.failed == [] and result.ran == 1  # configs that differ in member fields: one pack
    expected = {p.member_config(m).config_hash(): p.member_config(m) for p in expand(grid) for m in p.members}
    assert len(expected) == 4
    assert_root_ok(str(tmp_path), sweep="grid", expected=expected)

    base = run_data(data, "transformer", "modular", tmp_path)
    base.pop("storage"), base.pop("name")
    base["train"]["seed"] = [0, 1]
    base["optimizer"]["weight_decay"] = 1e-3
    opt = parse_sweep({"name": "opt", "storage": {"root": str(tmp_path)}, "base": base,
                       "axes": {"optimizer.lr": {"low": 1e-3, "high": 1e-1, "log": True}},
                       "search": {"mode": "optuna", "objective": "rga_b", "direction": "max", "trials": 2, "seed": 1},
                       "resources": {"cpus": 1}})
    result = run_sweep(opt, progress=False)
    assert result.failed == [] and len(result.trials) == 2
    recs = load(str(tmp_path), filters={"sweep_id": "opt"})
    expected = {}
    for (lr,), _ in recs.groupby(["lr"]):
        pack = replace(parse_config(base), {"optimizer.lr": [lr]})
        expected |= expected_of(pack)
    assert_root_ok(str(tmp_path), sweep="opt", expected=expected)
    for t in result.trials:  # the objective: the hidden layers' mean at the last step, over the members
        run = recs[(recs["run_id"] == t["run_id"]) & recs["head"].isna() & (recs["layer"] < recs["n_layers"])]
        last = run[run["step"] == run["step"].max()]
        assert t["objective"] == pytest.approx(last.groupby("member")["rga_b"].mean().mean())


def test_a_boundary_search_on_a_real_local_ray_grows_its_budget_and_predicts(tmp_path, local_ray, capsys):
    from phasemap.sweep import boundary, parse_sweep, run_sweep

    raw = {"name": "edge", "storage": {"root": str(tmp_path)},
           "base": {"task": {"name": "fc1", "input_dim": 8}, "model": {"depth": 2, "width": 8},
                    "train": {"steps": 4, "batch_size": 8, "check_every": 2, "checkpoint_every": 2, "device": "cpu"},
                    "probe": {"n_samples": 16, "steps": [0, 4], "null_samples": 0}},
           "axes": {"optimizer.weight_decay": [0.0, 1e-3, 1e-2, 1e-1], "optimizer.lr": [0.01, 0.05, 0.2]},
           "search": {"mode": "boundary", "budget": 4, "initial": 4, "per_round": 2, "tau": 0.5},
           "resources": {"cpus": 1}}
    first = run_sweep(parse_sweep(raw), progress=False)
    assert first.failed == [] and first.skipped == 0 and first.trained == 4  # the first design: the budget
    cfg = parse_sweep({**raw, "search": {**raw["search"], "budget": 6}})
    cells = boundary.grid_cells(cfg)
    second = run_sweep(cfg, progress=False)  # a new driver: the state comes from storage alone
    # one more round of at most 2 cells (fewer where only one still straddles), none trained again
    assert second.skipped == 4 and second.trained in (1, 2) and second.failed == []
    done = records.complete_members(str(tmp_path), "edge")
    assert len(done) == 4 + second.trained
    assert_root_ok(str(tmp_path), sweep="edge", expected={h: m for c in cells for h, m in zip(c.hashes, c.members)
                                                          if h in done})
    state = boundary.read_state(str(tmp_path), "edge")
    assert (state["round"], state["used"], state["budget"], state["cells"], state["measured"]) == \
        (2, len(done), 6, 12, len(done))
    assert state["finished"] and (state["uncertain"] == 0 or len(done) == 6)  # no cell straddles, or the budget is spent
    design = {tuple(cells[i].point.values()) for i in boundary.initial_design(boundary.coordinates(cfg, cells), 4)}
    assert design == {(0.0, 0.01), (0.1, 0.01), (0.0, 0.2), (0.1, 0.2)}  # the corners
    out = tmp_path / "cells.csv"
    assert cli(["predict", str(tmp_path), "--sweep", "edge", "--tau", "0.5", "--out", str(out)]) == 0
    cells_out = pd.read_csv(out, dtype={"phase": str})
    assert len(cells_out) == 12 and cells_out["measured"].sum() == len(done) == (cells_out["measured"] > 0).sum()
    assert cells_out["phase"].notna().all() and cells_out["confidence"].between(0, 1).all()
    recs = load(str(tmp_path), filters={"sweep_id": "edge"})
    last = recs[(recs["step"] == 4) & (recs["layer"] == 2)]
    from phasemap.measure.phases import label_phases

    for _, cell in cells_out[cells_out["measured"] > 0].iterrows():  # a measured cell: its network's own label
        net = last[(last["weight_decay"] == cell["weight_decay"]) & (last["lr"] == cell["lr"])]
        assert label_phases(net, 0.5).tolist() == [cell["phase"]]
    capsys.readouterr()
    assert cli(["status", str(tmp_path), "--sweep", "edge"]) == 0
    assert f"boundary search (finished): round 2, {len(done)} of a budget of 6 networks, {len(done)} of 12 cells " \
        f"measured, {state['uncertain']} candidate cells still uncertain" in capsys.readouterr().out
    assert cli(["plot", str(tmp_path), "phase-diagram", "--sweep", "edge", "--tau", "0.5",
                "--out", str(tmp_path / "pd.png")]) == 0
    assert "inferred from the Gaussian processes" in capsys.readouterr().out


@pytest.fixture
def s3_env(monkeypatch):
    with moto_server("matrix") as env:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        yield env


def test_a_pack_on_s3_passes_the_checker(tmp_path, data, s3_env):
    root = "s3://matrix/records"
    cfg = parse_config(run_data(data, "cnn", "npz", root))
    assert train_pack(cfg).status == ["ok", "ok"]
    assert_root_ok(root, sweep="matrix", expected=expected_of(cfg))
    assert not list(tmp_path.rglob("*.parquet"))


# ------------------------------------------------------------------- the checker rejects bad roots


@pytest.fixture(scope="module")
def good_root(tmp_path_factory, data):
    """One small complete run (an MLP on clusters) the checker accepts."""
    root = tmp_path_factory.mktemp("good")
    cfg = parse_config(run_data(data, "mlp", "clusters", root))
    train_pack(cfg, root=str(root))
    assert check_root(str(root), expected=expected_of(cfg)) == []
    return root, cfg


def _edit(root: Path, change, version: str | None = None) -> None:
    """Rewrite the run's records file with `change(df)` applied (schema and footer kept, or the
    footer's schema version set to `version`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (path,) = list(root.rglob("records.parquet"))
    table = pq.read_table(path)
    schema = table.schema
    if version is not None:
        schema = schema.with_metadata({**schema.metadata, b"phasemap_schema_version": version.encode()})
    df = change(table.to_pandas())
    pq.write_table(pa.Table.from_pandas(df, schema=schema, preserve_index=False), path)


# a records file edited to break one invariant -> the start of the problem the checker must report
BREAKS = {
    "schema": ("schema:", lambda df: df.assign(schema_version=2)),
    "config": ("config: column 'width'", lambda df: df.assign(width=df["width"] + 1)),
    "config null": ("config: column 'null_samples'", lambda df: df.assign(null_samples=None)),
    "layers": ("layers:", lambda df: df[df["layer"] != 1]),
    "n_layers": ("layers:", lambda df: df.assign(n_layers=df["n_layers"] + 1)),
    "output": ("layers:", lambda df: df.assign(dim_out=df["dim_out"] + 1)),
    "nan": ("nan: ", lambda df: df.assign(rga_b=float("nan"), nan_reason="")),
    "null": ("nan: ", lambda df: df.assign(rwa_a_null=float("nan"))),
    "steps": ("steps:", lambda df: df[df["step"] != 0]),
    "steps order": ("steps:", lambda df: df.iloc[::-1]),
    "steps past the end": ("steps:", lambda df: df.assign(step=df["step"] * 2)),
    "duplicate": ("steps:", lambda df: df.assign(step=0)),
    "member": ("one network:", lambda df: df.assign(member=0)),
    "hash": ("one network:", lambda df: df.assign(config_hash=df["config_hash"].iloc[0])),
    "accuracy": ("accuracy:", lambda df: df.assign(probe_accuracy=1.5)),
}


@pytest.mark.parametrize("name", list(BREAKS) + ["footer"])
def test_the_checker_rejects_a_broken_root(tmp_path, good_root, name):
    import shutil

    root, cfg = good_root
    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    if name == "footer":
        kind = "schema:"
        _edit(broken, lambda df: df, version="2")
    else:
        kind, change = BREAKS[name]
        _edit(broken, change)
    problems = check_root(str(broken), expected=expected_of(cfg))
    assert any(p.startswith(kind) for p in problems), f"a root broken by {name!r} gave {problems}"


def test_the_checker_catches_a_reader_that_fills_in_or_duplicates(tmp_path, good_root, monkeypatch):
    """Without `expected`: a config column stored null must be read null, and the reader must keep
    one network per config."""
    import shutil

    import pandas as pd

    import invariants

    root, _ = good_root
    broken = tmp_path / "nulls"
    shutil.copytree(root, broken)
    _edit(broken, lambda df: df.assign(norm=None))
    assert check_root(str(broken)) == []
    real = invariants.load
    monkeypatch.setattr(invariants, "load", lambda *a, **k: real(*a, **k).fillna({"norm": "batch"}))
    assert any("read as" in p and "'norm'" in p for p in check_root(str(broken)))
    twice = lambda *a, **k: pd.concat([real(*a, **k), real(*a, **k).assign(run_id="other")])  # noqa: E731
    monkeypatch.setattr(invariants, "load", twice)
    assert any(p.startswith("one network: config") for p in check_root(str(broken)))
