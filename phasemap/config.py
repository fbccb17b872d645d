"""Typed, validated run configs.

A run config (YAML) describes one *pack*: K networks that share task, depth, width,
activation, batch size and optimizer family, and differ in learning rate, momentum,
weight decay and init seed. Those four member fields accept a scalar or a list; the
pack's members are the product of the lists.

Every problem in a file is collected and raised at once as a `ConfigError` that names
the field's path and the value, e.g. ``model.width: `width >= 1` must hold, but got 0``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

TASKS = ("fc1", "fc2", "clusters")
ACTIVATIONS = ("relu", "tanh", "gelu", "linear")
OPTIMIZERS = ("sgd", "adam", "adamw")
COVARIANCES = ("centered", "raw")
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(ValueError):
    """Every problem found in a config, one per line, each with its field path."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s):\n{lines}")


def _check(rule: str, ok) -> dict:
    """Field metadata: `ok(value)` must be true, else the error quotes `rule`."""
    return {"rule": rule, "ok": ok}


@dataclass(frozen=True)
class TaskSpec:
    name: str = field(default="fc1", metadata=_check(f"name in {TASKS}", lambda v: v in TASKS))
    # dimension of the input x
    input_dim: int = field(default=100, metadata=_check("input_dim >= 1", lambda v: v >= 1))
    # seed of the fixed teacher (fc1/fc2 sines, fc2's Bernoulli mixing, cluster centres)
    teacher_seed: int = 0
    # fc1/fc2: number of sine units in the teacher
    teacher_width: int = field(default=100, metadata=_check("teacher_width >= 1", lambda v: v >= 1))
    # fc2: output dimension of the teacher
    output_dim: int = field(default=100, metadata=_check("output_dim >= 1", lambda v: v >= 1))
    # fc2: input x = ((1 - phi) Z + phi I) x'; small phi = strongly correlated inputs
    phi: float = field(default=0.5, metadata=_check("0 <= phi <= 1", lambda v: 0 <= v <= 1))
    # clusters: number of classes (Gaussian clusters, cross-entropy loss)
    n_classes: int = field(default=10, metadata=_check("n_classes >= 2", lambda v: v >= 2))
    # clusters: per-coordinate standard deviation around each centre (centres ~ N(0, I))
    noise: float = field(default=1.0, metadata=_check("noise > 0", lambda v: v > 0))


@dataclass(frozen=True)
class ModelSpec:
    # number of hidden layers; the MLP has depth + 1 linear layers
    depth: int = field(default=4, metadata=_check("depth >= 1", lambda v: v >= 1))
    # width of every hidden layer
    width: int = field(default=100, metadata=_check("width >= 1", lambda v: v >= 1))
    activation: str = field(
        default="relu", metadata=_check(f"activation in {ACTIVATIONS}", lambda v: v in ACTIVATIONS)
    )
    bias: bool = True


@dataclass(frozen=True)
class OptimizerSpec:
    name: str = field(
        default="sgd", metadata=_check(f"name in {OPTIMIZERS}", lambda v: v in OPTIMIZERS)
    )
    # member fields: a scalar or a list (one pack member per combination)
    lr: tuple[float, ...] = field(
        default=(0.01,), metadata=_check("lr > 0", lambda v: all(x > 0 for x in v))
    )
    momentum: tuple[float, ...] = field(
        default=(0.0,), metadata=_check("0 <= momentum < 1", lambda v: all(0 <= x < 1 for x in v))
    )
    weight_decay: tuple[float, ...] = field(
        default=(0.0,), metadata=_check("weight_decay >= 0", lambda v: all(x >= 0 for x in v))
    )
    # adam/adamw only
    betas: tuple[float, float] = field(
        default=(0.9, 0.999),
        metadata=_check(
            "two betas in [0, 1)", lambda v: len(v) == 2 and all(0 <= b < 1 for b in v)
        ),
    )
    eps: float = field(default=1e-8, metadata=_check("eps > 0", lambda v: v > 0))


@dataclass(frozen=True)
class TrainSpec:
    # optimizer steps; every step draws a fresh batch (online training)
    steps: int = field(default=1000, metadata=_check("steps >= 1", lambda v: v >= 1))
    batch_size: int = field(default=100, metadata=_check("batch_size >= 1", lambda v: v >= 1))
    # member field: init seeds (a scalar or a list)
    seed: tuple[int, ...] = (0,)
    # seed of the data stream, shared by every member of the pack
    data_seed: int = 0
    device: str = field(default="auto", metadata=_check(f"device in {DEVICES}", lambda v: v in DEVICES))
    # how often (steps) divergence is checked between probes; a check syncs with the device
    check_every: int = field(default=100, metadata=_check("check_every >= 1", lambda v: v >= 1))
    # how often (steps) the state is checkpointed, so a killed run resumes where it was
    checkpoint_every: int = field(default=1000, metadata=_check("checkpoint_every >= 1", lambda v: v >= 1))


