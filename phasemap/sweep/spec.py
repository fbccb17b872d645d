"""Sweep configs: validation (every problem at once) and expansion into members and packs.

A sweep config (YAML) holds a `base` run config (the fixed settings), `axes` (dotted field
paths of the run config with a list of values each: a grid; or distributions for Optuna),
the search mode, resources per trial, pack size and retries. A grid expands to members (one
network each, identified by the hash of its own config); the members not yet complete form
packs that share a shape.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib.util
import itertools
import json
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from ..config import ConfigError, RunConfig, _build, _check, parse_config, read_yaml, set_path, unknown_key
from ..records.columns import METRIC_COLUMNS

MEMBER_FIELDS = ("optimizer.lr", "optimizer.momentum", "optimizer.weight_decay", "train.seed")
# columns an Optuna objective can be: numbers per row
OBJECTIVES = ("train_loss", "probe_loss", "train_accuracy", "probe_accuracy",
              *(c for c in METRIC_COLUMNS if not c.startswith("n_") and not c.endswith("_n")))


SEARCH_MODES = ("grid", "optuna", "boundary")
# experiment trackers (Ray Tune's logger callbacks): name -> (the module it needs, how to install it)
TRACKERS = {"tensorboard": ("tensorboardX", "pip install tensorboardX"),
            "mlflow": ("mlflow", "pip install 'phasemap[mlflow]'"),
            "wandb": ("wandb", "pip install 'phasemap[wandb]'")}


@dataclass(frozen=True)
class SearchSpec:
    mode: str = field(default="grid", metadata=_check(f"mode in {SEARCH_MODES}", lambda v: v in SEARCH_MODES))
    # optuna: the record column to optimise, averaged over members and hidden layers at the last step
    objective: str = "rga_b"
    direction: str = field(default="max", metadata=_check("direction in ('max', 'min')", lambda v: v in ("max", "min")))
    # optuna: how many trials
    trials: int = field(default=20, metadata=_check("trials >= 1", lambda v: v >= 1))
    seed: int = 0
    # boundary: the grid of `axes` is the candidates (a range {low, high, log} becomes `resolution`
    # values); networks are trained where a Gaussian process of each alignment cannot tell which
    # side of tau the cell is on (see boundary.py)
    # networks trained at most (0: a third of the grid's)
    budget: int = field(default=0, metadata=_check("budget >= 0", lambda v: v >= 0))
    per_round: int = field(default=8, metadata=_check("per_round >= 1", lambda v: v >= 1))  # cells started together
    # cells of the first design: the corners, then a space-filling subset (0: max(2^axes, per_round))
    initial: int = field(default=0, metadata=_check("initial == 0 or initial >= 2", lambda v: v == 0 or v >= 2))
    layer: str = "last"  # the layer whose phase is mapped: an index, a fraction (0.5), last, output
    tau: float = field(default=0.9, metadata=_check("0 < tau < 1", lambda v: 0 < v < 1))
    against: str = field(default="raw", metadata=_check("against in ('raw', 'null')", lambda v: v in ("raw", "null")))
    resolution: int = field(default=8, metadata=_check("resolution >= 2", lambda v: v >= 2))  # values of a range axis


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
    # experiment trackers every probe's metrics go to (TRACKERS), besides the records
    tracking: tuple[str, ...] = ()

    @property
    def sweep_id(self) -> str:
        return self.name

    @property
    def root(self) -> str:
        return self.storage.root


_SWEEP_KEYS = {"name", "base", "axes", "search", "resources", "storage", "pack_size", "max_failures", "tracking"}
_RUN_KEYS = {f.name for f in dataclasses.fields(RunConfig)}


def sweep_key(data: Any) -> str | None:
    """The top-level key that makes `data` a sweep config, not a run config: one only sweep
    configs have (`axes`, `base`, ...) or a near miss of one (`axis`); None for a run config."""
    if not isinstance(data, dict):
        return None
    if "axes" in data:
        return "axes"
    only = _SWEEP_KEYS - _RUN_KEYS
    for key in data:
        near = difflib.get_close_matches(str(key), sorted(_SWEEP_KEYS | _RUN_KEYS), n=1, cutoff=0.6)
        if key in only or (key not in _RUN_KEYS and near and near[0] in only):
            return str(key)
    return None


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
            problems.append(unknown_key(str(key), key, _SWEEP_KEYS))
    name = data.get("name", "sweep")
    if not isinstance(name, str) or not name or "/" in name:
        problems.append(f"name: `name is a non-empty string with no '/'` must hold, but got {name!r}")
    search_data = data.get("search")
    if isinstance(search_data, dict) and isinstance(search_data.get("layer"), (int, float)) \
            and not isinstance(search_data.get("layer"), bool):
        search_data = {**search_data, "layer": str(search_data["layer"])}  # YAML reads `layer: 3` as a number
    if isinstance(search_data, dict) and "against" in search_data and search_data["against"] is None:
        search_data = {**search_data, "against": "null"}  # YAML reads `against: null` as None
    search = _build(SearchSpec, search_data, "search", problems)
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
    tracking = _tracking(data.get("tracking", []), problems)
    base = data.get("base") or {}
    if not isinstance(base, dict):
        problems.append(f"base: must be a mapping (a run config), but got {base!r}")
        base = {}
    base = dict(base)
    base_problems: set[str] = set()
    try:
        parse_config(base)
    except ConfigError as e:
        base_problems = set(e.problems)
        problems += [f"base.{p}" for p in e.problems]
    axes = data.get("axes") or {}
    if not isinstance(axes, dict) or not axes:
        problems.append(f"axes: must be a non-empty mapping of field path -> values, but got {axes!r}")
        axes = {}
    mode = search.mode
    axes = dict(axes)
    for key, values in list(axes.items()):
        where = f"axes.{key}"
        if mode == "boundary" and isinstance(values, dict):  # a range: `resolution` values over it
            if not _axis_examples(values, where, problems):
                continue
            values = axes[key] = _range_values(values, search.resolution)
        if mode != "optuna" and (not isinstance(values, list) or not values):
            problems.append(f"{where}: a {mode} axis must be a non-empty list"
                            f"{' or a range {low, high, log, type}' if mode == 'boundary' else ''}, but got {values!r}")
            continue
        if mode == "boundary" and key != SEED_AXIS and len({json.dumps(v, sort_keys=True) for v in values}) < 2:
            problems.append(f"{where}: `a boundary axis has at least 2 values` must hold (a fixed value belongs "
                            f"in base), but got {values!r}")
            continue
        examples = _axis_examples(values, where, problems) if mode == "optuna" else values
        found: dict[str, list[int]] = {}  # problem -> the values that have it; the base's are listed once, above
        for i, value in enumerate(examples):
            try:
                parse_config(_with(base, {key: value}))
            except ConfigError as e:
                for p in e.problems:
                    if p not in base_problems:
                        found.setdefault(p, []).append(i)
        for p, which in found.items():  # a problem of every value (a misspelt axis path) is the axis's, once
            problems += [f"{where}: {p}"] if len(which) == len(examples) > 1 else \
                [f"{where}[{i}] = {examples[i]!r}: {p}" for i in which]
    if search.mode == "optuna" and search.objective not in OBJECTIVES:
        near = difflib.get_close_matches(str(search.objective), OBJECTIVES, n=3)
        hint = f"did you mean {' or '.join(f'`{c}`' for c in near)}? " if near else ""
        problems.append(f"search.objective: `objective is a numeric record column` must hold, but got "
                        f"{search.objective!r} ({hint}valid: {', '.join(OBJECTIVES)})")
    if name and "sweep_id" in base.get("storage", {}):
        problems.append("base.storage.sweep_id: set by the sweep's name; remove it")
    if mode == "boundary":
        _check_boundary(search, axes, problems)
    cfg = SweepConfig(name, base, axes, search, resources, storage, data.get("pack_size", "auto"),
                      data.get("max_failures", 2), tracking)
    if not problems and mode in ("grid", "boundary"):
        seen = set()
        for combo in grid_points(cfg):
            try:
                parse_config(_with(base, combo))
            except ConfigError as e:
                for p in e.problems:
                    if p not in seen:
                        seen.add(p)
                        problems.append(f"axes combination {combo}: {p}")
    if not problems and mode == "boundary":
        from .boundary import check_design

        check_design(cfg, problems)
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)), source)
    return cfg


def _tracking(value: Any, problems: list[str]) -> tuple[str, ...]:
    """The trackers asked for: known names whose package is installed (checked now: a missing
    one would otherwise fail only once Ray has started)."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.append(f"tracking: `tracking is a list of tracker names` must hold, but got {value!r} "
                        f"(known: {', '.join(TRACKERS)})")
        return ()
    for name in value:
        if name not in TRACKERS:
            problems.append(f"tracking: `tracker in {tuple(TRACKERS)}` must hold, but got {name!r}")
        elif importlib.util.find_spec(TRACKERS[name][0]) is None:
            problems.append(f"tracking: {name!r} needs the {TRACKERS[name][0]} package, which is not installed: "
                            f"{TRACKERS[name][1]}")
    return tuple(dict.fromkeys(v for v in value if v in TRACKERS))


