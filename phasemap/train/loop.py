"""Train one pack (K networks of one architecture) with probes on a schedule, writing records.

`_train` reads top to bottom: build task, model, optimizer and prober, resume or start
afresh; then for every step draw a batch, and at sync points (probe steps, every
`check_every` steps, the end) probe, mark divergence and write that step's records; then
take one optimizer step for all members at once. With `train.stop`, a probe at which every
member has settled (`stopping`) is the last one: its rows say `settled` and the run ends there,
complete like any other. Resuming, the rows of a probe and the divergence bookkeeping are
helpers of their own below it.
"""

from __future__ import annotations

import ctypes
import functools
import io
import json
import logging
import math
import os
import platform
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa
import torch

from .. import __version__, records
from ..records import leases
from ..config import ConfigError, RunConfig, run_id_of
from ..data import SSLTask, make_task
from ..measure import METRIC_COLUMNS
from ..models import build_model
from ..records import ATTEMPT, SCHEMA_VERSION
from .optim import make_optimizer
from .probing import Prober
from .stopping import Settling, next_probe, pack_done, worst_stationarity

log = logging.getLogger(__name__)

PROBE_SEED_OFFSET = 1_000_003  # the probe set's generator: never the training stream
RESEED_OFFSET = 2_000_003  # + step: the training stream resumed from a checkpoint of another device


@dataclass
class RunResult:
    run_id: str
    records: pd.DataFrame
    status: list[str]  # per member: ok | diverged | settled (at its last probe)
    seconds: float = 0.0
    probe_seconds: float = 0.0
    reused: bool = False  # the run was already complete (or finished by another trainer meanwhile)
    last_step: int | None = None  # the run's last step: train.steps, or earlier where train.stop ended it


class LeaseLost(RuntimeError):
    """Another trainer took this run's lease over (this one was presumed dead): stop writing."""


@functools.cache
def keep_cpu_buffers() -> bool:
    """Let glibc keep freed buffers of up to 32 MB for reuse instead of unmapping them.

    A probe or step allocates many tensors of a few MB; by default glibc maps each afresh and
    unmaps it on free, so every use pays its page faults again (measured: ~20,000 faults per
    K = 8 probe, a quarter of its time on this machine's VM). Process-wide and only raising
    thresholds (memory is kept for reuse, not leaked); a no-op off glibc. Returns whether set.
    """
    if platform.system() != "Linux" or os.environ.get("PHASEMAP_KEEP_CPU_BUFFERS", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        ok = libc.mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 256 << 20) == 1
    except (OSError, AttributeError):
        return False
    log.debug("glibc keeps freed CPU buffers for reuse: %s", ok)
    return ok


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(["train.device: `cuda is available` must hold, but got device='cuda' on a machine without CUDA"])
    return torch.device(name)


def _member_columns(cfg: RunConfig, sweep_id: str, trial_id: str, run_id: str) -> list[dict]:
    """The columns every row of a member shares: ids and its whole configuration."""
    cols = []
    for k, m in enumerate(cfg.members):
        single = cfg.member_config(m)
        cols.append({"schema_version": SCHEMA_VERSION, "phasemap_version": __version__, "sweep_id": sweep_id,
                     "trial_id": trial_id, "run_id": run_id, "config_hash": single.config_hash(), "member": k,
                     **records.config_columns(single)})
    return cols


