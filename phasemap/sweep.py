"""Sweeps on Ray Tune: a sweep config expands into packs; one Tune trial trains one pack.

A sweep config (YAML) holds a `base` run config (the fixed settings), `axes` (dotted field
paths of the run config with a list of values each: a grid; or distributions for Optuna),
the search mode, resources per trial, pack size and retries. Every trial writes its records
itself, straight to the storage root; the driver only receives small reports.

Identity: a member (one network) is identified by the hash of its own config. Every sweep
run (first, `--resume`, or after the file grew a value on any axis) lists the members already
complete in the sweep's folder (from the completion markers alone, so it works even when Ray's
own experiment folder is gone) and forms its packs from the rest: only what is new trains.

Fault tolerance: a trial whose worker dies is retried (`max_failures`) and its pack resumes
from its last checkpoint in storage. A pack is trained under a lease (`leases`), so a second
driver on the same sweep waits for the packs the first is training instead of training them
again. A storage fault (full disk, permissions, an unreachable endpoint) ends the sweep with
one `StorageError` line naming the root.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import logging
import os
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs
from ray import tune
from ray.tune.logger import JsonLoggerCallback
from tqdm import tqdm

from . import leases, records
from .aggregate import last_records
from .config import ConfigError, RunConfig, _build, _check, parse_config, read_yaml, set_path
from .probes import METRIC_COLUMNS
from .train import ATTEMPT, run_id_of, train_pack

log = logging.getLogger(__name__)

MEMBER_FIELDS = ("optimizer.lr", "optimizer.momentum", "optimizer.weight_decay", "train.seed")
FAILED = "_FAILED.json"
OBJECTIVES = ("train_loss", "probe_loss", *(c for c in METRIC_COLUMNS if not c.startswith("n_") and not c.endswith("_n")))


@dataclass(frozen=True)
class SearchSpec:
    mode: str = field(default="grid", metadata=_check("mode in ('grid', 'optuna')", lambda v: v in ("grid", "optuna")))
    # optuna: the record column to optimise, averaged over members and hidden layers at the last step
    objective: str = "rga_b"
    direction: str = field(default="max", metadata=_check("direction in ('max', 'min')", lambda v: v in ("max", "min")))
    # optuna: how many trials
    trials: int = field(default=20, metadata=_check("trials >= 1", lambda v: v >= 1))
    seed: int = 0


@dataclass(frozen=True)
class ResourcesSpec:
    # per trial (one pack); fractional GPUs let several packs share a GPU
    cpus: float = field(default=1.0, metadata=_check("cpus > 0", lambda v: v > 0))
    gpus: float = field(default=0.0, metadata=_check("gpus >= 0", lambda v: v >= 0))


@dataclass(frozen=True)
class SweepStorage:
    root: str = "results"


@dataclass(frozen=True)
class SweepConfig:
    name: str
    base: dict  # the run config the axes vary (plain data, validated)
    axes: dict  # dotted path -> list of values (grid) or distribution (optuna)
    search: SearchSpec = SearchSpec()
    resources: ResourcesSpec = ResourcesSpec()
    storage: SweepStorage = SweepStorage()
    pack_size: int | str = "auto"  # most members per pack, or "auto" (see auto_pack_size)
    max_failures: int = 2

    @property
    def sweep_id(self) -> str:
        return self.name

    @property
    def root(self) -> str:
        return self.storage.root


_SWEEP_KEYS = {"name", "base", "axes", "search", "resources", "storage", "pack_size", "max_failures"}


# ----------------------------------------------------------------------------- config


def _with(base: dict, changes: dict[str, Any]) -> dict:
    data = copy.deepcopy(base)
    for key, value in changes.items():
        set_path(data, key, value)
    return data


def parse_sweep(data: Any, source: str = "sweep") -> SweepConfig:
    """Validate a sweep config; every problem (base, axes, combinations) at once."""
    problems: list[str] = []
    if not isinstance(data, dict):
        raise ConfigError([f"must be a mapping, but got {data!r}"], source)
    for key in data:
        if key not in _SWEEP_KEYS:
            problems.append(f"{key}: unknown key (known: {', '.join(sorted(_SWEEP_KEYS))})")
    name = data.get("name", "sweep")
    if not isinstance(name, str) or not name or "/" in name:
        problems.append(f"name: `name is a non-empty string with no '/'` must hold, but got {name!r}")
    search = _build(SearchSpec, data.get("search"), "search", problems)
    resources = _build(ResourcesSpec, data.get("resources"), "resources", problems)
    storage = _build(SweepStorage, data.get("storage"), "storage", problems)
    for key in ("pack_size", "max_failures"):
        value = data.get(key, "auto" if key == "pack_size" else 2)
        low = 1 if key == "pack_size" else 0
        if key == "pack_size" and value == "auto":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            extra = " or 'auto'" if key == "pack_size" else ""
            problems.append(f"{key}: `{key} >= {low}` must hold (an integer{extra}), but got {value!r}")
    base = data.get("base") or {}
    if not isinstance(base, dict):
        problems.append(f"base: must be a mapping (a run config), but got {base!r}")
        base = {}
    base = dict(base)
    try:
        parse_config(base)
    except ConfigError as e:
        problems += [f"base.{p}" for p in e.problems]
    axes = data.get("axes") or {}
    if not isinstance(axes, dict) or not axes:
        problems.append(f"axes: must be a non-empty mapping of field path -> values, but got {axes!r}")
        axes = {}
    mode = search.mode
    for key, values in axes.items():
        where = f"axes.{key}"
        if mode == "grid" and (not isinstance(values, list) or not values):
            problems.append(f"{where}: a grid axis must be a non-empty list, but got {values!r}")
            continue
        for i, value in enumerate(_axis_examples(values, where, problems) if mode == "optuna" else values):
            try:
                parse_config(_with(base, {key: value}))
            except ConfigError as e:
                problems += [f"{where}[{i}] = {value!r}: {p}" for p in e.problems]
    if search.mode == "optuna" and search.objective not in OBJECTIVES:
        problems.append(f"search.objective: `objective is a numeric record column` must hold, but got "
                        f"{search.objective!r} (valid: {', '.join(OBJECTIVES)})")
    if name and "sweep_id" in base.get("storage", {}):
        problems.append("base.storage.sweep_id: set by the sweep's name; remove it")
    cfg = SweepConfig(name, base, axes, search, resources, storage, data.get("pack_size", "auto"),
                      data.get("max_failures", 2))
    if not problems and mode == "grid":
        seen = set()
        for combo in grid_points(cfg):
            try:
                parse_config(_with(base, combo))
            except ConfigError as e:
                for p in e.problems:
                    if p not in seen:
                        seen.add(p)
                        problems.append(f"axes combination {combo}: {p}")
    if problems:
        raise ConfigError(problems, source)
    return cfg


def _axis_examples(spec: Any, where: str, problems: list[str]) -> list:
    """Values to validate an Optuna axis with: its choices, or its bounds."""
    if isinstance(spec, list) and spec:
        return spec
    if isinstance(spec, dict) and {"low", "high"} <= set(spec) and set(spec) <= {"low", "high", "log", "type"}:
        kind = spec.get("type", "float")
        low, high = spec["low"], spec["high"]
        if kind not in ("float", "int") or not all(isinstance(v, (int, float)) for v in (low, high)) or low >= high:
            problems.append(f"{where}: `low < high, type in (float, int)` must hold, but got {spec!r}")
            return []
        if spec.get("log") and low <= 0:
            problems.append(f"{where}: `low > 0` must hold for a log axis, but got {spec!r}")
            return []
        return [int(low), int(high)] if kind == "int" else [float(low), float(high)]
    problems.append(f"{where}: an optuna axis is a list of choices or {{low, high, log, type}}, but got {spec!r}")
    return []


def load_sweep(path: str, overrides: list[str] | None = None) -> SweepConfig:
    """Read and validate a sweep config file; `overrides` are `dotted.path=value` strings."""
    return parse_sweep(read_yaml(path, overrides), str(path))


# ----------------------------------------------------------------------------- expansion


def grid_points(cfg: SweepConfig) -> list[dict]:
    """Every combination of the axes, as {dotted path: value}."""
    keys = list(cfg.axes)
    return [dict(zip(keys, values)) for values in itertools.product(*(cfg.axes[k] for k in keys))]


def members(cfg: SweepConfig) -> list[RunConfig]:
    """Every network of a grid sweep as a one-member run config, each config once, in grid order."""
    found: dict[str, RunConfig] = {}
    for combo in grid_points(cfg):
        run = parse_config(_with(cfg.base, combo))
        for member in run.members:
            single = run.member_config(member)
            found.setdefault(single.config_hash(), single)
    return list(found.values())


def expand(cfg: SweepConfig, done: Collection[str] = ()) -> list[RunConfig]:
    """The grid's members not in `done` (config hashes) as packs of at most `pack_size`.

    Members that differ only in member fields (lr, momentum, weight decay, seed) share a pack.
    The order is deterministic and a pack's id is the hash of its members, so the same missing
    members form the same packs (an interrupted pack resumes from its checkpoint).
    """
    groups: dict[str, list[RunConfig]] = {}
    for single in members(cfg):
        if single.config_hash() in done:
            continue
        shape = dict(single.to_dict())
        for path in MEMBER_FIELDS:
            section, key = path.split(".")
            shape[section] = {k: v for k, v in shape[section].items() if k != key}
        groups.setdefault(json.dumps(shape, sort_keys=True, default=list), []).append(single)
    packs = []
    for group in groups.values():
        template = group[0]
        size = cfg.pack_size if cfg.pack_size != "auto" else auto_pack_size(template, cfg.resources.gpus > 0)
        for i in range(0, len(group), size):
            chunk = [m.members[0] for m in group[i : i + size]]
            data = template.to_dict()
            data["name"] = cfg.name
            data["pairing"] = "zip"
            data["optimizer"].update(lr=[m.lr for m in chunk], momentum=[m.momentum for m in chunk],
                                     weight_decay=[m.weight_decay for m in chunk])
            data["train"]["seed"] = [m.seed for m in chunk]
            data["storage"] = {"root": cfg.root, "sweep_id": cfg.sweep_id}
            packs.append(parse_config(json.loads(json.dumps(data, default=list))))
    return packs


def auto_pack_size(run: RunConfig, gpu: bool) -> int:
    """Members per pack from the network's size and the trial's device, not the machine,
    so pack ids stay the same on any cluster (and --resume finds them).

    A step of a pack does about K * batch * width^2 * (depth + 1) multiply-adds. On a CPU core
    member-steps per second stop growing near 4e7 of them (measured: fc1, width 100, depth 4,
    batch 100: K = 8 gives 2.9x a single nn.Sequential's rate, K = 32 no more). A GPU keeps
    gaining up to ~1000x that; probes, which hold K * n_samples * width activations per layer,
    cap it at ~16 GB (a quarter of a GPU: the cluster config puts four packs on one).
    """
    width = max(run.model.width, run.task.input_dim)
    work = run.train.batch_size * width**2 * (run.model.depth + 1)
    if not gpu:
        return int(min(64, max(1, round(4e7 / work))))
    probe_bytes = run.probe.n_samples * width * (run.model.depth + 1) * 4 * 8
    return int(max(1, min(1024, round(4e10 / work), 16e9 // probe_bytes)))


# ----------------------------------------------------------------------------- the trial


def objective(table, column: str, direction: str) -> float:
    """`column` per member (mean over hidden layers at its last step), then over members.

    A diverged member counts as the worst value for the direction (-inf for max, +inf for
    min): a config where any seed diverges ranks last, never scored by its survivors alone.
    """
    rows = last_records(table)
    if not len(rows):
        return float("nan")
    worst = float("-inf") if direction == "max" else float("inf")
    values = []
    for _, member in rows.groupby("member"):
        hidden = member[(member["status"] == "ok") & (member["layer"] <= member["depth"])]
        values.append(worst if (member["status"] == "diverged").any() else float(hidden[column].mean()))
    return float(sum(values) / len(values)) if worst not in values else worst


class StorageError(RuntimeError):
    """Writing under the storage root failed (full disk, permissions, unreachable endpoint)."""


STORAGE_FAULT = "storage fault at root"


def _trainable(config: dict, job: dict) -> None:
    """One Tune trial: build the pack's config, train it (or reuse it if complete), report."""
    import torch

    started = time.time()
    torch.set_num_threads(max(1, int(job["cpus"])))
    if "pack" in config:
        cfg = parse_config(config["pack"])
    else:  # optuna: the sampled values applied to the base
        changes = {job["axes"][int(name[1:])]: value for name, value in config.items()}
        changes = {k: (job["choices"][k][v] if k in job["choices"] else v) for k, v in changes.items()}
        data = _with(job["base"], changes)
        data["name"] = job["sweep_id"]
        data["storage"] = {"root": job["root"], "sweep_id": job["sweep_id"]}
        cfg = parse_config(data)
    root, sweep_id, run_id = job["root"], job["sweep_id"], run_id_of(cfg)
    waiting = (lambda message: tune.report({"waiting": message})) if job["mode"] == "grid" else None
    try:
        records.delete_file(root, sweep_id, run_id, FAILED)
        result = train_pack(cfg, root=root, trial_id=tune.get_context().get_trial_id(), resume=True,
                            waiting=waiting)
    except OSError as e:  # the storage, not the pack: one line that names the root
        raise StorageError(f"{STORAGE_FAULT} {root!r}: {type(e).__name__}: {e}") from None
    except Exception as e:
        try:
            records.write_file(root, sweep_id, run_id, FAILED,
                               json.dumps({"error": repr(e), "time": time.time()}).encode())
        except OSError:
            pass
        raise
    tune.report({
        "objective": objective(result.records, job["objective"], job["direction"]),
        "run_id": run_id,
        "members": len(result.status),
        "reused": result.reused,
        "diverged": result.status.count("diverged"),
        "train_seconds": result.seconds,
        "probe_seconds": result.probe_seconds,
        "trial_seconds": time.time() - started,
    })


# ----------------------------------------------------------------------------- driver


@dataclass
class SweepResult:
    sweep_id: str
    packs: int  # trials this run started (packs of missing members, or optuna trials)
    ran: int  # trials run now
    skipped: int  # members (configs) already complete before this run: reused, not trained
    failed: list[str]
    wall_seconds: float
    trials: list[dict]  # per trial: run_id, wall and train seconds
    trained: int = 0  # members in the packs this run started


class SweepError(RuntimeError):
    pass


def start_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join a cluster (`address` or RAY_ADDRESS), or start a local Ray on this machine."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # JSON results only (below)
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local, loopback-only Ray
        # address="local": a new Ray of our own, never one that `ray start` left on this machine
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)


