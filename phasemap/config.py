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
import difflib
import functools
import hashlib
import itertools
import json
import math
import typing
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

IMAGE_TASKS = ("digits", "cifar10", "cifar100", "mnist", "fashion_mnist", "npz")  # phasemap/data/images.py
SEQUENCE_TASKS = ("modular", "tokens")  # phasemap/data/modular.py, tokens.py
SSL_FAMILIES = ("cnn", "resnet", "factory")  # a backbone SimCLR's projection head goes on (phasemap/models/ssl.py)
TASKS = ("fc1", "fc2", "clusters") + IMAGE_TASKS + SEQUENCE_TASKS + ("ssl",)
OPERATIONS = ("add", "sub", "mul", "div")
FAMILIES = ("mlp", "cnn", "resnet", "transformer", "factory")
NORMS = ("none", "batch", "group")
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
    # image tasks read from disk (cifar10, cifar100, mnist, fashion_mnist, npz): a file or folder
    path: str = ""
    # digits, and npz files holding only x and y: how many of the last samples are held out
    held_out: int = field(default=297, metadata=_check("held_out >= 1", lambda v: v >= 1))
    # image tasks: random crop (zero padding 4) and horizontal flip of training batches, on the device
    augment: bool = False
    # modular: a op b mod modulus (a prime for div), on a train_fraction of all pairs
    modulus: int = field(default=97, metadata=_check("modulus >= 2", lambda v: v >= 2))
    operation: str = field(default="add", metadata=_check(f"operation in {OPERATIONS}", lambda v: v in OPERATIONS))
    train_fraction: float = field(default=0.5, metadata=_check("0 < train_fraction < 1", lambda v: 0 < v < 1))
    # tokens: sequence length of a sample, and the vocabulary of a .bin token file
    block: int = field(default=64, metadata=_check("block >= 1", lambda v: v >= 1))
    vocab_size: int = field(default=0, metadata=_check("vocab_size >= 0", lambda v: v >= 0))
    # ssl (SimCLR): the image task whose images are used (labels only for measuring), the
    # projection head's output width and InfoNCE's temperature
    data: str = field(default="digits", metadata=_check(f"data in {IMAGE_TASKS}", lambda v: v in IMAGE_TASKS))
    projection_dim: int = field(default=128, metadata=_check("projection_dim >= 2", lambda v: v >= 2))
    temperature: float = field(default=0.5, metadata=_check("temperature > 0", lambda v: v > 0))


