"""Experiment trackers (a sweep's `tracking`): every probe's metrics per member reach TensorBoard,
MLflow and W&B through Ray Tune's own logger callbacks. The sweep runs on a real local Ray; every
tracker writes files under tmp_path (MLflow's file store, W&B offline): nothing leaves the machine.
"""

import json
import os
import struct
from pathlib import Path

import pytest
import yaml

from phasemap import load
from phasemap.cli import main
from phasemap.sweep import parse_sweep, run_sweep
from phasemap.sweep import spec

STEPS = [0, 2, 4]
ALIGNMENTS = ("rga_a", "rwa_a", "gwa_a", "rga_b", "rwa_b", "gwa_b")


def sweep_data(root, tracking=("tensorboard", "mlflow", "wandb")):
    return {
        "name": "tracked",
        "storage": {"root": str(root)},
        "base": {"task": {"name": "fc1", "input_dim": 4, "teacher_width": 4},
                 "model": {"depth": 1, "width": 4},
                 "train": {"steps": 4, "batch_size": 8},
                 "probe": {"n_samples": 32, "steps": STEPS}},
        "axes": {"train.seed": [0, 1]},  # one pack of 2 members
        "resources": {"cpus": 1},
        "tracking": list(tracking),
    }


def tensorboard_scalars(folder: Path) -> dict[int, dict[str, float]]:
    """{global step: {tag: value}} of every event file under `folder` (TFRecord framing: length,
    its CRC, the Event proto, its CRC), read with the protobuf classes tensorboardX ships."""
    from tensorboardX.proto.event_pb2 import Event

    scalars: dict[int, dict[str, float]] = {}
    files = sorted(folder.rglob("events.out.tfevents.*"))
    assert files, f"no TensorBoard event file under {folder}"
    for path in files:
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                if value.WhichOneof("value") == "simple_value":
                    scalars.setdefault(event.step, {})[value.tag] = value.simple_value
    return scalars


def by_probe_step(series: dict[int, dict[str, float]], step_key: str) -> dict[int, dict[str, float]]:
    """Tune's iterations (the trackers' x axis) re-keyed by the training step each probe reported."""
    return {int(values[step_key]): values for values in series.values() if step_key in values}


@pytest.mark.integration
def test_every_probe_reaches_tensorboard_mlflow_and_wandb(tmp_path, local_ray, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{tmp_path / 'mlruns'}")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a file store: mlflow 3 asks for the opt-in
    monkeypatch.setenv("WANDB_MODE", "offline")  # the logging actor gets it from the driver
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = parse_sweep(sweep_data(tmp_path / "results"))
    result = run_sweep(cfg, progress=False)
    assert result.failed == [] and result.ran == 1 == result.packs
    assert [t.get("objective") is not None for t in result.trials] == [True]  # the final report came last

    recs = load(str(tmp_path / "results"))
    last_hidden = recs[(recs["layer"] == 1) & recs["head"].isna()]  # depth 1: layer 1 is the last hidden one
    want = {(int(r.member), int(r.step)): r for r in last_hidden.itertuples()}
    assert sorted(want) == [(k, s) for k in (0, 1) for s in STEPS]

    def check(logged: dict[int, dict[str, float]], prefix: str = "", rel: float = 1e-9):
        assert sorted(logged) == STEPS, logged.keys()
        for (k, step), row in want.items():
            got = logged[step]
            for c in ALIGNMENTS + ("train_loss", "probe_loss"):
                assert got[f"{prefix}member{k}/{c}"] == pytest.approx(getattr(row, c), rel=rel), (k, step, c)
                if c in ALIGNMENTS:
                    null = getattr(row, f"{c}_null")
                    assert got[f"{prefix}member{k}/{c}_excess"] == pytest.approx(
                        (getattr(row, c) - null) / (1 - null), rel=max(rel, 1e-6), abs=1e-6)
            assert f"{prefix}member{k}/probe_accuracy" not in got  # NaN on a regression task: left out

    # TensorBoard: event files in the trial's folder under the root's _tune (float32 values)
    tb = tensorboard_scalars(tmp_path / "results" / "_tune")
    check(by_probe_step(tb, "ray/tune/step"), prefix="ray/tune/", rel=1e-6)
    assert any("ray/tune/objective" in v for v in tb.values())  # the final report too

    # MLflow: one run per trial in the experiment named after the sweep; its config as params
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"file:{tmp_path / 'mlruns'}")
    experiment = client.get_experiment_by_name("tracked")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    keys = ["step"] + [f"member{k}/{c}{x}" for k in (0, 1) for c in ALIGNMENTS for x in ("", "_excess")] + \
        [f"member{k}/{c}" for k in (0, 1) for c in ("train_loss", "probe_loss")]
    ml: dict[int, dict[str, float]] = {}
    for key in keys:
        for m in client.get_metric_history(run.info.run_id, key):
            ml.setdefault(m.step, {})[key] = m.value
    check(by_probe_step(ml, "step"))
    assert run.data.params["pack/model/depth"] == "1" and run.data.params["pack/train/seed"] == "(0, 1)"

    # W&B offline: the run's folder holds its history in the run log (.wandb), the final report last
    (folder,) = (tmp_path / "wandb").glob("offline-run-*")
    history = wandb_history(next(folder.glob("*.wandb")))
    check(by_probe_step(history, "step"))
    assert "objective" in history[max(history)] and "step" not in history[max(history)]