def _storage_check(root: str) -> None:
    try:
        records.check_writable(root)
    except OSError as e:
        raise StorageError(f"{STORAGE_FAULT} {root!r}: {type(e).__name__}: {e}") from None


def run_sweep(
    cfg: SweepConfig,
    address: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    num_cpus: int | None = None,
) -> SweepResult:
    """Run a sweep with Ray Tune; see the module docstring.

    A grid sweep trains only the members not complete in the sweep's folder, whether or not
    `resume` is given (it is kept for clarity in scripts); `overwrite` retrains every member.
    """
    t0 = time.time()
    # trials run in folders of their own: a relative root must mean the driver's folder
    cfg = dataclasses.replace(cfg, storage=SweepStorage(records.resolve_root(cfg.root)))
    root, sweep_id = cfg.root, cfg.sweep_id
    _storage_check(root)  # before Ray starts: a root that cannot be written is named now
    job = {"root": root, "sweep_id": sweep_id, "objective": cfg.search.objective, "direction": cfg.search.direction,
           "cpus": cfg.resources.cpus, "base": cfg.base, "axes": list(cfg.axes), "choices": {},
           "mode": cfg.search.mode}
    trained = 0
    if cfg.search.mode == "grid":
        done = records.complete_members(root, sweep_id)
        wanted = {m.config_hash() for m in members(cfg)}
        if overwrite:
            for run_id in {done[h] for h in wanted if h in done}:
                records.clear_run(root, sweep_id, run_id, keep_leases=False)
            done = {}
        packs = expand(cfg, done=set(done))
        skipped = len(wanted & set(done))
        trained = sum(len(p.members) for p in packs)
        log.info("sweep %s: %d configs, %d already complete, %d to train in %d packs",
                 sweep_id, len(wanted), skipped, trained, len(packs))
        if not packs:
            return SweepResult(sweep_id, 0, 0, skipped, [], time.time() - t0, [], 0)
        # packs another driver is training go last: by then they are likely done, and reused
        busy = {run_id_of(p) for p in packs if (h := leases.current(root, sweep_id, run_id_of(p))) and h.live()}
        packs.sort(key=lambda p: run_id_of(p) in busy)
        param_space = {"pack": tune.grid_search([p.to_dict() for p in packs])}
        tune_config = tune.TuneConfig(reuse_actors=True, trial_dirname_creator=_short_name)
        n_trials = len(packs)
    else:
        if resume:
            raise SweepError("--resume applies to grid sweeps; an optuna sweep starts a new study")
        from ray.tune.search.optuna import OptunaSearch

        param_space = {}
        for i, (key, spec) in enumerate(cfg.axes.items()):
            if isinstance(spec, list):
                job["choices"][key] = spec
                param_space[f"p{i}"] = tune.choice(list(range(len(spec))))
            elif spec.get("type", "float") == "int":
                param_space[f"p{i}"] = (tune.lograndint if spec.get("log") else tune.randint)(spec["low"], spec["high"] + 1)
            else:
                param_space[f"p{i}"] = (tune.loguniform if spec.get("log") else tune.uniform)(spec["low"], spec["high"])
        search = OptunaSearch(seed=cfg.search.seed)
        tune_config = tune.TuneConfig(search_alg=search, num_samples=cfg.search.trials, metric="objective",
                                      mode=cfg.search.direction, reuse_actors=True,
                                      trial_dirname_creator=_short_name)
        n_trials = cfg.search.trials
        skipped = 0

    start_ray(address, num_cpus)
    fs, base_path = records.filesystem(root)
    callback = _Progress(n_trials, enabled=progress)
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, job=job), {"cpu": cfg.resources.cpus, "gpu": cfg.resources.gpus}
    )
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune_config,
        run_config=tune.RunConfig(
            name=f"{sweep_id}-{int(t0)}",
            storage_path=f"{base_path}/_tune",
            storage_filesystem=fs,
            failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
            verbose=0,
            callbacks=[callback, JsonLoggerCallback()],
        ),
    )
    try:
        grid = tuner.fit()
    except Exception:
        _storage_check(root)  # Tune's own files live under the root: name a storage fault as such
        raise
    finally:
        callback.close()
    failed = [str(r.error) for r in grid if r.error is not None]
    faults = [line for err in failed for line in err.splitlines() if STORAGE_FAULT in line]
    if faults:
        raise StorageError(faults[-1][faults[-1].index(STORAGE_FAULT):])
    return SweepResult(sweep_id, n_trials, n_trials, skipped, failed, time.time() - t0, callback.finished, trained)


