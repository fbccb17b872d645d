"""Figures drawn from aggregate tables (`plots`) and the report that writes them all (`report`)."""

# every figure kind, in the report's order (here, so the CLI names them without loading matplotlib)
KINDS = ("phase-diagram", "critical-depth", "layers", "evolution", "spectra", "learning-phase")
