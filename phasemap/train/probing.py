"""Probing a pack: every layer's metrics for every member, as plain per-member values.

Three paths, one result: the stacked MLP is probed in one pass for all K members
(`probe_stacked`); a packed model of any other architecture in one vmapped pass too
(`probe_packed`, in eval mode, so BatchNorm uses each member's running statistics), or,
where vmap cannot run the module (a factory's), member by member (`measure` on
`model.member(k)`), which gives the same values.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from ..measure import METRIC_COLUMNS, Stationarity, describe_layers, measure, probe_stacked
from ..measure.capture import probe_packed
from ..models import StackedMLP

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerInfo:
    name: str
    kind: str  # linear | conv | attention.q | attention.k | attention.v | attention.out (+ ".head"),
    # attention.head_out (a head's output: out_proj's input columns)
    dim_in: int
    dim_out: int
    layer: int  # 1-based position among the measured layers (a head row: its projection's)
    head: int | None = None  # a per-head row's head (1-based)


@dataclass
class Probe:
    """One probe of a pack: per member (lists of K), per layer."""

    loss: list[float]
    layers: list[LayerInfo]
    values: list[dict[str, list]]  # per layer: {metric column: K values}
    reasons: list[list[str]]  # per layer: K nan reasons
    spectra: list[dict] | None  # stacked MLP only: per layer {eig_*: (K, d) tensors}


class Prober:
    """Probes of one pack, keeping what later probes need (the previous probe's matrices)."""

    def __init__(self, model, task, prepare, probe_spec, weight_decays: list[float]):
        self.model, self.task, self.prepare = model, task, prepare
        self.spec = probe_spec
        self.weight_decays = weight_decays
        self.stacked = isinstance(model, StackedMLP)
        K = len(weight_decays)
        self.trackers = [Stationarity()] if self.stacked else [Stationarity() for _ in range(K)]
        if self.stacked:
            dims = model.dims
            self.layers = [LayerInfo(f"fc{l + 1}", "linear", dims[l], dims[l + 1], l + 1) for l in range(len(dims) - 1)]
        else:
            self.layers = [LayerInfo(*row) for row in describe_layers(model.member(0), probe_spec.per_head)]
        self.n_layers = sum(info.head is None for info in self.layers)  # head rows are not layers
        # neural collapse's labels come from this many classes: a classifier's outputs, or (a
        # self-supervised task) the images' classes
        self.n_classes = getattr(task, "n_classes", task.output_dim)
        self.batched = not self.stacked  # False once vmap has failed on this model: member by member
        self.vectorize: bool | None = None  # the batched capture under vmap (None: on a GPU)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> Probe:
        if self.stacked:
            return self._stacked(x, y)
        if self.batched:
            try:
                return self._packed(x, y)
            except Exception as e:  # noqa: BLE001 - whatever vmap cannot run: the member loop can
                self.batched = False
                log.warning("probes of this %s pack run member by member: the batched probe failed (%s: %s)",
                            type(self.model.functional()[0]).__name__, type(e).__name__, e)
        return self._by_member(x, y)

    def _stacked(self, x, y) -> Probe:
        s = self.spec
        loss, layers = probe_stacked(self.model, self.task, self.prepare(x), y, s.covariance, s.pah_floor,
                                     null_samples=s.null_samples, weight_decay=self.weight_decays,
                                     stationarity=self.trackers[0])
        # one host transfer per layer and column, not one per member (each is a sync on a GPU)
        values = [{c: metrics[c].tolist() for c in METRIC_COLUMNS} for metrics, _ in layers]
        return Probe(loss.tolist(), self.layers, values, [reasons for _, reasons in layers], [m for m, _ in layers])

    def _packed(self, x, y) -> Probe:
        s, K = self.spec, len(self.weight_decays)
        base, params, buffers = self.model.functional()
        finite = torch.stack([torch.isfinite(p.flatten(1)).all(1) for p in params.values()]).all(0)
        finite = (finite & self._finite_outputs(x)).nonzero().flatten().tolist()  # one sync
        nan_row = {c: (0 if c.startswith("n_zero") or c.endswith("_n") else math.nan) for c in METRIC_COLUMNS}
        values = [{c: [nan_row[c]] * K for c in METRIC_COLUMNS} for _ in self.layers]
        reasons = [[""] * K for _ in self.layers]
        loss = [math.nan] * K  # a diverged member's rows are the divergence rows
        if len(finite) < K:  # the diverged members stay out (their NaN would reach no row anyway)
            index = torch.tensor(finite, device=next(iter(params.values())).device)
            params = {n: p.index_select(0, index) for n, p in params.items()}
            buffers = {n: b.index_select(0, index) for n, b in buffers.items()}
        if finite:
            tracker = Stationarity.stacked([self.trackers[k] for k in finite])
            classification = self.task.classification
            losses, rows = probe_packed(
                base, params, buffers, self.prepare(x), y, self.task.loss,
                s.covariance, s.pah_floor, s.null_samples, [self.weight_decays[k] for k in finite],
                labels=y if classification else None, stationarity=tracker, max_samples=s.max_samples,
                per_head=s.per_head, n_classes=self.n_classes if classification else None,
                vectorize=self.vectorize)
            tracker.unstack([self.trackers[k] for k in finite])
            for l, (metrics, why) in enumerate(rows):
                for c in METRIC_COLUMNS:  # one host transfer per layer and column
                    for k, v in zip(finite, metrics[c].tolist()):
                        values[l][c][k] = v
                for k, r in zip(finite, why):
                    reasons[l][k] = r
            for k, v in zip(finite, losses.tolist()):
                loss[k] = v
        return Probe(loss, self.layers, values, reasons, None)

    @torch.no_grad()
    def _finite_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """(K,) whether each member's outputs on the probe set are finite (eval mode): a member
        whose activations overflow with finite parameters is left out like a diverged one (its
        probe loss is NaN, so the loop records it diverged) instead of failing the whole probe."""
        was = self.model.training
        self.model.eval()
        try:
            out = self.model(self.prepare(x))  # (K, N, ...)
        finally:
            self.model.train(was)
        return torch.isfinite(out.flatten(1)).all(1)

    def _by_member(self, x, y) -> Probe:
        s, K = self.spec, len(self.weight_decays)
        tables = []
        outputs = self._finite_outputs(x).tolist()
        for k in range(K):
            member = self.model.member(k)
            if not outputs[k] or not all(torch.isfinite(p).all() for p in member.parameters()):
                tables.append(None)  # diverged: its rows are the divergence rows
                continue
            tables.append(measure(member, self.prepare(x), y, self.task.loss, s.covariance, s.pah_floor,
                                  s.null_samples, weight_decay=self.weight_decays[k],
                                  labels=y if self.task.classification else None, stationarity=self.trackers[k],
                                  max_samples=s.max_samples, per_head=s.per_head,
                                  n_classes=self.n_classes if self.task.classification else None))
        infos = self.layers
        nan_row = {c: (0 if c.startswith("n_zero") or c.endswith("_n") else math.nan) for c in METRIC_COLUMNS}
        values, reasons = [], []
        for l in range(len(infos)):
            values.append({c: [t[c].iloc[l] if t is not None else nan_row[c] for t in tables] for c in METRIC_COLUMNS})
            reasons.append([t["nan_reason"].iloc[l] if t is not None else "" for t in tables])
        loss = [float(t["probe_loss"].iloc[0]) if t is not None else math.nan for t in tables]
        return Probe(loss, infos, values, reasons, None)

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> list[float]:
        """Per member: the share of samples whose largest output is the label (eval mode)."""
        was = self.model.training
        self.model.eval()
        try:
            out = self.model(self.prepare(x))  # (K, N, classes)
        finally:
            self.model.train(was)
        return self.task.accuracy(out, y).tolist()

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(K, N, d): each member's backbone embedding of x (eval mode), for a self-supervised
        model (`models.SimCLR`)."""
        was = self.model.training
        self.model.eval()
        try:
            return self.model(self.prepare(x), embed=True)
        finally:
            self.model.train(was)

    def state(self) -> list[dict]:
        return [t.state() for t in self.trackers]

    def load(self, state, device=None) -> None:
        if isinstance(state, dict):  # a checkpoint of the stacked path before per-member trackers
            state = [state]
        for t, s in zip(self.trackers, state):
            t.load(s, device)
