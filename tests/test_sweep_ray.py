"""Sweeps end to end on a real local Ray (integration: these start Ray and driver processes).

Every test ends by checking the dataset: each config exactly once per (step, layer), every
pack complete, no trial errored.
"""

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from phasemap import load
from servers import moto_server
from phasemap.sweep import expand, parse_sweep, run_sweep, sweep_status
from phasemap.train import run_id_of

pytestmark = pytest.mark.integration

ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def sweep_data(root, name="s", steps=60, **over):
    data = {
        "name": name,
        "storage": {"root": str(root)},
        "base": {"task": {"name": "fc1", "input_dim": 8, "teacher_width": 8},
                 "model": {"width": 8},
                 "train": {"steps": steps, "batch_size": 16, "check_every": 10, "checkpoint_every": 20},
                 "probe": {"n_samples": 64, "count": 3}},
        "axes": {"model.depth": [1, 2], "optimizer.weight_decay": [0.0, 1e-2], "train.seed": [0, 1]},
        "resources": {"cpus": 1},
        "max_failures": 2,
    }
    data.update(over)
    return data


def check_dataset(root, cfg):
    """Every config of the grid exactly once per (step, layer); every pack complete."""
    recs = load(str(root))
    packs = expand(cfg)
    n_configs = sum(len(p.members) for p in packs)
    assert recs["config_hash"].nunique() == n_configs
    assert not recs.duplicated(["config_hash", "step", "layer"]).any()
    per_config = recs.groupby("config_hash").size()
    expected = {p.member_config(m).config_hash(): len(p.probe_steps()) * (p.model.depth + 1)
                for p in packs for m in p.members}
    assert per_config.to_dict() == expected
    assert {r["state"] for r in sweep_status(cfg)} == {"complete"}
    return recs


def test_grid_sweep_end_to_end(tmp_path, local_ray, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative root means the driver's folder, not the workers'
    cfg = parse_sweep(sweep_data("rel"))
    result = run_sweep(cfg, progress=False)
    assert result.failed == [] and result.ran == 2 == result.packs
    recs = check_dataset(tmp_path / "rel", cfg)
    assert set(recs["sweep_id"]) == {"s"} and set(recs["status"]) == {"ok"}
    assert all("train_seconds" in t for t in result.trials)


def test_optuna_sweep(tmp_path, local_ray):
    data = sweep_data(tmp_path, name="opt", axes={"optimizer.lr": {"low": 1e-3, "high": 1e-1, "log": True},
                                                  "model.depth": [1, 2]},
                      search={"mode": "optuna", "objective": "rga_b", "direction": "max", "trials": 3, "seed": 1})
    data["base"]["train"]["seed"] = [0, 1]
    cfg = parse_sweep(data)
    result = run_sweep(cfg, progress=False)
    assert result.failed == [] and len(result.trials) == 3
    recs = load(str(tmp_path))
    assert recs["run_id"].nunique() == 3 and recs["lr"].nunique() == 3
    assert all(0.001 <= lr <= 0.1 for lr in recs["lr"].unique())
    assert not recs.duplicated(["config_hash", "step", "layer"]).any()
    objectives = [t["objective"] for t in result.trials]
    for t in result.trials:  # the reported objective is the records' own mean at the last step
        run = recs[(recs["run_id"] == t["run_id"]) & (recs["layer"] < recs["n_layers"])]  # hidden layers
        assert t["objective"] == pytest.approx(run[run["step"] == run["step"].max()]["rga_b"].mean())
    assert len(set(objectives)) == 3
    assert [r["state"] for r in sweep_status(cfg)] == ["complete"] * 3  # runs found in storage


@contextmanager
def _driver(config_path, *extra):
    """`phasemap sweep` in a session of its own (Ray's processes with it), killed if still running at the end."""
    driver = subprocess.Popen(
        [sys.executable, "-m", "phasemap.cli", "sweep", str(config_path), "--no-progress", "--num-cpus", "2", *extra],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        yield driver
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)


def _wait(predicate, timeout, what):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _attempt(root, sweep_id, run_id):
    path = Path(root) / f"sweep={sweep_id}" / f"run={run_id}" / "_ATTEMPT.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def test_killed_worker_is_retried_and_resumes_without_duplicates(tmp_path):
    data = sweep_data(tmp_path / "out", name="kill", steps=3000)
    data["base"]["train"]["checkpoint_every"] = 100
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(data))
    cfg = parse_sweep(data)
    target = run_id_of(expand(cfg)[0])
    folder = tmp_path / "out" / "sweep=kill" / f"run={target}"
    with _driver(config) as driver:
        # wait until the first pack is mid-run (a checkpoint exists), then kill its worker
        _wait(lambda: (folder / "_checkpoint.pt").exists(), 120, "a checkpoint of the first pack")
        first = _attempt(tmp_path / "out", "kill", target)
        assert first["from_step"] == 0
        os.kill(first["pid"], signal.SIGKILL)
        out, _ = driver.communicate(timeout=300)
    assert driver.returncode == 0, out
    assert "0 failed" in out
    second = _attempt(tmp_path / "out", "kill", target)
    assert second["pid"] != first["pid"] and second["from_step"] > 0  # resumed from its checkpoint
    check_dataset(tmp_path / "out", cfg)