SEED_AXIS = "train.seed"  # a boundary search's noise: a cell's networks are its seeds


def _check_boundary(search: SearchSpec, axes: dict, problems: list[str]) -> None:
    from ..analysis.aggregate import parse_layer

    try:
        layer = parse_layer(search.layer)
        if layer == "each" or (isinstance(layer, int) and layer < 1) or (isinstance(layer, float) and not 0 < layer <= 1):
            raise ValueError
    except ValueError:
        problems.append(f"search.layer: `layer is an index >= 1, a fraction in (0, 1], 'last' or 'output'` must "
                        f"hold, but got {search.layer!r}")
    if not [k for k in axes if k != SEED_AXIS]:
        problems.append(f"axes: `a boundary search has an axis other than {SEED_AXIS}` must hold, but got {list(axes)}")


def _range_values(spec: dict, n: int) -> list:
    """`n` values spread over a range {low, high, log, type} (log: evenly in log), distinct for ints."""
    import numpy as np

    low, high = float(spec["low"]), float(spec["high"])
    values = np.geomspace(low, high, n) if spec.get("log") else np.linspace(low, high, n)
    if spec.get("type", "float") == "int":
        return sorted({int(round(v)) for v in values})
    return [float(f"{v:.6g}") for v in values]


def _axis_examples(spec: Any, where: str, problems: list[str]) -> list:
    """Values to validate an Optuna axis with: its choices, or its bounds."""
    if isinstance(spec, list) and spec:
        return spec
    if isinstance(spec, dict) and {"low", "high"} <= set(spec) and set(spec) <= {"low", "high", "log", "type"}:
        kind = spec.get("type", "float")
        for key in ("low", "high"):  # YAML reads 1e-3 (no dot) as a string, as run configs allow
            if isinstance(spec[key], str):
                try:
                    spec[key] = float(spec[key])
                except ValueError:
                    pass
        low, high = spec["low"], spec["high"]
        if kind not in ("float", "int") or not all(isinstance(v, (int, float)) for v in (low, high)) or low >= high:
            problems.append(f"{where}: `low < high, type in (float, int)` must hold, but got {spec!r}")
            return []
        if spec.get("log") and low <= 0:
            problems.append(f"{where}: `low > 0` must hold for a log axis, but got {spec!r}")
            return []
        return [int(low), int(high)] if kind == "int" else [float(low), float(high)]
    problems.append(f"{where}: a range is {{low, high, log, type}} (an optuna axis may also be a list of choices), "
                    f"but got {spec!r}")
    return []