CHECKPOINT = "_checkpoint.pt"
def train_pack(
    cfg: RunConfig,
    root: str | None = None,
    trial_id: str | None = None,
    progress: Callable[[int], None] | None = None,
    resume: bool = True,
    waiting: Callable[[str], None] | None = None,
    on_probe: Callable[[int, list[dict]], None] | None = None,
) -> RunResult:
    """Train every member of `cfg` as one stacked model; write records under `root`.

    A member whose loss (or probe) becomes non-finite is recorded as `diverged` at the
    first such step and frozen; the others go on. The state is checkpointed in the run's
    folder every `train.checkpoint_every` steps; with resume=True an unfinished earlier
    attempt continues from its checkpoint (same numbers as an uninterrupted run; resumed on
    another kind of device, the training stream is reseeded from the step), otherwise
    the run starts afresh. Returns the records of the whole run.

    One trainer per run: the run's lease is taken first (see `leases`). While another live
    trainer holds it, this call waits (telling `waiting` why, once); a run that is complete,
    or completes meanwhile, is not trained again: its stored records come back (`reused`).

    `on_probe(step, rows)` is called after each probe's records are written, with that step's
    rows (one per member still finite and layer; a member found diverged there has its diverged
    rows); a reused run calls it never, a resumed one from its checkpoint's step on.
    """
    root = root or cfg.storage.root
    sweep_id, run_id = cfg.storage.sweep_id, run_id_of(cfg)
    told = False
    while True:
        if records.is_complete(root, sweep_id, run_id):
            return stored_result(root, sweep_id, run_id)
        lease, holder = leases.try_acquire(root, sweep_id, run_id)
        if lease is not None:
            break
        message = f"run {run_id} is being trained by another trainer ({holder.describe()}): waiting"
        log.info(message)
        if waiting is not None and not told:
            waiting(message)
            told = True
        time.sleep(min(5.0, leases.ttl_seconds() / 4))
    try:
        if records.is_complete(root, sweep_id, run_id):  # finished just before the lease was free
            return stored_result(root, sweep_id, run_id)
        return _train(cfg, root, trial_id or run_id, progress, resume, lease, on_probe)
    finally:
        lease.release()


def stored_result(root: str, sweep_id: str, run_id: str) -> RunResult:
    """A complete run's records and summary, as `train_pack` returns them."""
    summary = json.loads(records.read_file(root, sweep_id, run_id, records.COMPLETE))
    return RunResult(run_id, records.read_run(root, sweep_id, run_id), list(summary["status"]),
                     0.0, 0.0, reused=True, last_step=summary.get("last_step"))


