"""Where samples come from: synthetic teachers and clusters (`synthetic`)."""

from .synthetic import Task

__all__ = ["Task"]
