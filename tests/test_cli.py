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