def _train(cfg: RunConfig, root: str, trial_id: str, progress, resume: bool, lease: leases.Lease,
           on_probe=None) -> RunResult:
    t_start = time.perf_counter()
    sweep_id, run_id = cfg.storage.sweep_id, run_id_of(cfg)
    device = resolve_device(cfg.train.device)
    members = cfg.members
    K, steps = len(members), cfg.train.steps

    keep_cpu_buffers()
    task = make_task(cfg.task, device)
    model, prepare = build_model(cfg.model, task.input_shape, task.output_dim, [m.seed for m in members],
                                 ssl=isinstance(task, SSLTask))
    model = model.to(device)
    opt = make_optimizer(
        cfg.optimizer.name,
        model.parameters(),
        lr=[m.lr for m in members],
        weight_decay=[m.weight_decay for m in members],
        momentum=[m.momentum for m in members],
        betas=cfg.optimizer.betas,
        eps=cfg.optimizer.eps,
    )
    prober = Prober(model, task, prepare, cfg.probe, [m.weight_decay for m in members])
    data_gen = torch.Generator(device=device).manual_seed(cfg.train.data_seed)
    probe_gen = torch.Generator(device=device).manual_seed(cfg.train.data_seed + PROBE_SEED_OFFSET)
    before = probe_gen.get_state()
    x_probe, y_probe = task.probe_set(cfg.probe.n_samples, probe_gen)
    # a probe set drawn from the generator (an online task) goes into checkpoints: a resume on
    # another device, whose generator gives other numbers, measures the same samples
    drawn = None if torch.equal(probe_gen.get_state(), before) else (x_probe, y_probe)
    train_subset = task.train_set(cfg.probe.n_samples) if task.classification else None

    base = [dict(b, output_dim=task.output_dim) for b in _member_columns(cfg, sweep_id, trial_id, run_id)]
    run = _RunState(base=base, status=["ok"] * K,
                    diverged_at=torch.full((K,), -1, dtype=torch.long, device=device),  # first non-finite step
                    probe_set=drawn)
    stop = cfg.train.stop
    if stop.enabled:
        run.settling = Settling(K, stop.stationary, stop.patience, stop.loss_tolerance,
                                min_gap=math.ceil(stop.min_gap * steps))
        run.loss_sum = torch.zeros(K, device=device)  # train loss summed since the last probe
    start = _resume(cfg, root, run_id, resume, model, opt, data_gen, prober, run, device)
    if run.probe_set is not None:
        x_probe, y_probe = run.probe_set
    records.write_file(root, sweep_id, run_id, ATTEMPT, json.dumps(
        {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "from_step": start}).encode())
    log.info("run %s: K=%d members, %s %s, %d layers measured, %d steps, device %s", run_id, K, cfg.model.family,
             [(info.name, info.dim_in, info.dim_out) for info in prober.layers], len(prober.layers), steps, device)

    schedule = cfg.probe_steps()
    probe_at = set(schedule)
    settling = run.settling
    if settling is not None:  # the schedule goes on from the last probe (evenly spaced after a settle)
        probe_at = {next_probe(settling.probes[-1] if settling.probes else -1, schedule, settling.interval, steps)}
    hidden = [l for l, info in enumerate(prober.layers) if info.head is None and info.layer < prober.n_layers]
    last_step = steps
    model.train()
    for step in range(start, steps + 1):
        if step > start and step % cfg.train.checkpoint_every == 0:
            _check_lease(lease)
            _save_checkpoint(root, sweep_id, run_id, step, model, opt, data_gen, run, prober)
        # every step draws a fresh batch; the loss is the train loss at `step`
        x, y = task.sample(cfg.train.batch_size, data_gen)
        out = model(prepare(x))
        loss = task.loss(out, y).flatten(1).mean(1)  # (K,): per sample, or per token of a sequence
        # record the first non-finite step per member without a host sync
        run.diverged_at = torch.where((run.diverged_at < 0) & ~torch.isfinite(loss), step, run.diverged_at)
        if settling is not None:  # the mean train loss per probe interval: (previous probe, probe]
            run.loss_sum += loss.detach()
            run.loss_n += 1

        if step in probe_at or step % cfg.train.check_every == 0 or step == steps:
            first_bad = run.diverged_at.tolist()  # the one sync of this point
            rows = []
            probed = step in probe_at
            if probed:
                t0 = time.perf_counter()
                accuracy = _accuracies(prober, task, x_probe, y_probe, train_subset, out, y)
                probe = prober(x_probe, y_probe)
                rows = _probe_rows(run, step, probe, prober.n_layers, loss.detach().tolist(), accuracy, first_bad)
                if settling is not None:
                    settled = settling.update(step, worst_stationarity(probe.values, hidden, K),
                                              (run.loss_sum / run.loss_n).tolist())
                    run.loss_sum.zero_()
                    run.loss_n = 0
                    gone = [st == "diverged" or first_bad[k] >= 0 for k, st in enumerate(run.status)]
                    if step == steps or pack_done(settled, ["diverged" if g else "ok" for g in gone]):
                        last_step = step  # the final probe: members settled at it say so
                        for k in range(K):
                            if settled[k] and not gone[k]:
                                run.status[k] = "settled"
                        for row in rows:
                            row["status"] = run.status[row["member"]]
                        if step < steps:
                            log.info("run %s: every member settled (or diverged) at step %d of %d: stopping",
                                     run_id, step, steps)
                    else:
                        probe_at.add(next_probe(step, schedule, settling.interval, steps))
                if step == last_step and probe.spectra is not None:
                    _write_spectra(root, sweep_id, run_id, step, probe.spectra, run.base, run.status, first_bad)
                run.probe_seconds += time.perf_counter() - t0
            rows += _mark_diverged(run, first_bad, prober, opt, run_id)
            _check_lease(lease)
            records.write_part(root, sweep_id, run_id, step, rows)
            run.rows.extend(rows)
            if probed and on_probe is not None:
                on_probe(step, rows)
        if progress is not None:
            progress(step)
        if step == last_step:
            break
        opt.zero_grad()
        loss.sum().backward()  # members are independent: each gets its own gradient
        opt.step()

    seconds = time.perf_counter() - t_start
    _check_lease(lease)
    table = records.to_table(run.rows)  # every part's rows, in memory: compacted without reading them back
    records.compact(root, sweep_id, run_id, table)  # one file per finished run
    records.mark_complete(
        root, sweep_id, run_id,
        {"run_id": run_id, "members": [b["config_hash"] for b in run.base], "status": run.status,
         "rows": len(run.rows), "last_step": last_step, "seconds": seconds, "probe_seconds": run.probe_seconds, "config": cfg.to_dict()},
    )
    records.delete_file(root, sweep_id, run_id, CHECKPOINT)
    return RunResult(run_id, table.to_pandas(), run.status, seconds, run.probe_seconds, last_step=last_step)


