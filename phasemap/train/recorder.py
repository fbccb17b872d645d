"""Measure inside your own training loop: `Recorder` writes sweep-compatible records.

    with phasemap.Recorder("results", sweep_id="mine", run_id="resnet-a", config={"depth": 4,
                           "width": 64, "optimizer": "adam", "lr": 1e-3, "weight_decay": 1e-4}) as rec:
        for step in range(steps):
            ...your training step...
            if step % 1000 == 0:
                rec.probe(model, x_probe, y_probe, per_sample_loss, step, train_loss=loss.item())

Each probe is `phasemap.measure` on the model, written atomically as one part of the run's
folder; leaving the `with` block without an error compacts the parts and writes the completion
marker, so the run is read by `load`, `sql`, `plot` and `report` like a sweep's runs (an error
leaves the run unfinished: no marker, readers still see its probes). The run's lease keeps a
second process from writing the same run at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

import pandas as pd
import torch

from .. import __version__, records
from ..records import leases
from ..config import RunConfig
from ..measure import METRIC_COLUMNS, NULL_SAMPLES, Stationarity, measure
from ..measure.capture import MAX_SAMPLES

log = logging.getLogger(__name__)

# how a probe measures: the record column of each option of `measure`, with its default
PROBE_OPTIONS = {"covariance": "centered", "pah_floor": 1e-4, "null_samples": NULL_SAMPLES,
                 "max_samples": MAX_SAMPLES, "per_head": False}


class Recorder:
    """Writes the records of one network trained by your own code (member 0 of its run).

    config: a one-member `RunConfig` (every config column filled), or a mapping of record
    columns to values (e.g. {"depth": 4, "weight_decay": 1e-4}); columns not given are null,
    except how it measures. Measuring options (`covariance`, `pah_floor`, `null_samples`,
    `max_samples`, `per_head`): a keyword, else the config's value, else `measure`'s default;
    a keyword that contradicts the config is an error. They are written with every row.
    `depth` defaults to the number of linear layers measured minus one (the last is the output).
    `weight_decay` in the config also gives the `balance` column its gamma.
    """

    def __init__(self, root: str, sweep_id: str, run_id: str, config: RunConfig | dict[str, Any] | None = None,
                 covariance: str | None = None, pah_floor: float | None = None, null_samples: int | None = None,
                 max_samples: int | None = None, per_head: bool | None = None):
        for what, value in (("sweep_id", sweep_id), ("run_id", run_id)):
            if not value or "/" in value:
                raise ValueError(f"`{what} is non-empty with no '/'` must hold, but got {value!r}")
        self.root, self.sweep_id, self.run_id = records.resolve_root(root), sweep_id, run_id
        if isinstance(config, RunConfig):
            if len(config.members) != 1:
                raise ValueError(f"`a one-member RunConfig` must hold, but got {len(config.members)} members")
            self.columns, self.config_hash = records.config_columns(config), config.config_hash()
        else:
            self.columns = dict(config or {})
            unknown = sorted(set(self.columns) - {c for _, c, _ in records.CONFIG_COLUMNS} - {"output_dim"})
            if unknown:
                raise ValueError(f"`config keys are config columns` must hold, but got {unknown} "
                                 f"(columns: {', '.join(c for _, c, _ in records.CONFIG_COLUMNS)})")
        given = {"covariance": covariance, "pah_floor": pah_floor, "null_samples": null_samples,
                 "max_samples": max_samples, "per_head": per_head}
        self.options = {}
        for name, default in PROBE_OPTIONS.items():
            configured = self.columns.get(name)
            if given[name] is not None and configured is not None and given[name] != configured:
                where = f"probe.{name} in the RunConfig" if isinstance(config, RunConfig) else f"{name!r} in the config"
                raise ValueError(f"`{name} as the config says` must hold, but got {name}={given[name]!r} "
                                 f"with the config's {configured!r} (set {where} instead)")
            self.options[name] = next(v for v in (given[name], configured, default) if v is not None)
        if not isinstance(config, RunConfig):
            # the network's identity: its config columns and how it is measured (options left at
            # their defaults hash as before they were part of it)
            ident = self.columns | {k: v for k, v in self.options.items() if v != PROBE_OPTIONS[k]}
            blob = json.dumps(ident, sort_keys=True, default=str)
            self.config_hash = hashlib.sha256(blob.encode()).hexdigest()[:12]
        self.lease, holder = leases.try_acquire(self.root, sweep_id, run_id)
        if self.lease is None:
            raise RuntimeError(f"run {run_id!r} of sweep {sweep_id!r} under {self.root} is being written by "
                               f"another process ({holder.describe()})")
        records.clear_run(self.root, sweep_id, run_id)  # a fresh run: no stale parts of an earlier one
        self.rows = 0
        self.stationarity = Stationarity()  # each probe's change since the previous one
        self.closed = False
        self.started = time.time()

    def probe(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn, step: int,
              train_loss: float | None = None, labels: torch.Tensor | None = None, n_classes: int | None = None):
        """Measure every nn.Linear of `model` on (x, y) at `step` and write the rows; returns
        the `measure` table. `loss_fn(output, y)` returns one loss per sample; `labels` (class
        indices, e.g. y of a classifier) fill the neural-collapse columns; `n_classes`: how many
        classes they come from (default max(labels) + 1; give it when a probe may lack some)."""
        if self.closed:
            raise RuntimeError(f"run {self.run_id!r}: the recorder is closed")
        gamma = self.columns.get("weight_decay")
        table = measure(model, x, y, loss_fn, weight_decay=gamma, labels=labels, stationarity=self.stationarity,
                        n_classes=n_classes, **self.options)
        measured = table[~table["nan_reason"].str.startswith("not measured")]
        base = {"schema_version": records.SCHEMA_VERSION, "phasemap_version": __version__,
                "sweep_id": self.sweep_id, "trial_id": self.run_id, "run_id": self.run_id,
                "config_hash": self.config_hash, "member": 0, **self.columns}
        base.update(self.options)  # how these rows were measured
        base.setdefault("depth", int(measured["layer"].max()) - 1 if len(measured) else None)
        base.setdefault("output_dim", int(table["dim_out"].iloc[-1]))
        rows = []
        for _, r in table.iterrows():
            row = dict(base, step=step, layer=int(r["layer"]), n_layers=int(table["head"].isna().sum()),
                       layer_name=r["name"], layer_kind=r["kind"], head=None if pd.isna(r["head"]) else int(r["head"]),
                       dim_in=int(r["dim_in"]), dim_out=int(r["dim_out"]),
                       status="ok", train_loss=train_loss, probe_loss=float(r["probe_loss"]),
                       nan_reason=r["nan_reason"])
            row.update({c: r[c] for c in METRIC_COLUMNS})
            rows.append(row)
        records.write_part(self.root, self.sweep_id, self.run_id, step, rows)
        self.rows += len(rows)
        return table

    def close(self, complete: bool = True) -> None:
        """Finish the run: compact its parts and mark it complete (complete=False: leave it
        unfinished). The lease is released either way."""
        if self.closed:
            return
        self.closed = True
        try:
            if complete:
                records.compact(self.root, self.sweep_id, self.run_id)
                records.mark_complete(self.root, self.sweep_id, self.run_id, {
                    "run_id": self.run_id, "members": [self.config_hash], "status": ["ok"], "rows": self.rows,
                    "seconds": time.time() - self.started, "recorder": True, "config": self.columns})
        finally:
            self.lease.release()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, kind, value, tb) -> None:
        self.close(complete=kind is None)