@dataclass(frozen=True)
class ProbeSpec:
    # fresh samples, never trained on, used for every probe
    n_samples: int = field(default=1000, metadata=_check("n_samples >= 2", lambda v: v >= 2))
    # log-spaced probe count (step 0 and the last step are always probed) ...
    count: int = field(default=8, metadata=_check("count >= 0", lambda v: v >= 0))
    # ... or explicit steps (overrides count when given)
    steps: tuple[int, ...] = field(
        default=(), metadata=_check("steps >= 0", lambda v: all(s >= 0 for s in v))
    )
    # centered: cov of unit-normalised vectors (the paper); raw: E[hh^T] of raw vectors
    covariance: str = field(
        default="centered",
        metadata=_check(f"covariance in {COVARIANCES}", lambda v: v in COVARIANCES),
    )
    # PAH fits use eigenvalues above pah_floor * largest eigenvalue
    pah_floor: float = field(default=1e-4, metadata=_check("0 < pah_floor < 1", lambda v: 0 < v < 1))
    # Haar rotations per alignment null (`<relation>_null`, its standard error `_null_se`); 0: none
    null_samples: int = field(default=8, metadata=_check("null_samples == 0 or null_samples >= 2",
                                                          lambda v: v == 0 or v >= 2))


@dataclass(frozen=True)
class StorageSpec:
    # where records go: a local folder or a pyarrow filesystem URI (s3://bucket/prefix)
    root: str = "results"
    # groups runs into one dataset partition
    sweep_id: str = field(
        default="default",
        metadata=_check("sweep_id is non-empty with no '/'", lambda v: v != "" and "/" not in v),
    )