@dataclass
class _RunState:
    """What the loop carries between steps, and a checkpoint saves."""

    base: list[dict]  # per member: the columns all its rows share
    status: list[str]  # per member: ok | diverged (| settled, set at the final probe)
    diverged_at: torch.Tensor  # (K,) first non-finite step, -1 while finite
    rows: list[dict] = field(default_factory=list)  # every row written so far
    probe_seconds: float = 0.0
    probe_set: tuple[torch.Tensor, torch.Tensor] | None = None  # (x, y) when drawn from a generator
    settling: Settling | None = None  # train.stop: the histories that decide when the pack ends
    loss_sum: torch.Tensor | None = None  # train.stop: (K,) train loss summed since the last probe ...
    loss_n: int = 0  # ... over this many steps


def _resume(cfg, root, run_id, resume, model, opt, data_gen, prober, run: _RunState, device) -> int:
    """Continue an unfinished attempt from its checkpoint (returns the step to start at), or
    clear the run's folder for a fresh one (returns 0)."""
    sweep_id = cfg.storage.sweep_id
    saved = records.read_file(root, sweep_id, run_id, CHECKPOINT) if resume else None
    resumable = saved is not None and not records.is_complete(root, sweep_id, run_id)
    state = torch.load(io.BytesIO(saved), map_location="cpu", weights_only=False) if resumable else None
    if state is not None and not _fits(model, state["model"]):
        log.warning("run %s: its checkpoint was written by another phasemap version (parameter layout "
                    "differs): starting the run afresh", run_id)
        state = None
    if state is None:
        records.clear_run(root, sweep_id, run_id)  # a fresh attempt: no stale parts survive
        return 0
    model.load_state_dict(state["model"])  # tensors were loaded to the CPU: copied to this device
    opt.load_state(state["optimizer"])
    if state.get("probe_set") is not None:
        run.probe_set = tuple(t.to(device) for t in state["probe_set"])
    _restore_generator(data_gen, state, cfg.train.data_seed, run_id, moved_probe_set=run.probe_set is not None
                       and state.get("probe_set") is None)
    run.diverged_at, run.status = state["diverged_at"].to(device), state["status"]
    prober.load(state.get("previous_probe", []), device)
    if run.settling is not None and state.get("settling") is not None:
        run.settling.load(state["settling"])
        run.loss_sum, run.loss_n = state["loss_sum"].to(device), state["loss_n"]
    # rows of parts written before the checkpoint; later parts are written again, same names
    before = records.read_run(root, sweep_id, run_id, before_step=state["step"])
    # through Arrow, not pandas' dicts: a null integer (a layer row's `head`) must stay null, not NaN
    run.rows = pa.Table.from_pandas(before, schema=records.SCHEMA, preserve_index=False).to_pylist()
    log.info("run %s: resuming at step %d of %d", run_id, state["step"], cfg.train.steps)
    return state["step"]


