"""The records: one schema, atomic writes under a storage root (folder or object store), run
folders and their markers, compaction (`store`), and one trainer per run (`leases`).

`from phasemap import records` gives the store's functions (`records.compact(...)`).
"""

from .store import (
    ATTEMPT, COMPACTED, COMPLETE, CONFIG_COLUMNS, READABLE_VERSIONS, SCHEMA, SCHEMA_VERSION, SORTED_BEFORE_V3, SPECTRA,
    SPECTRA_SCHEMA, V1_DEFAULTS, check_writable, clear_run, compact, complete_members, config_columns, config_value,
    delete_file, filesystem, is_complete, mark_complete, mount, read_file, read_run, read_spectra, read_sweep_file, remove_files,
    resolve_root, run_dir, run_of, sweep_files, temp_files, to_table, write_file, write_part, write_spectra,
    write_sweep_file,
)

__all__ = [
    "ATTEMPT", "COMPACTED", "COMPLETE", "CONFIG_COLUMNS", "READABLE_VERSIONS", "SCHEMA", "SCHEMA_VERSION", "SORTED_BEFORE_V3",
    "SPECTRA", "SPECTRA_SCHEMA", "V1_DEFAULTS", "check_writable", "clear_run", "compact", "complete_members",
    "config_columns", "config_value", "delete_file", "filesystem", "is_complete", "mark_complete", "mount",
    "read_file", "read_run", "read_spectra", "read_sweep_file", "remove_files", "resolve_root", "run_dir", "run_of", "sweep_files",
    "temp_files", "to_table", "write_file", "write_part", "write_spectra", "write_sweep_file",
]
