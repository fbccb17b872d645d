"""The networks phasemap trains, K members of one architecture at a time."""

from .mlp import ACTIVATION_FNS, ACTIVATION_MODULES, StackedMLP, mlp_dims

__all__ = ["ACTIVATION_FNS", "ACTIVATION_MODULES", "StackedMLP", "mlp_dims"]