def _short_name(trial) -> str:
    return trial.trial_id


class _Progress(tune.Callback):
    """Trials done / running / failed and the time left, on a progress bar."""

    def __init__(self, total: int, enabled: bool = True):
        self.bar = tqdm(total=total, unit="trial", desc="sweep", disable=not enabled)
        self.running: dict[str, float] = {}
        self.failed = self.retried = self.waiting = 0
        self.finished: list[dict] = []

    def _show(self):
        self.bar.set_postfix(running=len(self.running), failed=self.failed, retried=self.retried,
                             **({"waited": self.waiting} if self.waiting else {}))

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running.setdefault(trial.trial_id, time.time())
        self._show()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "waiting" in result:  # another driver trains this pack: this trial waits for it
            self.waiting += 1
            self.bar.write(f"trial {trial.trial_id}: {result['waiting']}")
            self._show()

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.retried += 1
        self._show()

    def _end(self, trial, ok):
        started = self.running.pop(trial.trial_id, time.time())
        last = trial.last_result or {}
        self.finished.append({"trial_id": trial.trial_id, "ok": ok, "wall_seconds": time.time() - started,
                              **{k: last[k] for k in ("run_id", "train_seconds", "probe_seconds", "objective", "reused") if k in last}})
        self.bar.update(1)
        self._show()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.failed += 1
        self._end(trial, False)

    def close(self):
        self.bar.close()