def test_killed_driver_then_resume_runs_only_what_is_missing(tmp_path):
    data = sweep_data(tmp_path / "out", name="drv", steps=400,
                      axes={"model.depth": [1, 2, 3, 4], "optimizer.weight_decay": [0.0, 1e-2]})
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(data))
    cfg = parse_sweep(data)
    root = tmp_path / "out"
    with _driver(config) as driver:
        _wait(lambda: len(list(root.rglob("_COMPLETE.json"))) >= 1, 120, "a first complete pack")
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray it started ...
        driver.wait(timeout=30)
        for attempt in root.rglob("_ATTEMPT.json"):  # ... and its workers, in sessions of their own
            try:
                os.kill(json.loads(attempt.read_text())["pid"], signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
    done_before = {p.parent.name: p.read_text() for p in root.rglob("_COMPLETE.json")}
    assert 1 <= len(done_before) < 4
    # Ray's own experiment folder is gone: resume relies on completion markers alone
    import shutil

    shutil.rmtree(root / "_tune", ignore_errors=True)
    again = subprocess.run(
        [sys.executable, "-m", "phasemap.cli", "sweep", str(config), "--resume", "--no-progress", "--num-cpus", "2"],
        env=ENV, capture_output=True, text=True, timeout=300,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{2 * len(done_before)} configs already complete" in again.stdout  # two weight decays per pack
    assert f"{4 - len(done_before)} trial(s) run ({2 * (4 - len(done_before))} configs)" in again.stdout
    for name, text in done_before.items():  # complete packs were not run again
        assert (root / "sweep=drv" / name / "_COMPLETE.json").read_text() == text
    check_dataset(root, cfg)


def test_ctrl_c_exits_130_and_says_what_is_left(tmp_path):
    """Ctrl-C (SIGINT to the driver's process group, as a terminal sends it) once the first pack
    trains: Tune stops its trials and returns; the sweep must not read as done (it exited 0 with
    "0 failed")."""
    data = sweep_data(tmp_path / "out", name="int", steps=100_000, axes={"model.depth": [1, 2]})
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(data))
    root = tmp_path / "out"
    with _driver(config, "--num-cpus", "1") as driver:  # one worker to start: the first trial begins sooner
        _wait(lambda: list(root.rglob("_ATTEMPT.json")), 120, "the first pack to start")
        os.killpg(driver.pid, signal.SIGINT)
        out, _ = driver.communicate(timeout=120)
    assert driver.returncode == 130, out
    assert "sweep int: interrupted: 2 packs not complete" in out
    assert "rerun the same command" in out and "failed" not in out
    assert not list(root.rglob("_COMPLETE.json"))


@pytest.fixture
def s3_server(tmp_path):
    """A real S3-compatible server (moto) on loopback; credentials only in the environment."""
    with moto_server("phasemap") as env:
        yield env


def test_sweep_writes_to_s3_and_reads_back(tmp_path, s3_server, monkeypatch):
    data = sweep_data("s3://phasemap/sweeps", name="s3")
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(data))
    assert "testing" not in config.read_text()  # credentials never in the config
    run = subprocess.run(
        [sys.executable, "-m", "phasemap.cli", "sweep", str(config), "--no-progress", "--num-cpus", "2"],
        env={**ENV, **s3_server}, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    cfg = parse_sweep(data)
    recs = check_dataset("s3://phasemap/sweeps", cfg)
    assert len(recs) > 0 and not list(tmp_path.rglob("*.parquet"))
