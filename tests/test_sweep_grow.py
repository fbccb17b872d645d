"""Sweeps that grow, two drivers, storage faults and Optuna repeats, on a real local Ray
(integration: these start Ray, driver processes, an S3 server and a TCP proxy).

Every test ends with the dataset holding exactly one network per distinct config.
"""

import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import yaml

from phasemap import load, sql
from servers import free_port, moto_server, s3_client
from phasemap.sweep import members, parse_sweep, run_sweep, sweep_status

pytestmark = pytest.mark.integration

ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def sweep_data(root, name="g", steps=40, **axes):
    return {
        "name": name,
        "storage": {"root": str(root)},
        "base": {"task": {"name": "fc1", "input_dim": 6, "teacher_width": 6}, "model": {"width": 6, "depth": 1},
                 "train": {"steps": steps, "batch_size": 8, "check_every": 10, "checkpoint_every": 20},
                 "probe": {"n_samples": 32, "count": 2}},
        "axes": axes or {"model.depth": [1], "optimizer.weight_decay": [0.0, 1e-3]},
        "resources": {"cpus": 1},
    }


def networks(root):
    """(networks stored, distinct configs) under a root: every stored run's members, duplicates included."""
    stored = sql(str(root), "SELECT count(*) AS n FROM (SELECT DISTINCT run_id, config_hash FROM all_records)")
    distinct = sql(str(root), "SELECT count(DISTINCT config_hash) AS n FROM all_records")
    return int(stored.iloc[0, 0]), int(distinct.iloc[0, 0])


def check_one_per_config(root, cfg):
    recs = load(str(root))
    wanted = {m.config_hash() for m in members(cfg)}
    assert wanted <= set(recs["config_hash"])
    assert not recs.duplicated(["config_hash", "step", "layer"]).any()
    n, distinct = networks(root)
    assert n == distinct, f"{n} networks stored for {distinct} configs"
    return recs


def test_a_grid_grown_on_two_axes_trains_only_its_new_members(tmp_path, local_ray):
    axes = {"model.depth": [1], "optimizer.weight_decay": [0.0, 1e-3], "train.seed": [0]}
    first = parse_sweep(sweep_data(tmp_path, **axes))
    assert run_sweep(first, progress=False).trained == 2
    trials = load(str(tmp_path)).groupby("config_hash")["trial_id"].unique().to_dict()
    # one more weight decay: two packs' worth of old members are reused, one new member trains
    axes["optimizer.weight_decay"] = [0.0, 1e-3, 1e-2]
    grown = parse_sweep(sweep_data(tmp_path, **axes))
    result = run_sweep(grown, progress=False)
    assert (result.trained, result.skipped, result.failed) == (1, 2, [])
    recs = check_one_per_config(tmp_path, grown)
    for h, trial in trials.items():  # the old members' records are the ones written the first time
        assert list(recs[recs["config_hash"] == h]["trial_id"].unique()) == list(trial)
    # one more depth (a new shape: a pack of its own) and a second seed on every member
    axes.update({"model.depth": [1, 2], "train.seed": [0, 1]})
    again = parse_sweep(sweep_data(tmp_path, **axes))
    result = run_sweep(again, progress=False)
    assert (result.trained, result.skipped, result.failed) == (9, 3, [])
    check_one_per_config(tmp_path, again)
    assert networks(tmp_path) == (12, 12)
    # resume (and a plain rerun) of a complete sweep trains nothing
    assert run_sweep(again, resume=True, progress=False).trained == 0
    assert run_sweep(again, progress=False).ran == 0
    assert {r["state"] for r in sweep_status(again)} == {"complete"}
    assert sum(r["members"] for r in sweep_status(again)) == 12


def test_an_optuna_point_sampled_twice_is_trained_once(tmp_path, local_ray):
    data = sweep_data(tmp_path, name="opt", axes=None)
    data["axes"] = {"optimizer.lr": [0.05]}  # every trial samples the same point
    data["search"] = {"mode": "optuna", "objective": "rga_b", "trials": 3, "seed": 0}
    result = run_sweep(parse_sweep(data), progress=False)
    assert result.failed == [] and len(result.trials) == 3
    assert sorted(t["reused"] for t in result.trials) == [False, True, True]
    assert len({t["objective"] for t in result.trials}) == 1  # the same records, the same score
    assert networks(tmp_path) == (1, 1)


def _driver(config, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "phasemap.cli", "sweep", str(config), "--no-progress", "--num-cpus", "2", *extra],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_two_drivers_on_one_sweep_train_every_pack_once(tmp_path):
    data = sweep_data(tmp_path / "out", name="two", steps=600,
                      **{"model.depth": [1, 2], "optimizer.weight_decay": [0.0, 1e-3]})
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(data))
    drivers = [_driver(config), _driver(config)]
    outs = [d.communicate(timeout=400)[0] for d in drivers]
    assert [d.returncode for d in drivers] == [0, 0], outs
    cfg = parse_sweep(data)
    recs = check_one_per_config(tmp_path / "out", cfg)
    for run in (tmp_path / "out" / "sweep=two").glob("run=*"):
        assert [p.name for p in run.glob("_LEASE-*")] == ["_LEASE-000001.json"]  # taken once, never taken over
        assert recs[recs["run_id"] == run.name[4:]]["trial_id"].nunique() == 1  # one trainer wrote its records
    reused = sum(int(line.split()[0]) for out in outs for line in out.splitlines() if "found their pack complete" in line)
    assert reused == 2, outs  # of the 4 trials, 2 trained and 2 found the other driver's records


