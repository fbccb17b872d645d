"""The command line: exit codes, what a failing command prints, status from storage, import cost."""

import subprocess
import sys

import pytest
import yaml

from phasemap import ConfigError
from phasemap.cli import main

RUN = {
    "name": "c",
    "task": {"name": "fc1", "input_dim": 8, "teacher_width": 8},
    "model": {"depth": 2, "width": 8},
    "optimizer": {"name": "sgd", "lr": 0.05},
    "train": {"steps": 20, "batch_size": 16, "device": "cpu", "check_every": 10},
    "probe": {"n_samples": 32, "steps": [10]},
}


def write(tmp_path, data, name="c.yaml"):
    f = tmp_path / name
    f.write_text(yaml.safe_dump(data))
    return str(f)


# ----------------------------------------------------------------------------- run: exit codes


def test_run_an_internal_error_shows_its_traceback_and_exits_1(tmp_path, capsys, monkeypatch):
    def broken(cfg, **kw):
        raise RuntimeError("CUDA out of memory (an internal failure)")

    monkeypatch.setattr("phasemap.train.train_pack", broken)
    assert main(["run", write(tmp_path, RUN), "--out", str(tmp_path / "out"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert "in broken" in err and "RuntimeError: CUDA out of memory (an internal failure)" in err


def test_run_a_config_error_met_while_training_is_one_line_per_problem_and_exits_2(tmp_path, capsys, monkeypatch):
    def bad_data(cfg, **kw):
        raise ConfigError(["task.vocab_size: `token ids < vocab_size` must hold, but got id 70"], "data")

    monkeypatch.setattr("phasemap.train.train_pack", bad_data)
    assert main(["run", write(tmp_path, RUN), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines() == ["error: data: 1 problem(s):",
                                        "  - task.vocab_size: `token ids < vocab_size` must hold, but got id 70"]


def test_run_on_cuda_without_cuda_is_a_config_error(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    data = {**RUN, "train": {**RUN["train"], "device": "cuda"}}
    assert main(["run", write(tmp_path, data), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "train.device: `cuda is available` must hold, but got device='cuda'" in err


# ----------------------------------------------------------------------------- status from storage


def tiny_sweep(root):
    """A grid of 3 packs (one per depth, 4 members each) under `root`: the first trained, the
    second interrupted after its step-10 records, the third not started."""
    from phasemap.sweep import expand, parse_sweep

    data = {"name": "s", "storage": {"root": str(root)}, "base": {k: v for k, v in RUN.items() if k != "name"},
            "axes": {"model.depth": [1, 2, 3], "optimizer.weight_decay": [0.0, 0.001], "train.seed": [0, 1]}}
    return data, expand(parse_sweep(data))


@pytest.fixture(scope="module")
def status_root(tmp_path_factory):
    from phasemap import parse_config, train_pack

    root = tmp_path_factory.mktemp("status")
    data, packs = tiny_sweep(root)
    assert [(p.model.depth, len(p.members)) for p in packs] == [(1, 4), (2, 4), (3, 4)]
    train_pack(packs[0])

    def stop(step):
        if step == 15:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_pack(packs[1], progress=stop)
    other = parse_config({**RUN, "name": "t", "storage": {"root": str(root), "sweep_id": "t"}})
    train_pack(other)
    return root, data, packs


def status_lines(out):
    return [" ".join(line.split()) for line in out.splitlines()]  # columns padded: compare words


def test_status_of_a_root_names_each_pack_by_its_configs_and_last_step(status_root, capsys):
    from phasemap.sweep.status import run_id_of

    root, _, packs = status_root
    one, two, _ = (run_id_of(p) for p in packs)
    assert main(["status", str(root), "--sweep", "s"]) == 0
    lines = status_lines(capsys.readouterr().out)
    assert lines[0] == f"sweep 's' under {root}: 1 complete, 0 running, 1 interrupted, 0 failed, 0 missing of 2 packs"
    assert lines[1] == "members (networks): 4 complete, 0 running, 4 interrupted, 0 failed, 0 missing of 8"
    assert lines[2] == "state step members configs run"
    assert sorted(lines[3:]) == sorted([f"complete 20/20 4 depth=1 weight_decay=0,0.001 seed=0,1 {one}",
                                        f"interrupted 10/20 4 depth=2 weight_decay=0,0.001 seed=0,1 {two}"])
    # every sweep under the root when none is named
    assert main(["status", str(root)]) == 0
    out = capsys.readouterr().out
    assert "sweep 's' under" in out and f"sweep 't' under {root}: 1 complete" in out
    assert main(["status", str(root), "--sweep", "nope"]) == 2
    assert "error: sweep 'nope' not found under" in capsys.readouterr().err and "(sweeps there: s, t)"


def test_status_of_a_sweep_config_names_its_packs_too(status_root, tmp_path, capsys):
    from phasemap.sweep.status import run_id_of

    root, data, packs = status_root
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(data))
    assert main(["status", str(f)]) == 0
    lines = status_lines(capsys.readouterr().out)
    assert lines[0] == f"sweep 's' under {root}: 1 complete, 0 running, 1 interrupted, 0 failed, 1 missing of 3 packs"
    assert lines[1] == "members (networks): 4 complete, 0 running, 4 interrupted, 0 failed, 4 missing of 12"
    one, two, three = (run_id_of(p) for p in packs)
    assert lines[3:] == [f"complete 20/20 4 depth=1 weight_decay=0,0.001 seed=0,1 {one}",
                         f"interrupted 10/20 4 depth=2 weight_decay=0,0.001 seed=0,1 {two}",
                         f"missing -/20 4 depth=3 weight_decay=0,0.001 seed=0,1 {three}"]


# ----------------------------------------------------------------------------- import cost


def test_member_counts_count_each_member_in_its_packs_state():
    from phasemap.sweep.status import member_counts

    packs = [{"state": s, "members": n} for s, n in
             [("complete", 4), ("interrupted", 2), ("interrupted", 3), ("failed", 1), ("missing", 4), ("running", 2),
              ("missing", None)]]
    assert member_counts(packs) == {"complete": 4, "running": 2, "interrupted": 5, "failed": 1, "missing": 4}


FAR_NETS = """
from torch import nn
def small(hidden=6):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 3))
"""


def test_status_of_a_root_trained_elsewhere_reads_storage_alone(tmp_path, monkeypatch):
    """A complete run whose factory module is not importable here and whose data file is gone
    (a root copied from another machine): status names it, imports neither the factory nor torch."""
    import numpy as np

    from phasemap import parse_config, train_pack

    made = tmp_path / "elsewhere"
    made.mkdir()
    (made / "far_nets.py").write_text(FAR_NETS)
    rng = np.random.default_rng(0)
    np.savez(made / "imgs.npz", x=rng.integers(0, 256, (96, 8, 8), dtype=np.uint8), y=rng.integers(0, 3, 96))
    monkeypatch.chdir(made)  # the factory is found in the current directory
    root = tmp_path / "root"
    cfg = parse_config({"name": "far", "task": {"name": "npz", "path": str(made / "imgs.npz"), "n_classes": 3,
                                                "held_out": 32},
                        "model": {"family": "factory", "factory": "far_nets:small", "kwargs": {"hidden": 6}},
                        "optimizer": {"lr": 0.01, "weight_decay": [0.0, 0.001]},
                        "train": {"steps": 4, "batch_size": 16}, "probe": {"n_samples": 16, "steps": [4]},
                        "storage": {"root": str(root), "sweep_id": "far"}})
    run_id = train_pack(cfg).run_id
    sys.modules.pop("far_nets", None)
    (made / "far_nets.py").unlink()
    (made / "imgs.npz").unlink()
    script = f"""
import sys
from phasemap import cli
assert cli.main(["status", {str(root)!r}]) == 0
print("imported:", [m for m in ("torch", "far_nets") if m in sys.modules])
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    lines = status_lines(done.stdout)
    assert lines[:4] == [f"sweep 'far' under {root}: 1 complete, 0 running, 0 interrupted, 0 failed, 0 missing of 1 packs",
                         "members (networks): 2 complete, 0 running, 0 interrupted, 0 failed, 0 missing of 2",
                         "state step members configs run",
                         f"complete 4/4 2 weight_decay=0,0.001 {run_id}"]
    assert lines[4] == "imported: []"
    with pytest.raises(ConfigError, match="model.factory: `importable` must hold"):
        parse_config(cfg.to_dict())  # a config to train still checks the environment
    assert parse_config(cfg.to_dict(), check_environment=False) == cfg
    # the sweep's completion markers are read without the environment too (what a sweep skips)
    from phasemap import records

    assert set(records.complete_members(str(root), "far").values()) == {run_id}


def test_help_and_the_reading_commands_import_no_torch(status_root, tmp_path):
    """--help imports nothing heavy; status, query, plot, report and serve's answers read records
    without torch (it costs ~1.5 s of every command's start)."""
    root = str(status_root[0])
    script = f"""
import sys
from phasemap import cli
try:
    cli.main(["--help"])
except SystemExit:
    pass
print("help imported:", [m for m in ("torch", "pandas", "matplotlib", "ray", "duckdb") if m in sys.modules])
for argv in (["status", {root!r}], ["query", {root!r}, "SELECT count(*) AS n FROM records"],
             ["plot", {root!r}, "layers", "--sweep", "s", "--out", {str(tmp_path / "l.png")!r}],
             ["report", {root!r}, "--sweep", "s", "--out", {str(tmp_path / "report")!r}]):
    assert cli.main(argv) == 0, argv
from phasemap.serve import api, app  # serve's answers, without its server loop
live = app.Server({root!r}).live
live.refresh()
assert api.figure(live, "s", "phase-diagram", {{}})["svg"] and api.status(live, "s", api.Progress())["networks"]
print("commands imported torch:", "torch" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "help imported: []" in done.stdout
    assert "commands imported torch: False" in done.stdout
    assert (tmp_path / "l.png").exists() and (tmp_path / "report" / "index.html").exists()


def test_version_comes_from_package_metadata(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"phasemap {version('phasemap')}"
