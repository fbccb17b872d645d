"""Reading and summarising records: `query` (load, sql: one network per config) and
`aggregate` (phase grids, critical-depth maps, curves as plain tables)."""

from .query import DatasetError, load, sql

__all__ = ["DatasetError", "load", "sql"]
