"""Where samples come from: synthetic teachers and clusters (`synthetic`), real images from
local files or bundled with a package (`images`), modular arithmetic (`modular`), token
streams from local files (`tokens`).
`make_task` picks by `task.name`."""

from ..config import IMAGE_TASKS
from .images import ImageTask, load_images
from .modular import ModularTask
from .synthetic import Task
from .tokens import TokenTask, read_tokens


def make_task(spec, device="cpu"):
    """The task of a `task` config section: `ImageTask`, `ModularTask` or a synthetic `Task`."""
    if spec.name in IMAGE_TASKS:
        return ImageTask(spec, device)
    if spec.name == "modular":
        return ModularTask(spec, device)
    if spec.name == "tokens":
        return TokenTask(spec, device)
    return Task(spec, device)


__all__ = ["ImageTask", "ModularTask", "Task", "TokenTask", "load_images", "make_task", "read_tokens"]
