"""The measurements (SCIENCE.md): pure maths (`maths`), every metric of one linear map
(`layers`, column names in `columns`), capture from models (`capture`: the stacked MLP and any
`nn.Module`; `attention` for `nn.MultiheadAttention`), and phases and critical depth (`phases`).

Called, this package is the function `measure` (`phasemap.measure(model, x, y)`, as
`from phasemap import measure` gives it): see `capture.measure`.
"""

import importlib
import sys
import types

from .columns import METRIC_COLUMNS, NC_COLUMNS, PAH_PAIRS, RELATIONS
from .phases import critical_depth, label_phases

# The torch-backed modules load on first use (PEP 562): `phasemap.measure.phases` and the
# column names import without torch, for readers and the CLI.
_EXPORTS = {
    **dict.fromkeys(["describe_layers", "measure", "probe_stacked"], ".capture"),
    **dict.fromkeys(["NFA_EXACT", "NFA_PROJECTIONS", "NULL_SAMPLES", "Stationarity", "layer_metrics",
                     "output_directions", "output_gradient_grams"], ".layers"),
    **dict.fromkeys(["CUDA_LOCKSTEP_EIG_BATCH", "DEGENERATE", "PowerLaw", "alignment", "alignment_null",
                     "alignment_reason", "balance", "batched_eigvalsh", "degenerate", "descending_eigh",
                     "descending_eigvals", "effective_rank", "excess", "haar_rotations", "neural_collapse", "nfa",
                     "paired_values", "power_law", "power_law_fit", "second_moment", "trace_ratio"], ".maths"),
}


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CUDA_LOCKSTEP_EIG_BATCH", "DEGENERATE", "METRIC_COLUMNS", "NC_COLUMNS", "NFA_EXACT", "NFA_PROJECTIONS",
    "NULL_SAMPLES", "PAH_PAIRS", "PowerLaw", "RELATIONS", "Stationarity", "alignment", "alignment_null",
    "alignment_reason", "balance", "batched_eigvalsh", "critical_depth", "degenerate", "describe_layers", "descending_eigh",
    "descending_eigvals", "effective_rank", "excess", "haar_rotations", "label_phases", "layer_metrics", "measure",
    "neural_collapse", "nfa", "output_directions", "output_gradient_grams", "paired_values", "power_law",
    "power_law_fit", "probe_stacked", "second_moment", "trace_ratio",
]


class _MeasurePackage(types.ModuleType):
    """`phasemap.measure` names both this package and the function that measures a model; the
    package is callable so that both readings work without importing torch up front."""

    def __call__(self, *args, **kwargs):
        from .capture import measure

        return measure(*args, **kwargs)


sys.modules[__name__].__class__ = _MeasurePackage