class Proxy:
    """A TCP proxy on loopback: the S3 endpoint the sweep sees, which a test can cut and restore."""

    def __init__(self, target_port):
        self.target, self.port = target_port, free_port()
        self.server = None
        self.conns = []
        self.start()

    def start(self):
        self.server = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        threading.Thread(target=self._accept, args=(self.server,), daemon=True).start()

    def _accept(self, server):
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self):
        self.server.close()
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
                c.close()
            except OSError:
                pass
        self.conns = []


def _wait(predicate, timeout, what):
    end = time.time() + timeout
    while time.time() < end:
        if value := predicate():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def s3_behind_proxy():
    """moto on loopback behind a proxy the test can cut: (environment reaching the proxy, proxy, client)."""
    with moto_server("phasemap") as env:
        proxy = Proxy(int(env["AWS_ENDPOINT_URL"].rsplit(":", 1)[1]))
        yield {**env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}"}, proxy, s3_client(env)


def test_an_unreachable_s3_endpoint_ends_the_sweep_with_one_line_and_resume_finishes_it(tmp_path, s3_behind_proxy):
    env, proxy, client = s3_behind_proxy
    data = sweep_data("s3://phasemap/sweeps", name="cut", steps=800,
                      **{"model.depth": [1, 2, 3], "optimizer.weight_decay": [0.0, 1e-3]})
    data["base"]["train"]["checkpoint_every"] = 200
    data["max_failures"] = 0
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(data))
    driver = subprocess.Popen(
        [sys.executable, "-m", "phasemap.cli", "sweep", str(config), "--no-progress", "--num-cpus", "2"],
        env={**ENV, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)

    def complete():
        listed = client.list_objects_v2(Bucket="phasemap", Prefix="sweeps/sweep=cut/").get("Contents", [])
        return [o["Key"] for o in listed if o["Key"].endswith("_COMPLETE.json")]

    try:
        _wait(complete, 180, "a first complete pack")
        proxy.cut()  # the endpoint is gone mid-sweep (each S3 call then fails after ~6 s of retries)
        out, err = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, 9)
    assert driver.returncode == 1, out + err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "storage fault at root 's3://phasemap/sweeps'" in errors[0], err
    assert "Traceback" not in err and "EOFError" not in err
    done = complete()
    assert 1 <= len(done) < 3
    proxy.start()  # the endpoint is back: the same command finishes the sweep
    again = subprocess.run(
        [sys.executable, "-m", "phasemap.cli", "sweep", str(config), "--resume", "--no-progress", "--num-cpus", "2"],
        env={**ENV, **env}, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{2 * len(done)} configs already complete" in again.stdout
    # what `make demo` shows too: nothing of Ray's own (start-up banner, Tune's configuration box,
    # its results folder: those stay under -v) and no WARNING
    ray_lines = ("Started a local Ray instance", "Configuration for experiment", "View detailed results here",
                 "Search algorithm", "WARNING")
    assert [line for line in (again.stdout + again.stderr).splitlines() if any(s in line for s in ray_lines)] == []
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="phasemap", Prefix="sweeps/").get("Contents", [])]
    assert not [k for k in keys if "/_tmp-" in k]
    assert len([k for k in keys if k.endswith("/records.parquet")]) == 3  # one data file per finished run
    for key, value in env.items():
        os.environ[key] = value
    try:
        check_one_per_config("s3://phasemap/sweeps", parse_sweep(data))
    finally:
        for key in env:
            os.environ.pop(key, None)


def test_a_root_that_cannot_be_written_is_named_before_ray_starts(tmp_path):
    (tmp_path / "file").write_text("a file where the root's folder would go")
    data = sweep_data(tmp_path / "file" / "out")
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(data))
    run = subprocess.run([sys.executable, "-m", "phasemap.cli", "sweep", str(config), "--no-progress"],
                         env=ENV, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    first = run.stderr.splitlines()[0]
    assert first.startswith(f"error: storage fault at root '{tmp_path / 'file' / 'out'}'") and "Traceback" not in run.stderr


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 200 KB filesystem (tmpfs); skipped where this process may not mount one."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    try:
        mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mnt)], capture_output=True,
                               text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot mount a small tmpfs here: {e}")
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mount.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_ends_the_sweep_with_one_line_and_resume_finishes_it(tmp_path, tiny_disk):
    data = sweep_data(tiny_disk / "out", name="full", steps=200,
                      **{"model.width": [16, 32], "optimizer.weight_decay": [0.0, 1e-3, 1e-2]})
    data["base"]["probe"]["count"] = 6
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(data))
    command = [sys.executable, "-m", "phasemap.cli", "sweep", str(config), "--no-progress", "--num-cpus", "2"]
    run = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stdout + run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"storage fault at root '{tiny_disk / 'out'}'" in errors[0], run.stderr
    assert "No space left on device" in errors[0] and "Traceback" not in run.stderr
    assert not list(tiny_disk.rglob("_tmp-*"))
    done = {p.parent.name: p.read_text() for p in tiny_disk.rglob("_COMPLETE.json")}
    subprocess.run(["mount", "-o", "remount,size=8m", str(tiny_disk)], check=True)  # space freed
    again = subprocess.run(command + ["--resume"], env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    for name, text in done.items():  # complete runs were not touched
        assert (tiny_disk / "out" / "sweep=full" / name / "_COMPLETE.json").read_text() == text
    check_one_per_config(tiny_disk / "out", parse_sweep(data))
    assert not list(tiny_disk.rglob("_tmp-*"))