@dataclass(frozen=True)
class RunConfig:
    name: str = field(
        default="run", metadata=_check("name is non-empty with no '/'", lambda v: v != "" and "/" not in v)
    )
    # how the member lists combine: product (every combination) or zip (position by position;
    # lists of length 1 are repeated)
    pairing: str = field(
        default="product", metadata=_check("pairing in ('product', 'zip')", lambda v: v in ("product", "zip"))
    )
    task: TaskSpec = TaskSpec()
    model: ModelSpec = ModelSpec()
    optimizer: OptimizerSpec = OptimizerSpec()
    train: TrainSpec = TrainSpec()
    probe: ProbeSpec = ProbeSpec()
    storage: StorageSpec = StorageSpec()

    @property
    def members(self) -> list["Member"]:
        lists = self._member_lists()
        if self.pairing == "zip":
            n = max(len(v) for v in lists)
            combos = zip(*(v * n if len(v) == 1 else v for v in lists))
        else:
            combos = itertools.product(*lists)
        return [Member(lr, m, wd, s) for lr, m, wd, s in combos]

    def _member_lists(self) -> tuple:
        o = self.optimizer
        return (o.lr, o.momentum, o.weight_decay, self.train.seed)

    @property
    def output_dim(self) -> int:
        return {"fc1": 1, "fc2": self.task.output_dim, "clusters": self.task.n_classes}[self.task.name]

    def probe_steps(self) -> list[int]:
        """Steps after which probes run: the schedule plus step 0 and the last step."""
        total = self.train.steps
        if self.probe.steps:
            chosen = set(self.probe.steps)
        else:
            n = self.probe.count
            chosen = {round(total ** (i / (n - 1))) for i in range(n)} if n > 1 else set()
        return sorted(chosen | {0, total})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def member_config(self, member: "Member") -> "RunConfig":
        """This config with the pack reduced to one member."""
        return replace(
            self,
            {
                "pairing": "product",
                "optimizer.lr": [member.lr],
                "optimizer.momentum": [member.momentum],
                "optimizer.weight_decay": [member.weight_decay],
                "train.seed": [member.seed],
            },
        )

    def config_hash(self) -> str:
        """Stable id of what is trained (storage and naming excluded)."""
        d = self.to_dict()
        d.pop("storage")
        d.pop("name")
        blob = json.dumps(d, sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Member:
    lr: float
    momentum: float
    weight_decay: float
    seed: int


# ----------------------------------------------------------------------------- parsing

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true/false"}


def _coerce_scalar(value: Any, typ: type, path: str, problems: list[str]) -> Any:
    if typ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            problems.append(f"{path}: must be finite, but got {value!r}")
            return None
        return float(value)
    if typ is float and isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
        try:
            return _coerce_scalar(float(value), float, path, problems)
        except ValueError:
            pass
    if typ is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if typ in (str, bool) and type(value) is typ:
        return value
    problems.append(f"{path}: must be {_TYPE_NAMES[typ]}, but got {value!r}")
    return None


def _build(cls, data: Any, path: str, problems: list[str]):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(f"{path or 'config'}: must be a mapping, but got {data!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            where = f"{path}.{key}" if path else str(key)
            problems.append(f"{where}: unknown key (known: {', '.join(sorted(names))})")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        where = f"{path}.{f.name}" if path else f.name
        typ, raw = hints[f.name], data[f.name]
        if dataclasses.is_dataclass(typ):
            values[f.name] = _build(typ, raw, where, problems)
            continue
        if typing.get_origin(typ) is tuple:
            item = typing.get_args(typ)[0]
            items = list(raw) if isinstance(raw, (list, tuple)) else [raw]
            if not items and f.name != "steps":
                problems.append(f"{where}: must not be empty")
                continue
            got = [_coerce_scalar(v, item, f"{where}[{i}]", problems) for i, v in enumerate(items)]
            if any(v is None for v in got):
                continue
            value = tuple(got)
        else:
            value = _coerce_scalar(raw, typ, where, problems)
            if value is None:
                continue
        if "ok" in f.metadata and not f.metadata["ok"](value):
            shown = value[0] if isinstance(value, tuple) and len(value) == 1 else value
            problems.append(f"{where}: `{f.metadata['rule']}` must hold, but got {shown!r}")
            continue
        values[f.name] = value
    return cls(**values)


def _cross_checks(cfg: RunConfig, problems: list[str]) -> None:
    if cfg.pairing == "zip":
        lengths = {len(v) for v in cfg._member_lists()} - {1}
        if len(lengths) > 1:
            problems.append(
                f"pairing: `member lists of one length (or 1) for zip` must hold, but got lengths "
                f"lr={len(cfg.optimizer.lr)}, momentum={len(cfg.optimizer.momentum)}, "
                f"weight_decay={len(cfg.optimizer.weight_decay)}, seed={len(cfg.train.seed)}"
            )
    if cfg.train.batch_size > cfg.probe.n_samples:
        problems.append(
            f"train.batch_size: `batch_size <= probe.n_samples` must hold, but got "
            f"batch_size={cfg.train.batch_size}, n_samples={cfg.probe.n_samples}"
        )
    late = [s for s in cfg.probe.steps if s > cfg.train.steps]
    if late:
        problems.append(
            f"probe.steps: `step <= train.steps` must hold, but got {late} with steps={cfg.train.steps}"
        )
    if cfg.optimizer.name != "sgd" and any(m != 0 for m in cfg.optimizer.momentum):
        problems.append(
            f"optimizer.momentum: momentum applies to sgd only (use betas for "
            f"{cfg.optimizer.name}), but got {list(cfg.optimizer.momentum)}"
        )


def parse_config(data: Any, source: str = "config") -> RunConfig:
    """Build a RunConfig from plain data; raise ConfigError listing every problem."""
    problems: list[str] = []
    cfg = _build(RunConfig, data, "", problems)
    if not problems:
        _cross_checks(cfg, problems)
    if problems:
        raise ConfigError(problems, source)
    return cfg


def set_path(data: dict, key: str, value: Any) -> None:
    """Set a dotted path in plain config data; a mapping value sets each of its fields."""
    if isinstance(value, dict):
        for k, v in value.items():
            set_path(data, f"{key}.{k}", v)
        return
    node = data
    *parents, last = key.split(".")
    for k in parents:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError([f"{key}: {k!r} is not a section"])
    node[last] = value


def read_yaml(path: str | Path, overrides: list[str] | None = None) -> Any:
    """A YAML file as plain data, with `key.path=value` overrides (values read as YAML)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"file not found: {str(path)!r}"], str(path))
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError([f"not valid YAML: {e}"], str(path)) from None
    for item in overrides or []:
        key, sep, text = item.partition("=")
        if not sep or not key or not isinstance(data, dict):
            raise ConfigError([f"override {item!r}: must be key.path=value"], str(path))
        set_path(data, key, yaml.safe_load(text))
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config, apply `key.path=value` overrides, validate."""
    return parse_config(read_yaml(path, overrides), str(path))


def replace(cfg: RunConfig, changes: dict[str, Any]) -> RunConfig:
    """A validated copy of `cfg` with dotted-path fields changed."""
    data = json.loads(json.dumps(cfg.to_dict(), default=list))
    for key, value in changes.items():
        set_path(data, key, value)
    return parse_config(data)