def wandb_history(path: Path) -> dict[int, dict[str, float]]:
    """{history row: {key: value}} of a W&B run log (.wandb): LevelDB's log format (a 7-byte file
    header; 32 KiB blocks of chunks, each with a 7-byte header: CRC, length, type full / first /
    middle / last) around wandb's Record protos."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, at, block, pieces, history = path.read_bytes(), 7, 32768, b"", {}
    assert data[:4] == b":W&B"
    while at + 7 <= len(data):
        if block - at % block < 7:  # a block's tail too short for a header: zero padding
            at += block - at % block
            continue
        _, length, kind = struct.unpack("<IHB", data[at:at + 7])
        chunk, at = data[at + 7:at + 7 + length], at + 7 + length
        if kind == 0:
            continue
        pieces = chunk if kind in (1, 2) else pieces + chunk
        if kind not in (1, 4):
            continue
        record = Record.FromString(pieces)
        if record.WhichOneof("record_type") == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history[len(history)] = {k: v for k, v in items.items() if isinstance(v, (int, float))}
    return history


def test_an_unknown_tracker_is_a_config_error_naming_tracking(tmp_path, capsys):
    f = tmp_path / "sweep.yaml"
    f.write_text(yaml.safe_dump(sweep_data(tmp_path / "results", tracking=["tensorbord"])))
    assert main(["validate", str(f)]) == 2
    err = capsys.readouterr().err
    assert "tracking: `tracker in ('tensorboard', 'mlflow', 'wandb')` must hold, but got 'tensorbord'" in err
    assert main(["sweep", str(f)]) == 2  # before anything starts
    assert not (tmp_path / "results").exists()
    f.write_text(yaml.safe_dump({**sweep_data(tmp_path / "results"), "tracking": "mlflow"}))
    assert main(["validate", str(f)]) == 2
    assert "tracking: `tracking is a list of tracker names` must hold, but got 'mlflow'" in capsys.readouterr().err


def test_a_tracker_whose_package_is_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(spec.TRACKERS, "wandb", ("phasemap_no_such_module", spec.TRACKERS["wandb"][1]))
    with pytest.raises(spec.ConfigError) as err:
        parse_sweep(sweep_data("results", tracking=["tensorboard", "wandb"]))
    assert err.value.problems == ["tracking: 'wandb' needs the phasemap_no_such_module package, which is not "
                                  "installed: pip install 'phasemap[wandb]'"]
    assert parse_sweep(sweep_data("results", tracking=[])).tracking == ()


def test_on_probe_sees_every_probe_once_and_a_reused_run_none(tmp_path):
    from phasemap.sweep import expand
    from phasemap.sweep.driver import probe_metrics
    from phasemap.train import train_pack

    (pack,) = expand(parse_sweep(sweep_data(tmp_path, tracking=[])))
    seen = []
    result = train_pack(pack, on_probe=lambda step, rows: seen.append((step, probe_metrics(step, rows))))
    assert [step for step, _ in seen] == STEPS and not result.reused
    recs = result.records
    row = recs[(recs["member"] == 1) & (recs["step"] == 2) & (recs["layer"] == 1)].iloc[0]
    assert seen[1][1]["member1/gwa_a"] == row["gwa_a"] and seen[1][1]["step"] == 2
    assert {k.split("/")[1] for k in seen[1][1] if "/" in k} == {
        *ALIGNMENTS, *(f"{c}_excess" for c in ALIGNMENTS), "train_loss", "probe_loss"}
    again = []
    assert train_pack(pack, on_probe=lambda step, rows: again.append(step)).reused and again == []



def test_an_optuna_search_passes_over_probe_reports(monkeypatch):
    """Probe reports carry no objective: the search skips them, and Tune's strict metric check is
    off only while a tracked sweep fits (a whole optuna sweep with tracking: ~6 s, left out of
    this file's budget; run once by hand)."""
    from phasemap.sweep.driver import _optuna_search, _probe_reports

    search = _optuna_search()(metric="objective", mode="max", seed=0)
    search.on_trial_result("t", {"step": 2, "member0/rga_b": 0.5})  # OptunaSearch itself: KeyError
    monkeypatch.delenv("TUNE_DISABLE_STRICT_METRIC_CHECKING", raising=False)
    with _probe_reports(True):
        assert os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] == "1"
    assert "TUNE_DISABLE_STRICT_METRIC_CHECKING" not in os.environ
    with _probe_reports(False):
        assert "TUNE_DISABLE_STRICT_METRIC_CHECKING" not in os.environ
