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
- `aggregate`, `plots`: tables (phase grids, critical-depth maps, curves) and their figures.
"""

__version__ = "0.1.0"

from .config import ConfigError, RunConfig, load_config, parse_config
from .measure import alignment, alignment_null, critical_depth, excess, label_phases, measure, power_law
from .analysis import load, sql
from .records import SCHEMA
from .train import Recorder, RunResult, train_pack

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
