"""phasemap: map where the Canonical Representation Hypothesis holds and where it breaks.

The public surface:
- `load_config`, `parse_config`, `RunConfig`, `ConfigError`: validated run configs;
- `train_pack`: train a pack of K stacked networks with probes, writing Parquet records;
- `measure`: the per-layer CRH/PAH table of any `torch.nn.Module`;
- `Recorder`: measure inside your own training loop, writing the same records as a sweep;
- `alignment`, `alignment_null`, `excess`: the alignment of two matrices, how high it is by
  chance for their spectra, and how far above chance it is (plain tensors or batches);
- `power_law`: the signed power law between two matrices' spectra, paired through eigenvectors;
- `label_phases`, `critical_depth`: phases and critical depth from alignment columns;
- `load`, `sql`, `SCHEMA`: the records dataset (pandas or DuckDB SQL) and its one schema;
- `phasemap.analysis.aggregate`, `phasemap.figures.plots`: tables (phase grids, critical-depth
  maps, curves) and their figures.
"""

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("phasemap")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

# Imported on first use (PEP 562), so that `import phasemap.records` or the CLI's `--help`,
# `query` and `plot` never pay for torch: name -> the module that defines it.
_EXPORTS = {
    "ConfigError": ".config", "RunConfig": ".config", "load_config": ".config", "parse_config": ".config",
    "alignment": ".measure", "alignment_null": ".measure", "critical_depth": ".measure.phases",
    "excess": ".measure", "label_phases": ".measure.phases", "power_law": ".measure",
    "load": ".analysis.query", "sql": ".analysis.query", "SCHEMA": ".records",
    "Recorder": ".train", "RunResult": ".train", "train_pack": ".train",
}


# `measure` names both a subpackage and its function; bound here, after the subpackage (which
# imports nothing up front) has loaded, it stays the function, as `from phasemap import measure`
# has always given it
from .measure import measure  # noqa: E402

SUBPACKAGES = ("analysis", "config", "data", "figures", "measure", "models", "records", "sweep", "train")


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value  # once
        return value
    if name in SUBPACKAGES:  # `import phasemap; phasemap.records.load(...)`, as before names were lazy
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = [
    "Recorder",
    "ConfigError",
    "RunConfig",
    "RunResult",
    "SCHEMA",
    "__version__",
    "alignment",
    "alignment_null",
    "excess",
    "critical_depth",
    "label_phases",
    "load_config",
    "measure",
    "parse_config",
    "power_law",
    "load",
    "sql",
    "train_pack",
]
