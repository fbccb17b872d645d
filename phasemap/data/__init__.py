"""Where samples come from: synthetic teachers and clusters (`synthetic`), real images from
local files or bundled with a package (`images`). `make_task` picks by `task.name`."""

from ..config import IMAGE_TASKS
from .images import ImageTask, load_images
from .synthetic import Task


def make_task(spec, device="cpu"):
    """The task of a `task` config section: an `ImageTask` for image data, else a `Task`."""
    return ImageTask(spec, device) if spec.name in IMAGE_TASKS else Task(spec, device)


__all__ = ["ImageTask", "Task", "load_images", "make_task"]