def _restore_generator(gen: torch.Generator, state: dict, data_seed: int, run_id: str, moved_probe_set: bool) -> None:
    """The training stream where the checkpoint left it. A checkpoint written on another device
    (`train.device: auto` on a GPU, resumed on a CPU) holds a generator state that does not fit
    this one (a CUDA state is its seed and offset, 16 bytes; a CPU one 5,056) and would not give
    the same numbers if it did: the generator is reseeded from the step instead, deterministically."""
    saved, mine = state["data_gen"], gen.get_state()
    written_on = state.get("device", gen.device.type)
    if written_on == gen.device.type and saved.shape == mine.shape and saved.dtype == mine.dtype:
        gen.set_state(saved)
        return
    gen.manual_seed(data_seed + RESEED_OFFSET + state["step"])
    log.warning("run %s: its checkpoint was written on %s, resumed on %s: model and optimizer carry over; training "
                "batches from step %d on come from a generator seeded from that step (train.data_seed + %d + step), "
                "not the stream of an uninterrupted run%s", run_id,
                written_on if "device" in state else "another device", gen.device.type, state["step"], RESEED_OFFSET,
                "; the probe set is drawn again on this device (a checkpoint of an older phasemap did not keep it)"
                if moved_probe_set else "")


def _accuracies(prober, task, x_probe, y_probe, train_subset, out, y) -> tuple[list, list]:
    """(train, probe) accuracy per member for classification, else NaN: train accuracy on the
    first probe.n_samples training samples (image data) or on this step's batch (online); a
    self-supervised task's probe accuracy is its linear probe's on the backbone's embedding
    (train NaN: `SSLTask.accuracies`)."""
    K = out.shape[0]
    if isinstance(task, SSLTask):
        return task.accuracies(prober.embed, train_subset, (x_probe, y_probe))
    if not task.classification:
        return [math.nan] * K, [math.nan] * K
    if train_subset is None:
        train = task.accuracy(out.detach(), y).tolist()
    else:
        train = prober.accuracy(*train_subset)
    return train, prober.accuracy(x_probe, y_probe)


def _probe_rows(run: _RunState, step: int, probe, n_layers: int, train_loss: list, accuracy,
                first_bad: list) -> list[dict]:
    """One row per layer for every member still finite at this probe."""
    rows = []
    train_acc, probe_acc = accuracy
    for k in range(len(run.base)):
        if run.status[k] != "diverged" and first_bad[k] < 0 and not math.isfinite(probe.loss[k]):
            first_bad[k] = step  # finite batch loss but the probe blew up
        if run.status[k] == "diverged" or first_bad[k] >= 0:
            continue
        for l, info in enumerate(probe.layers):
            row = dict(run.base[k])
            row.update(step=step, layer=info.layer, n_layers=n_layers, layer_name=info.name, layer_kind=info.kind,
                       head=info.head, dim_in=info.dim_in, dim_out=info.dim_out, status="ok", train_loss=train_loss[k], probe_loss=probe.loss[k],
                       train_accuracy=train_acc[k], probe_accuracy=probe_acc[k], nan_reason=probe.reasons[l][k])
            row.update({c: v[k] for c, v in probe.values[l].items()})
            rows.append(row)
    return rows


def _mark_diverged(run: _RunState, first_bad: list, prober, opt, run_id: str) -> list[dict]:
    """Members found non-finite at this sync point: marked, frozen, and their rows."""
    newly = [k for k in range(len(run.base)) if run.status[k] != "diverged" and first_bad[k] >= 0]
    rows = []
    for k in newly:
        run.status[k] = "diverged"
        run.diverged_at[k] = first_bad[k]
        log.warning("run %s member %d diverged at step %d", run_id, k, first_bad[k])
        rows.extend(_diverged_rows(run.base[k], first_bad[k], prober.layers, prober.n_layers))
    if newly:
        opt.freeze(torch.tensor([k in newly for k in range(len(run.base))], device=run.diverged_at.device))
    return rows


