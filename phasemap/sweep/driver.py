"""The Ray Tune driver: one Tune trial trains one pack; the driver sees small reports only.

Identity: every grid sweep run (first, `--resume`, or after the file grew a value on any axis)
lists the members already complete in the sweep's folder (from the completion markers alone,
so it works even when Ray's own experiment folder is gone) and packs only the rest.

Fault tolerance: a trial whose worker dies is retried (`max_failures`) and its pack resumes
from its last checkpoint in storage. A pack is trained under a lease (`leases`), so a second
driver on the same sweep waits for the packs the first is training instead of training them
again. A storage fault (full disk, permissions, an unreachable endpoint) ends the sweep with
one `StorageError` line naming the root.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass

from ray import tune
from ray.tune.logger import JsonLoggerCallback
from tqdm import tqdm

from .. import records
from ..records import leases
from ..analysis.aggregate import last_records
from ..measure.phases import n_hidden
from ..config import parse_config
from ..train import run_id_of, train_pack
from .spec import SweepConfig, SweepStorage, _with, pack_members, write_stored
from .status import FAILED, grid_plan

log = logging.getLogger(__name__)



def objective(table, column: str, direction: str) -> float:
    """`column` per member (mean over its hidden layers at its last step), then over members.

    Hidden layers are every measured layer but the output (1..n_layers-1, layer rows only),
    for every family; `aggregate.last_hidden` uses the same ones.

    A diverged member counts as the worst value for the direction (-inf for max, +inf for
    min): a config where any seed diverges ranks last, never scored by its survivors alone.
    """
    rows = last_records(table)
    if not len(rows):
        return float("nan")
    worst = float("-inf") if direction == "max" else float("inf")
    values = []
    for _, member in rows.groupby("member"):
        hidden = member[(member["status"] != "diverged") & (member["layer"] >= 1) & (member["layer"] <= n_hidden(member))]
        values.append(worst if (member["status"] == "diverged").any() else float(hidden[column].mean()))
    return float(sum(values) / len(values)) if worst not in values else worst


TRACKED = ("rga_a", "rwa_a", "gwa_a", "rga_b", "rwa_b", "gwa_b")  # and their excess over the null
TRACKED_PER_MEMBER = ("train_loss", "probe_loss", "train_accuracy", "probe_accuracy")


def probe_metrics(step: int, rows: list[dict]) -> dict:
    """What a probe sends the trackers: per member (`member<k>/<column>`) the last hidden layer's
    alignments and, where the null was measured, their excess over it (`<column>_excess`), and the
    member's losses and accuracies; `step`. Non-finite values (a diverged member, accuracy on a
    regression task) are left out: trackers drop or choke on NaN."""
    from ..measure.maths import excess

    metrics: dict = {"step": step}
    for row in rows:
        if row["head"] is not None or row["layer"] != row["n_layers"] - 1 or row["layer"] < 1:
            continue  # per-head rows, and every layer but the last hidden one
        k = row["member"]
        values = {c: row[c] for c in TRACKED + TRACKED_PER_MEMBER}
        for c in TRACKED:
            null = row.get(f"{c}_null")
            if null is not None and math.isfinite(null) and null != 1:
                values[f"{c}_excess"] = excess(row[c], null)
        metrics.update({f"member{k}/{c}": float(v) for c, v in values.items()
                        if v is not None and math.isfinite(v)})
    return metrics


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
    waiting = (lambda message: tune.report({"waiting": message})) if "pack" in config else None
    # every probe's metrics to the trackers (Tune's logger callbacks); the final report stays the last
    on_probe = (lambda step, rows: tune.report(probe_metrics(step, rows))) if job.get("tracking") else None
    try:
        records.delete_file(root, sweep_id, run_id, FAILED)
        result = train_pack(cfg, root=root, trial_id=tune.get_context().get_trial_id(), resume=True,
                            waiting=waiting, on_probe=on_probe)
    except OSError as e:  # the storage, not the pack: no retry (it would meet the same storage);
        # the driver's stopper ends the sweep and names the root in one line
        tune.report({"storage_fault": f"{STORAGE_FAULT} {root!r}: {type(e).__name__}: {e}",
                     "objective": float("nan"), "run_id": run_id})
        return
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
        "settled": result.status.count("settled"),  # train.stop: members settled at the run's last probe
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
    # Ctrl-C (SIGINT): Tune stops its trials and returns; `incomplete` packs (grid: packs of the
    # members not complete in storage; optuna: trials that did not finish) are left for a rerun
    interrupted: bool = False
    incomplete: int = 0
    boundary: dict | None = None  # a boundary search's state (boundary.write_state) when it stopped


class SweepError(RuntimeError):
    pass


def start_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join a cluster (`address` or RAY_ADDRESS), or start a local Ray on this machine.

    The workers import what the driver imports: Ray puts the driver's current directory on
    their sys.path (as `load_factory` does on the driver) and a local Ray's workers inherit
    its PYTHONPATH, so a factory module in the current directory needs nothing shipped (a
    copy of the directory, `runtime_env` working_dir, would cost its whole size). Workers on
    other machines import it from their own PYTHONPATH; a failed import names it.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # JSON results only (below)
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    # "Started a local Ray instance." is an INFO line of the "ray" logger, which `import ray` sets to INFO
    level = logging.INFO if _ray_speaks() else logging.WARNING
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=level)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local, loopback-only Ray
        # address="local": a new Ray of our own, never one that `ray start` left on this machine
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 logging_level=level)


def _ray_speaks() -> bool:
    """Whether Ray's own chatter is shown: its start-up banner, Tune's configuration box and its
    "View detailed results here" line. Only when phasemap logs at INFO (the CLI's -v, or a
    library user's logging.basicConfig(level=logging.INFO)); the progress bar and phasemap's
    summary say what a sweep did."""
    return log.isEnabledFor(logging.INFO)


@contextlib.contextmanager
def _environment(name: str, value: str, on: bool = True):
    """`name` set to `value` in the environment while the block runs (when `on`), restored after."""
    before = os.environ.get(name)
    if on:
        os.environ[name] = value
    try:
        yield
    finally:
        if on and before is None:
            os.environ.pop(name, None)
        elif on:
            os.environ[name] = before


def _tune_output():
    """Tune's terminal output while a Tuner is built and fits: its default ("new") engine prints
    the configuration box and the results folder even at `verbose=0`; its legacy engine, chosen
    by RAY_AIR_NEW_OUTPUT=0 (read at each call), prints nothing at `verbose=0` (unless -v)."""
    return _environment("RAY_AIR_NEW_OUTPUT", "0", on=not _ray_speaks())


def _probe_reports(on: bool):
    """Probe reports carry no `objective`: Tune's check that every report has the search's
    metric (an optuna search) is off while they flow."""
    return _environment("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1", on=on)


def _trackers(cfg: SweepConfig) -> list:
    """Ray Tune's logger callbacks for the sweep's `tracking` (validated, installed: spec.TRACKERS).

    They run on the driver and log each trial as a run, its config as hyperparameters:
    TensorBoard event files in the trial's folder under `<root>/_tune`; MLflow to
    MLFLOW_TRACKING_URI (mlflow's default otherwise), experiment = the sweep's name; W&B to
    project WANDB_PROJECT (the sweep's name otherwise), from a logging actor that is given the
    driver's WANDB_MODE and WANDB_DIR (`offline` needs no account).
    """
    callbacks = []
    for name in cfg.tracking:
        if name == "tensorboard":
            from ray.tune.logger import TBXLoggerCallback

            if not _ray_speaks():  # "Removed the following hyperparameter values ..." (lists) at each trial's end
                logging.getLogger("ray.tune.logger.tensorboardx").setLevel(logging.WARNING)
            callbacks.append(TBXLoggerCallback())
        elif name == "mlflow":
            from ray.air.integrations.mlflow import MLflowLoggerCallback

            callbacks.append(MLflowLoggerCallback(tracking_uri=os.environ.get("MLFLOW_TRACKING_URI"),
                                                  experiment_name=cfg.sweep_id))
        elif name == "wandb":
            from ray.air.integrations.wandb import WandbLoggerCallback

            passed = {"mode": os.environ.get("WANDB_MODE"), "dir": os.environ.get("WANDB_DIR")}
            callbacks.append(WandbLoggerCallback(project=os.environ.get("WANDB_PROJECT") or cfg.sweep_id,
                                                 **{k: v for k, v in passed.items() if v}))
    return callbacks


def _storage_check(root: str) -> None:
    try:
        records.check_writable(root)
    except OSError as e:
        raise StorageError(f"{STORAGE_FAULT} {root!r}: {type(e).__name__}: {e}") from None


def _remove_stale_temp(root: str, sweep_id: str, temp: dict[str, list[str]]) -> None:
    """Temp files left by a crash or a storage fault ({run_id: paths}), in runs no live trainer holds."""
    for run_id, paths in temp.items():
        holder = leases.current(root, sweep_id, run_id)
        if holder is None or not holder.live():
            log.info("run %s: removing %d temp file(s) left by an interrupted write", run_id, len(paths))
            records.remove_files(root, paths)


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
    write_stored(cfg)  # status and serve know the members not started yet without the YAML file
    job = {"root": root, "sweep_id": sweep_id, "objective": cfg.search.objective, "direction": cfg.search.direction,
           "cpus": cfg.resources.cpus, "base": cfg.base, "axes": list(cfg.axes), "choices": {},
           "mode": cfg.search.mode, "tracking": list(cfg.tracking)}
    trained = 0
    if cfg.search.mode == "boundary":
        return _boundary_search(cfg, job, address, num_cpus, progress, overwrite, t0)
    if cfg.search.mode == "grid":
        plan = grid_plan(cfg)
        _remove_stale_temp(root, sweep_id, plan.temp)
        if overwrite:
            for run_id in plan.finished:
                records.clear_run(root, sweep_id, run_id, keep_leases=False)
            plan = grid_plan(cfg, ignore_done=True)
        packs = plan.packs
        skipped = len(plan.wanted & set(plan.done))
        trained = sum(len(p.members) for p in packs)
        log.info("sweep %s: %d configs, %d already complete, %d to train in %d packs",
                 sweep_id, len(plan.wanted), skipped, trained, len(packs))
        if not packs:
            return SweepResult(sweep_id, 0, 0, skipped, [], time.time() - t0, [], 0)
        # packs another driver is training go last: by then they are likely done, and reused
        busy = {r for r in plan.leased if (h := leases.current(root, sweep_id, r)) and h.live()}
        packs.sort(key=lambda p: run_id_of(p) in busy)
        param_space = {"pack": tune.grid_search([p.to_dict() for p in packs])}
        tune_config = tune.TuneConfig(reuse_actors=True, trial_dirname_creator=_short_name)
        n_trials = len(packs)
    else:
        if resume:
            raise SweepError("--resume applies to grid and boundary sweeps; an optuna sweep starts a new study")
        _remove_stale_temp(root, sweep_id, records.temp_files(root, sweep_id))
        param_space = {}
        for i, (key, spec) in enumerate(cfg.axes.items()):
            if isinstance(spec, list):
                job["choices"][key] = spec
                param_space[f"p{i}"] = tune.choice(list(range(len(spec))))
            elif spec.get("type", "float") == "int":
                param_space[f"p{i}"] = (tune.lograndint if spec.get("log") else tune.randint)(spec["low"], spec["high"] + 1)
            else:
                param_space[f"p{i}"] = (tune.loguniform if spec.get("log") else tune.uniform)(spec["low"], spec["high"])
        if not _ray_speaks():  # "A new study created in memory" and the like: under -v only
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)
        search = _optuna_search()(seed=cfg.search.seed)
        tune_config = tune.TuneConfig(search_alg=search, num_samples=cfg.search.trials, metric="objective",
                                      mode=cfg.search.direction, reuse_actors=True,
                                      trial_dirname_creator=_short_name)
        n_trials = cfg.search.trials
        skipped = 0

    start_ray(address, num_cpus)
    fit = _fit(cfg, job, param_space, tune_config, n_trials, progress, t0)
    incomplete = 0
    if fit.interrupted:
        incomplete = len(grid_plan(cfg).packs) if cfg.search.mode == "grid" else n_trials - fit.ended
        log.info("sweep %s: interrupted, %d pack(s) not complete", sweep_id, incomplete)
    return SweepResult(sweep_id, n_trials, fit.ended, skipped, fit.failed, time.time() - t0, fit.trials, trained,
                       fit.interrupted, incomplete)


@dataclass
class _Fit:
    ended: int  # trials that errored or sent their final report
    failed: list[str]
    trials: list[dict]
    interrupted: bool


def _fit(cfg: SweepConfig, job: dict, param_space: dict, tune_config, n_trials: int, progress: bool, t0: float,
         desc: str = "sweep", suffix: str = "") -> _Fit:
    """One Tuner.fit of the trainable over `param_space` (Ray already started)."""
    root, sweep_id = cfg.root, cfg.sweep_id
    fs, base_path = records.filesystem(root)
    callback = _Progress(n_trials, enabled=progress, desc=desc)
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, job=job), {"cpu": cfg.resources.cpus, "gpu": cfg.resources.gpus}
    )
    stopper = _StopOnStorageFault()
    interrupted = False
    # no configuration box, no results folder line (unless -v); probe reports for the trackers
    with _tune_output(), _probe_reports(bool(cfg.tracking)):
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune_config,
            run_config=tune.RunConfig(
                name=f"{sweep_id}-{int(t0)}{suffix}",
                storage_path=f"{base_path}/_tune",
                storage_filesystem=fs,
                failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
                verbose=0,
                callbacks=[callback, JsonLoggerCallback(), *_trackers(cfg)],
                stop=stopper,
            ),
        )
        try:
            grid = tuner.fit()
        except KeyboardInterrupt:  # a second Ctrl-C: Tune's own handler takes only the first
            grid, interrupted = None, True
        except Exception:
            _storage_check(root)  # Tune's own files live under the root: name a storage fault as such
            raise
        finally:
            callback.close()
    if stopper.fault:
        raise StorageError(stopper.fault)
    failed = [str(r.error) for r in grid if r.error is not None] if grid is not None else []
    # Tune catches Ctrl-C itself, stops its trials (marking them terminated) and returns, raising
    # nothing: a trial ended when it errored or sent its final report (every finished one has "objective")
    ended = len(callback.finished) if grid is None else sum(
        1 for r in grid if r.error is not None or "objective" in (r.metrics or {}))
    return _Fit(ended, failed, callback.finished, interrupted or ended < n_trials)


def _boundary_search(cfg: SweepConfig, job: dict, address, num_cpus, progress: bool, overwrite: bool,
                     t0: float) -> SweepResult:
    """Rounds of packs on Tune until the budget is spent or no cell straddles (boundary.py)."""
    from . import boundary

    root, sweep_id = cfg.root, cfg.sweep_id
    _remove_stale_temp(root, sweep_id, records.temp_files(root, sweep_id))
    cells = boundary.grid_cells(cfg)
    plan = boundary.plan(cfg, cells=cells)
    if overwrite:
        for run_id in set(plan.done.values()):
            records.clear_run(root, sweep_id, run_id, keep_leases=False)
        plan = boundary.plan(cfg, cells=cells, done={})
    state = boundary.read_state(root, sweep_id)
    same = state and not overwrite and state["config"]["axes"] == json.loads(json.dumps(cfg.axes))
    round_ = state["round"] if same else 0
    skipped, trained, n_trials, ended, failed, trials, interrupted = plan.used, 0, 0, 0, [], [], False
    log.info("sweep %s: boundary search over %d cells, budget %d networks, %d complete", sweep_id, len(cells),
             plan.budget, plan.used)
    while True:
        chosen, uncertain = plan.next_cells()
        if not chosen:
            break
        round_ += 1
        singles = [m for i in chosen for m in cells[i].members if m.config_hash() not in plan.done]
        packs = pack_members(cfg, singles)
        boundary.write_state(cfg, plan, round_, uncertain, finished=False)
        log.info("sweep %s: round %d: %d cells, %d networks in %d packs (%d of %d networks used, %d cells uncertain)",
                 sweep_id, round_, len(chosen), len(singles), len(packs), plan.used, plan.budget, uncertain)
        start_ray(address, num_cpus)
        fit = _fit(cfg, job, {"pack": tune.grid_search([p.to_dict() for p in packs])},
                   tune.TuneConfig(reuse_actors=True, trial_dirname_creator=_short_name), len(packs), progress, t0,
                   desc=f"round {round_}", suffix=f"-r{round_}")
        trained, n_trials, ended = trained + len(singles), n_trials + len(packs), ended + fit.ended
        trials += fit.trials
        failed += fit.failed
        plan = boundary.plan(cfg, cells=cells)
        if fit.failed or fit.interrupted:  # the same cells would be chosen again: stop here
            interrupted = fit.interrupted
            break
    incomplete = 0
    if interrupted:  # the round's packs not complete; a rerun trains them first
        incomplete = len(pack_members(cfg, [m for i in chosen for m in cells[i].members
                                            if m.config_hash() not in plan.done]))
    state = boundary.write_state(cfg, plan, round_, uncertain, finished=not (failed or interrupted))
    return SweepResult(sweep_id, n_trials, ended, skipped, failed, time.time() - t0, trials, trained, interrupted,
                       incomplete, boundary=state)


def _optuna_search():
    from ray.tune.search.optuna import OptunaSearch

    class _Search(OptunaSearch):
        """OptunaSearch that passes over reports without the objective (probe reports: `tracking`)."""

        def on_trial_result(self, trial_id: str, result: dict):
            if self.metric in result:
                super().on_trial_result(trial_id, result)

    return _Search


class _StopOnStorageFault(tune.Stopper):
    """Ends the whole sweep at the first trial that met a storage fault (others would too)."""

    def __init__(self):
        self.fault: str | None = None

    def __call__(self, trial_id: str, result: dict) -> bool:
        if "storage_fault" in result:
            self.fault = self.fault or result["storage_fault"]
            return True
        return False

    def stop_all(self) -> bool:
        return self.fault is not None


def _short_name(trial) -> str:
    return trial.trial_id


class _Progress(tune.Callback):
    """Trials done / running / failed and the time left, on a progress bar."""

    def __init__(self, total: int, enabled: bool = True, desc: str = "sweep"):
        self.bar = tqdm(total=total, unit="trial", desc=desc, disable=not enabled)
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