def load_sweep(path: str, overrides: list[str] | None = None) -> SweepConfig:
    """Read and validate a sweep config file; `overrides` are `dotted.path=value` strings."""
    return parse_sweep(read_yaml(path, overrides), str(path))


SWEEP_FILE = "_SWEEP.json"  # in the sweep's folder: the config its latest driver ran, for readers without it


def stored_form(cfg: SweepConfig) -> dict:
    """The sweep config as plain data, as `SWEEP_FILE` and a boundary search's state hold it."""
    return {"name": cfg.name, "base": cfg.base, "axes": cfg.axes, "search": dataclasses.asdict(cfg.search),
            "pack_size": cfg.pack_size, "resources": dataclasses.asdict(cfg.resources)}  # packs depend on the GPU


def from_stored(root: str, data: dict) -> SweepConfig:
    """A sweep config from `stored_form` (nothing checked against this machine's files)."""
    return SweepConfig(data["name"], data["base"], data["axes"], SearchSpec(**data["search"]),
                       resources=ResourcesSpec(**data.get("resources", {})), storage=SweepStorage(root),
                       pack_size=data.get("pack_size", "auto"))


def write_stored(cfg: SweepConfig) -> None:
    """`SWEEP_FILE` beside the sweep's runs: what `status` and `serve` read to know the members
    not started yet without the YAML file."""
    from .. import records

    records.write_sweep_file(cfg.root, cfg.sweep_id, SWEEP_FILE, json.dumps(stored_form(cfg), indent=2, default=list).encode())