# ----------------------------------------------------------------------------- status


def sweep_status(cfg: SweepConfig) -> list[dict]:
    """Per pack: complete, running, interrupted, failed or missing, from storage alone.

    A grid sweep's packs are the complete runs that hold its members plus the packs its
    missing members form (what the next run would start); an Optuna sweep's runs are those
    found in storage.
    """
    if cfg.search.mode == "grid":
        done = records.complete_members(cfg.root, cfg.sweep_id)
        wanted = [m.config_hash() for m in members(cfg)]
        finished: dict[str, int] = {}
        for h in wanted:
            if h in done:
                finished[done[h]] = finished.get(done[h], 0) + 1
        packs = list(finished.items()) + [(run_id_of(p), len(p.members)) for p in expand(cfg, done=set(done))]
    else:
        fs, base = records.filesystem(cfg.root)
        folder = f"{base}/sweep={cfg.sweep_id}"
        found = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
        packs = [(i.base_name[len("run="):], None) for i in found if i.base_name.startswith("run=")]
    rows = []
    for run_id, n in packs:
        state = "missing"
        holder = leases.current(cfg.root, cfg.sweep_id, run_id)
        if records.is_complete(cfg.root, cfg.sweep_id, run_id):
            state = "complete"
        elif holder is not None and holder.live():
            state = "running"
        elif records.read_file(cfg.root, cfg.sweep_id, run_id, FAILED) is not None:
            state = "failed"
        elif records.read_file(cfg.root, cfg.sweep_id, run_id, ATTEMPT) is not None:
            state = "interrupted"
        rows.append({"run_id": run_id, "members": n, "state": state})
    return rows


