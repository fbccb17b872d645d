"""`make demo`'s sweep prints what a reader needs, nothing of Ray's own: no start-up banner, no
Tune configuration box or results folder (they stay under -v), no WARNING."""

import os
import subprocess
import sys

import pytest
import yaml

RAY_LINES = ("Started a local Ray instance", "Configuration for experiment", "View detailed results here",
             "Search algorithm", "WARNING")


@pytest.mark.integration
def test_the_demos_sweep_prints_no_ray_banner_box_or_warning(tmp_path):
    sweep = {"name": "quick", "base": {"task": {"name": "fc1", "input_dim": 4, "teacher_width": 4},
                                       "model": {"depth": 1, "width": 4},
                                       "train": {"steps": 2, "batch_size": 8, "check_every": 1},
                                       "probe": {"n_samples": 8, "steps": [2]}},
             "axes": {"optimizer.weight_decay": [0.0, 1.0e-3]}, "resources": {"cpus": 1}}
    (tmp_path / "quick.yaml").write_text(yaml.safe_dump(sweep))
    # the Makefile's demo sweep (its report's "not applicable" figures: test_query_plots, in-process)
    done = subprocess.run([sys.executable, "-m", "phasemap.cli", "sweep", "quick.yaml", "--out", "results", "--resume",
                           "--num-cpus", "1"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "sweep quick: 1 trial(s) run (2 configs), 0 configs already complete, 0 failed" in done.stdout
    assert [line for line in (done.stdout + done.stderr).splitlines() if any(s in line for s in RAY_LINES)] == []