def _check_lease(lease: leases.Lease) -> None:
    if lease.lost:
        raise LeaseLost(f"run {lease.run_id}: another trainer took its lease over; this attempt stops writing")


def _fits(model: torch.nn.Module, saved: dict) -> bool:
    """Whether a saved state dict has exactly this model's parameter names and shapes."""
    mine = model.state_dict()
    return mine.keys() == saved.keys() and all(mine[k].shape == saved[k].shape for k in mine)


def _save_checkpoint(root, sweep_id, run_id, step, model, opt, data_gen, run: _RunState, prober) -> None:
    """The state at the start of `step` (before its batch is drawn), written atomically."""
    buf = io.BytesIO()
    torch.save({"step": step, "model": model.state_dict(), "optimizer": opt.state(),
                "data_gen": data_gen.get_state(), "device": data_gen.device.type, "probe_set": run.probe_set,
                "diverged_at": run.diverged_at, "status": list(run.status),
                "previous_probe": prober.state(),
                "settling": run.settling.state() if run.settling is not None else None,
                "loss_sum": run.loss_sum, "loss_n": run.loss_n}, buf)
    records.write_file(root, sweep_id, run_id, CHECKPOINT, buf.getvalue())


def _write_spectra(root, sweep_id, run_id, step, layers: list[dict], base, status, first_bad) -> None:
    """Eigenvalues of H, G, Z per member, layer and side at the last probe (for spectra plots);
    `layers`: per layer the probe's metrics with their `eig_*` (K, d) spectra."""
    cols = {n: [] for n in records.SPECTRA_SCHEMA.names}
    spectra = [{(side, matrix): metrics[f"eig_{matrix}_{side}"].tolist() for side in "ab" for matrix in "hgz"}
               for metrics in layers]  # (K, d) each: one host transfer apiece
    for k, b in enumerate(base):
        if status[k] == "diverged" or first_bad[k] >= 0:
            continue
        for l, layer_spectra in enumerate(spectra):
            for side in "ab":
                for matrix in "hgz":
                    eig = layer_spectra[(side, matrix)][k]
                    n = len(eig)
                    cols["sweep_id"] += [sweep_id] * n
                    cols["run_id"] += [run_id] * n
                    cols["member"] += [k] * n
                    cols["config_hash"] += [b["config_hash"]] * n
                    cols["step"] += [step] * n
                    cols["layer"] += [l + 1] * n
                    cols["side"] += [side] * n
                    cols["matrix"] += [matrix.upper()] * n
                    cols["rank"] += list(range(1, n + 1))
                    cols["eigenvalue"] += eig
    records.write_spectra(root, sweep_id, run_id, pa.table(cols, schema=records.SPECTRA_SCHEMA))


def _diverged_rows(base: dict, step: int, layers, n_layers: int) -> list[dict]:
    """One row per layer saying the member diverged at `step`; metrics are NaN."""
    rows = []
    for info in layers:
        row = dict(base)
        row.update(step=step, layer=info.layer, n_layers=n_layers, layer_name=info.name, layer_kind=info.kind,
                   head=info.head, dim_in=info.dim_in, dim_out=info.dim_out, status="diverged", train_loss=float("nan"), probe_loss=float("nan"),
                   train_accuracy=float("nan"), probe_accuracy=float("nan"), nan_reason="diverged: non-finite loss")
        row.update({c: (0 if c.startswith("n_zero") or c.endswith("_n") else float("nan")) for c in METRIC_COLUMNS})
        rows.append(row)
    return rows
