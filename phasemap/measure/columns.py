"""The metric column names, as `phasemap.records.columns` declares them with the schema (the
measurements fill these columns; the names need no torch)."""

from ..records.columns import BASELINE_COLUMNS, METRIC_COLUMNS, NC_COLUMNS, PAH_PAIRS, RELATIONS

__all__ = ["BASELINE_COLUMNS", "METRIC_COLUMNS", "NC_COLUMNS", "PAH_PAIRS", "RELATIONS"]
