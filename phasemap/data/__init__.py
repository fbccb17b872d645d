"""Where samples come from: synthetic teachers and clusters (`synthetic`), real images from
local files or bundled with a package (`images`), modular arithmetic (`modular`), token
streams from local files (`tokens`).
`make_task` picks by `task.name`."""

import os

from ..config import IMAGE_TASKS, ConfigError
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


def check(spec) -> None:
    """Read the files a task needs, so a missing or malformed one is a `ConfigError` naming its
    path before anything starts (image data is loaded once; a token `.bin` is checked for its
    size and vocabulary, its ids when a trial reads it)."""
    if spec.name in IMAGE_TASKS:
        load_images(spec.name, spec.path, spec.held_out)
    elif spec.name == "tokens" and not spec.path.endswith(".bin"):
        read_tokens(spec.path)
    elif spec.name == "tokens":
        if spec.vocab_size < 1:
            raise ConfigError([f"task.vocab_size: `the vocabulary size of {spec.path!r}` must be given (> 0), "
                               f"but got {spec.vocab_size}"])
        if os.path.getsize(spec.path) % 2:
            raise ConfigError([f"task.path: `uint16 token ids (an even number of bytes)` must hold, but got "
                               f"{os.path.getsize(spec.path)} bytes in {spec.path!r}"])


__all__ = ["ImageTask", "ModularTask", "Task", "TokenTask", "check", "load_images", "make_task", "read_tokens"]
