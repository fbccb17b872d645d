"""The measurements (SCIENCE.md): pure maths (`maths`), every metric of one linear map
(`layers`, column names in `columns`), capture from models (`capture`: the stacked MLP and any
`nn.Module`; `attention` for `nn.MultiheadAttention`), and phases and critical depth (`phases`).
"""

import importlib

# Every name loads on first use (PEP 562): the package itself imports nothing, so that
# `import phasemap` (which binds `phasemap.measure` to the function below) stays light, and
# `phasemap.measure.phases` and the column names import without torch.
_EXPORTS = {
    **dict.fromkeys(["BASELINE_COLUMNS", "METRIC_COLUMNS", "NC_COLUMNS", "PAH_PAIRS", "RELATIONS"], ".columns"),
    **dict.fromkeys(["critical_depth", "label_phases"], ".phases"),
    **dict.fromkeys(["describe_layers", "probe_stacked"], ".capture"),
    **dict.fromkeys(["NFA_EXACT", "NFA_PROJECTIONS", "NULL_SAMPLES", "Stationarity", "layer_metrics",
                     "output_directions", "output_gradient_grams"], ".layers"),
    **dict.fromkeys(["CUDA_LOCKSTEP_EIG_BATCH", "DEGENERATE", "PowerLaw", "alignment", "alignment_null",
                     "alignment_reason", "balance", "batched_eigvalsh", "degenerate", "descending_eigh",
                     "descending_eigvals", "effective_rank", "excess", "haar_rotations", "neural_collapse", "nfa",
                     "paired_values", "power_law", "power_law_fit", "second_moment", "trace_ratio"], ".maths"),
}


def measure(model, x, y, loss_fn, *args, **options):
    """CRH/PAH metrics of every linear map of any `torch.nn.Module`, one row per layer.

    `loss_fn(output, y)` returns one loss per sample. Keyword options (covariance, pah_floor,
    null_samples, train_mode, weight_decay, labels, stationarity, max_samples, per_head, ...)
    are those of `phasemap.measure.capture.measure`, which documents each; this name loads it
    (and torch) on first call, so that `import phasemap` stays light.
    """
    from .capture import measure as measure_model

    return measure_model(model, x, y, loss_fn, *args, **options)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BASELINE_COLUMNS", "CUDA_LOCKSTEP_EIG_BATCH", "DEGENERATE", "METRIC_COLUMNS", "NC_COLUMNS", "NFA_EXACT", "NFA_PROJECTIONS",
    "NULL_SAMPLES", "PAH_PAIRS", "PowerLaw", "RELATIONS", "Stationarity", "alignment", "alignment_null",
    "alignment_reason", "balance", "batched_eigvalsh", "critical_depth", "degenerate", "describe_layers", "descending_eigh",
    "descending_eigvals", "effective_rank", "excess", "haar_rotations", "label_phases", "layer_metrics", "measure",
    "neural_collapse", "nfa", "output_directions", "output_gradient_grams", "paired_values", "power_law",
    "power_law_fit", "probe_stacked", "second_moment", "trace_ratio",
]