def member_counts(packs: list[dict]) -> dict[str, int]:
    """Members (networks) per state, from `sweep_status`'s packs: complete, running, missing."""
    counts = {"complete": 0, "running": 0, "missing": 0}
    for p in packs:
        key = p["state"] if p["state"] in ("complete", "running") else "missing"
        counts[key] += p["members"] or 0
    return counts


def overhead_summary(result: SweepResult, slots: float) -> str:
    """Time a trial spends outside training and probing, two ways.

    Per trial: from Tune's trial start to its completion, minus train_pack's own time.
    Whole sweep: wall time x concurrent slots, minus all training, per trial (this also
    counts Ray's start, worker start-up and scheduling gaps).
    """
    pairs = [(t["wall_seconds"], t["train_seconds"]) for t in result.trials if "train_seconds" in t]
    if not pairs:
        return "no trial timings"
    n = len(pairs)
    per_trial = [w - s for w, s in pairs]
    whole = (result.wall_seconds * slots - sum(s for _, s in pairs)) / n
    return (f"{n} trials, {slots:g} at a time: training+probes {sum(s for _, s in pairs) / n:.1f} s per trial; "
            f"Ray overhead per trial {sum(per_trial) / n:.2f} s inside the trial (max {max(per_trial):.2f}), "
            f"{whole:.1f} s counting start-up and scheduling (wall {result.wall_seconds:.1f} s)")


__all__ = ["SweepConfig", "SweepResult", "SweepError", "StorageError", "expand", "load_sweep", "member_counts",
           "members", "objective", "parse_sweep", "run_sweep", "sweep_status"]
