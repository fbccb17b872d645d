"""The measurements (SCIENCE.md): pure maths (`maths`), every metric of one linear map
(`layers`, column names in `columns`), capture from models (`capture`: the stacked MLP and any
`nn.Module`; `attention` for `nn.MultiheadAttention`), and phases and critical depth (`phases`).
"""

from .capture import describe_layers, measure, probe_stacked
from .columns import METRIC_COLUMNS, NC_COLUMNS, PAH_PAIRS, RELATIONS
from .layers import NFA_EXACT, NFA_PROJECTIONS, NULL_SAMPLES, Stationarity, layer_metrics, output_directions, output_gradient_grams
from .maths import (
    CUDA_LOCKSTEP_EIG_BATCH, DEGENERATE, PowerLaw, alignment, alignment_null, alignment_reason, balance,
    batched_eigvalsh, degenerate, descending_eigh, descending_eigvals, effective_rank, excess, haar_rotations,
    neural_collapse, nfa, paired_values, power_law, power_law_fit, second_moment, trace_ratio,
)
from .phases import critical_depth, label_phases

__all__ = [
    "CUDA_LOCKSTEP_EIG_BATCH", "DEGENERATE", "METRIC_COLUMNS", "NC_COLUMNS", "NFA_EXACT", "NFA_PROJECTIONS",
    "NULL_SAMPLES", "PAH_PAIRS", "PowerLaw", "RELATIONS", "Stationarity", "alignment", "alignment_null",
    "alignment_reason", "balance", "batched_eigvalsh", "critical_depth", "degenerate", "describe_layers", "descending_eigh",
    "descending_eigvals", "effective_rank", "excess", "haar_rotations", "label_phases", "layer_metrics", "measure",
    "neural_collapse", "nfa", "output_directions", "output_gradient_grams", "paired_values", "power_law",
    "power_law_fit", "probe_stacked", "second_moment", "trace_ratio",
]