@dataclass(frozen=True)
class ModelSpec:
    # mlp (stacked, the fast path) | cnn (a conv stack) | resnet (CIFAR-style) | factory (yours)
    family: str = field(default="mlp", metadata=_check(f"family in {FAMILIES}", lambda v: v in FAMILIES))
    # mlp: hidden layers (depth + 1 linear layers); cnn: conv layers; resnet: 6 n + 2 layers
    depth: int = field(default=4, metadata=_check("depth >= 1", lambda v: v >= 1))
    # mlp: hidden width; cnn: channels; resnet: width multiplier (16, 32, 64 channels times it)
    width: int = field(default=100, metadata=_check("width >= 1", lambda v: v >= 1))
    activation: str = field(
        default="relu", metadata=_check(f"activation in {ACTIVATIONS}", lambda v: v in ACTIVATIONS)
    )
    bias: bool = True
    # cnn and resnet: normalisation after each convolution
    norm: str = field(default="batch", metadata=_check(f"norm in {NORMS}", lambda v: v in NORMS))
    # transformer: attention heads (width divisible by heads) and whether the unembedding is
    # the token embedding transposed
    heads: int = field(default=4, metadata=_check("heads >= 1", lambda v: v >= 1))
    tied: bool = False
    # family factory: "package.module:function", importable on every worker; called with kwargs,
    # it returns one member (an nn.Module from the task's inputs to its outputs)
    factory: str = ""
    kwargs: dict = field(default_factory=dict)


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
class StopSpec:
    """`train.stop`: end the pack once every member's representations have settled (off by
    default: a network can sit still for long and then change, as in grokking)."""

    # a member settles when stat_h_b and stat_g_b of every hidden layer stay below this (the
    # relative change of H and G since the previous probe); 0 (the default): off, as nothing
    # changes by less than 0
    stationary: float = field(default=0.0, metadata=_check("stationary > 0 (0: off)", lambda v: v >= 0))
    # ... for this many consecutive probes, and its training loss has stopped falling
    patience: int = field(default=2, metadata=_check("patience >= 1", lambda v: v >= 1))
    # "stopped falling": the mean train loss over the last probe interval is at least
    # (1 - loss_tolerance) x the mean over the interval before it
    loss_tolerance: float = field(default=0.01, metadata=_check("0 <= loss_tolerance < 1", lambda v: 0 <= v < 1))
    # a probe counts towards patience only if at least min_gap x train.steps steps passed since
    # the previous one (over a few steps H and G barely move, whatever the network will do);
    # the even spacing after the first settle is never closer either
    min_gap: float = field(default=0.02, metadata=_check("0 <= min_gap <= 1", lambda v: 0 <= v <= 1))

    @property
    def enabled(self) -> bool:
        return self.stationary > 0


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
    # stop the pack when all its members have settled: {stationary: 0.02, patience: 2}; off by default
    stop: StopSpec = StopSpec()


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
    # samples per layer above which a probe uses a fixed random subset of them (a convolution's
    # samples are images x positions: 297 digits x 64 positions = 19,008)
    max_samples: int = field(default=32768, metadata=_check("max_samples >= 2", lambda v: v >= 2))
    # attention's q, k and v: also one row per head (the head's slice of h_b, g_b and W)
    per_head: bool = False


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
        fixed = {"fc1": 1, "fc2": self.task.output_dim, "cifar100": 100, "digits": 10, "cifar10": 10, "mnist": 10,
                 "fashion_mnist": 10, "modular": self.task.modulus + 2, "tokens": self.task.vocab_size,
                 "ssl": self.task.projection_dim}
        # clusters and npz: task.n_classes; a text token file: 0 here, its character count once read
        return fixed.get(self.task.name, self.task.n_classes)

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
        """This config with the pack reduced to one member (its environment, the factory
        module and `task.path`, is the pack's: not checked again)."""
        return replace(
            self,
            {
                "pairing": "product",
                "optimizer.lr": [member.lr],
                "optimizer.momentum": [member.momentum],
                "optimizer.weight_decay": [member.weight_decay],
                "train.seed": [member.seed],
            },
            check_environment=False,
        )

    def config_hash(self) -> str:
        """Stable id of what is trained (storage and naming excluded); worked out once per config
        (it is frozen, `model.kwargs` included: never change that dict in place), as packing a
        large grid asks for it many times."""
        if "_hash" not in self.__dict__:
            object.__setattr__(self, "_hash", self._config_hash())
        return self.__dict__["_hash"]

    def _config_hash(self) -> str:
        d = self.to_dict()
        d.pop("storage")
        d.pop("name")
        for path, default in ADDED_FIELDS.items():  # fields added later hash as before at their default
            section, key = path.split(".")
            if d[section].get(key) == default:
                del d[section][key]
        blob = json.dumps(d, sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def run_id_of(cfg: RunConfig) -> str:
    """A pack's run id (its folder under the sweep): the name and the hash of the pack's config."""
    return f"{cfg.name}-{cfg.config_hash()}"


@dataclass(frozen=True)
class Member:
    lr: float
    momentum: float
    weight_decay: float
    seed: int


# Fields added after configs were first hashed, with their defaults: a config that leaves them
# at the default keeps the hash (and so the stored runs) it had before they existed.
# task.path of a tokens task: the running interpreter's own standard library source (its *.py
# files, sorted by name): real text every machine has, read at run time, never downloaded
STDLIB_TEXT = "python-stdlib"
ADDED_FIELDS = {"task.path": "", "task.held_out": 297, "task.augment": False, "model.family": "mlp",
                "model.norm": "batch", "model.factory": "", "model.kwargs": {}, "probe.max_samples": 32768,
                "task.modulus": 97, "task.operation": "add", "task.train_fraction": 0.5, "model.heads": 4,
                "model.tied": False, "task.block": 64, "task.vocab_size": 0,
                "probe.per_head": False, "train.stop": {"stationary": 0.0, "patience": 2, "loss_tolerance": 0.01,
                                                         "min_gap": 0.02},
                "task.data": "digits", "task.projection_dim": 128, "task.temperature": 0.5}


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


def unknown_key(where: str, key: Any, known: Collection[str]) -> str:
    """The problem for an unknown key: the nearest known one suggested, every known one listed."""
    near = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
    hint = f"; did you mean `{near[0]}`?" if near else ""
    return f"{where}: unknown key{hint} (known: {', '.join(sorted(known))})"


@functools.cache
def _hints(cls) -> dict:
    """A config dataclass's resolved field types: once per class (a 1,350-config grid parses
    thousands of configs)."""
    return typing.get_type_hints(cls)


def _build(cls, data: Any, path: str, problems: list[str]):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(f"{path or 'config'}: must be a mapping, but got {data!r}")
        return cls()
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            problems.append(unknown_key(f"{path}.{key}" if path else str(key), key, names))
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        where = f"{path}.{f.name}" if path else f.name
        typ, raw = hints[f.name], data[f.name]
        if dataclasses.is_dataclass(typ):
            values[f.name] = _build(typ, raw, where, problems)
            continue
        if typ is dict:
            try:
                json.dumps(raw)
            except (TypeError, ValueError):
                raw = None
            if not isinstance(raw, dict):
                problems.append(f"{where}: must be a mapping of plain values, but got {data[f.name]!r}")
                continue
            values[f.name] = raw
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


def _cross_checks(cfg: RunConfig, problems: list[str], check_environment: bool = True) -> None:
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
    stop = cfg.train.stop
    if stop != StopSpec() and not stop.enabled:
        problems.append(f"train.stop.stationary: `stationary > 0` must be given to stop settled runs, but got "
                        f"train.stop={dataclasses.asdict(stop)}")
    if stop.enabled and len(cfg.probe_steps()) < stop.patience + 1:
        problems.append(f"train.stop: `at least patience + 1 probes` must hold (a member settles after patience "
                        f"consecutive stationarity values, and the first probe has none), but got "
                        f"{len(cfg.probe_steps())} probe(s) with patience={stop.patience}")
    if cfg.task.name == "ssl" and cfg.model.family not in SSL_FAMILIES:
        problems.append(f"model.family: `a family with a backbone for SimCLR's projection head "
                        f"({', '.join(SSL_FAMILIES)})` must hold for task ssl, but got {cfg.model.family!r}")
    images = cfg.task.data if cfg.task.name == "ssl" else cfg.task.name  # ssl: its images' task
    image = images in IMAGE_TASKS or cfg.task.name in ("tokens", "ssl")  # read from task.path
    if cfg.model.family in ("cnn", "resnet") and not image:
        problems.append(f"model.family: `an image task for family {cfg.model.family}` must hold, but got "
                        f"task.name={cfg.task.name!r} (image tasks: {', '.join(IMAGE_TASKS)})")
    sequence = cfg.task.name in SEQUENCE_TASKS
    if cfg.model.family == "transformer" and not sequence:
        problems.append(f"model.family: `a sequence task for family transformer` must hold, but got "
                        f"task.name={cfg.task.name!r} (sequence tasks: {', '.join(SEQUENCE_TASKS)})")
    if sequence and cfg.model.family not in ("transformer", "factory"):
        problems.append(f"model.family: `transformer or factory for task {cfg.task.name}` must hold, but got "
                        f"{cfg.model.family!r}")
    if cfg.model.family == "transformer" and cfg.model.width % cfg.model.heads:
        problems.append(f"model.heads: `width divisible by heads` must hold, but got width={cfg.model.width}, "
                        f"heads={cfg.model.heads}")
    if cfg.task.name == "modular" and cfg.task.operation == "div" and any(
            cfg.task.modulus % q == 0 for q in range(2, int(cfg.task.modulus**0.5) + 1)):
        problems.append(f"task.modulus: `a prime for operation div` must hold, but got {cfg.task.modulus}")
    if cfg.model.family == "resnet" and (cfg.model.depth < 8 or (cfg.model.depth - 2) % 6):
        problems.append(f"model.depth: `resnet depth = 6 n + 2 (8, 14, 20, 32, ...)` must hold, but got "
                        f"{cfg.model.depth}")
    if cfg.model.family == "factory":
        if check_environment:  # imports the user's module
            problems.extend(_factory_problems(cfg.model.factory))
        elif ":" not in cfg.model.factory or not all(cfg.model.factory.partition(":")[::2]):
            problems.append(f"model.factory: `package.module:function` must be given for family factory, but got "
                            f"{cfg.model.factory!r}")
    elif cfg.model.factory:
        problems.append(f"model.factory: set only with family factory, but got {cfg.model.factory!r} "
                        f"with family {cfg.model.family!r}")
    if image and images != "digits" and not cfg.task.path:
        problems.append(f"task.path: `the data's file or folder for task {images}` must be given, but got ''")
    elif image and cfg.task.path and check_environment and cfg.task.path != STDLIB_TEXT \
            and not Path(cfg.task.path).exists():
        problems.append(f"task.path: `path exists` must hold, but got {cfg.task.path!r} (no such file or folder)")
    if cfg.optimizer.name != "sgd" and any(m != 0 for m in cfg.optimizer.momentum):
        problems.append(
            f"optimizer.momentum: momentum applies to sgd only (use betas for "
            f"{cfg.optimizer.name}), but got {list(cfg.optimizer.momentum)}"
        )


def load_factory(spec: str):
    """The callable named by "package.module:function", searched for on sys.path and in the
    current directory, as `python -m` would (last: it shadows no installed module). Ray
    workers of a local Ray search the driver's directory too (see `start_ray`)."""
    import importlib
    import os
    import sys

    module, _, name = spec.partition(":")
    here = os.getcwd()
    if here not in sys.path:
        sys.path.append(here)
    try:
        found = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if not e.name or not (module + ".").startswith(e.name + "."):
            raise  # the module itself imports something missing: its own error says what
        importlib.invalidate_caches()  # a module written since the folder was last read
        try:
            found = importlib.import_module(module)
        except ModuleNotFoundError:
            raise ModuleNotFoundError(f"{e} (searched the current directory {here!r} and sys.path: put the "
                                      f"module's folder on PYTHONPATH)", name=e.name) from None
    return getattr(found, name)


def _factory_problems(spec: str) -> list[str]:
    if ":" not in spec or not all(spec.partition(":")[::2]):
        return [f"model.factory: `package.module:function` must be given for family factory, but got {spec!r}"]
    try:
        fn = load_factory(spec)
    except (ImportError, AttributeError) as e:
        return [f"model.factory: `importable` must hold, but got {spec!r} ({type(e).__name__}: {e})"]
    if not callable(fn):
        return [f"model.factory: `a callable` must hold, but got {spec!r} ({type(fn).__name__})"]
    return []


def parse_config(data: Any, source: str = "config", *, check_environment: bool = True) -> RunConfig:
    """Build a RunConfig from plain data; raise ConfigError listing every problem.

    check_environment=False validates the config alone, not this machine: the factory module
    is not imported and `task.path` need not exist here. For configs read back from storage
    (`phasemap status`, completion markers), which may have been trained elsewhere."""
    problems: list[str] = []
    cfg = _build(RunConfig, data, "", problems)
    if not problems:
        _cross_checks(cfg, problems, check_environment)
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


def replace(cfg: RunConfig, changes: dict[str, Any], *, check_environment: bool = True) -> RunConfig:
    """A validated copy of `cfg` with dotted-path fields changed (`parse_config`'s check_environment)."""
    data = json.loads(json.dumps(cfg.to_dict(), default=list))
    for key, value in changes.items():
        set_path(data, key, value)
    return parse_config(data, check_environment=check_environment)