def read_stored(root: str, sweep_id: str) -> SweepConfig | None:
    from .. import records

    data = records.read_sweep_file(root, sweep_id, SWEEP_FILE)
    return from_stored(root, json.loads(data)) if data is not None else None


# ----------------------------------------------------------------------------- expansion


def grid_points(cfg: SweepConfig) -> list[dict]:
    """Every combination of the axes, as {dotted path: value}."""
    keys = list(cfg.axes)
    return [dict(zip(keys, values)) for values in itertools.product(*(cfg.axes[k] for k in keys))]


def members(cfg: SweepConfig) -> list[RunConfig]:
    """Every network of a grid sweep as a one-member run config, each config once, in grid order.

    Parsed once per grid (base and axes): a 1,350-config grid takes seconds to parse, and
    `status` and `serve` ask again and again."""
    # the axes in their order (it is the grid's, and the packs' ids follow it); mappings sorted
    key = json.dumps([cfg.base, list(cfg.axes.items())], sort_keys=True, default=str)
    if key not in _MEMBERS:
        found: dict[str, RunConfig] = {}
        for combo in grid_points(cfg):
            run = parse_config(_with(cfg.base, combo))
            for member in run.members:
                single = run.member_config(member)
                found.setdefault(single.config_hash(), single)
        while len(_MEMBERS) >= 8:
            _MEMBERS.pop(next(iter(_MEMBERS)))
        _MEMBERS[key] = list(found.values())
    return list(_MEMBERS[key])


_MEMBERS: dict[str, list[RunConfig]] = {}  # members' cache: grid (JSON) -> its one-member configs (frozen)


def expand(cfg: SweepConfig, done: Collection[str] = ()) -> list[RunConfig]:
    """The grid's members not in `done` (config hashes) as packs of at most `pack_size`.

    Members that differ only in member fields (lr, momentum, weight decay, seed) share a pack.
    The order is deterministic and a pack's id is the hash of its members, so the same missing
    members form the same packs (an interrupted pack resumes from its checkpoint).
    """
    return pack_members(cfg, [m for m in members(cfg) if m.config_hash() not in done])


def pack_members(cfg: SweepConfig, singles: list[RunConfig]) -> list[RunConfig]:
    """One-member run configs as packs of at most `pack_size` members that share a shape."""
    groups: dict[str, list[RunConfig]] = {}
    for single in singles:
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
    cap it at ~16 GB (a quarter of a GPU: the cluster config puts four packs on one). A factory
    network is built and run forward once on two samples: its multiply-adds and activations.
    """
    width = max(run.model.width, run.task.input_dim)
    work = run.train.batch_size * width**2 * (run.model.depth + 1)
    activations = width * (run.model.depth + 1)  # per sample, summed over the layers
    views = 2 if run.task.name == "ssl" else 1  # SimCLR trains on two views of each image
    if run.model.family == "factory":  # the user's network, whose depth and width say nothing: measured
        from ..data import make_task
        from ..models import factory_cost

        multiply_adds, activations = factory_cost(run.model, make_task(run.task))  # per view
        work = run.train.batch_size * views * multiply_adds
    elif run.model.family == "transformer":  # per token: 4 d^2 in attention's projections, 8 d^2 in the MLP
        tokens = 4 if run.task.name == "modular" else run.task.block
        work = run.train.batch_size * tokens * 12 * run.model.width**2 * run.model.depth
    elif run.model.family != "mlp":  # convolutions: 9 multiply-adds per channel pair and pixel
        images = run.task.data if run.task.name == "ssl" else run.task.name
        pixels = views * {"digits": 64, "mnist": 784, "fashion_mnist": 784}.get(images, 1024)
        channels = run.model.width * (16 if run.model.family == "resnet" else 1)
        work = run.train.batch_size * pixels * 9 * channels**2 * run.model.depth
    if not gpu:
        # convolutions packed under vmap run no faster than one at a time on a CPU (0.96x,
        # measured), but a pack saves each member a trial's start-up: pack them more freely
        per_core = 4e7 if run.model.family == "mlp" else 4e8
        return int(min(64, max(1, round(per_core / work))))
    probe_bytes = run.probe.n_samples * activations * 4 * 8
    return int(max(1, min(1024, round(4e10 / work), 16e9 // probe_bytes)))
