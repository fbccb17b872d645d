"""Where samples come from: synthetic teachers and clusters (`synthetic`), real images from
local files or bundled with a package (`images`), modular arithmetic (`modular`), token
streams from local files (`tokens`).
`make_task` picks by `task.name`."""

import dataclasses
import os

from ..config import IMAGE_TASKS, ConfigError
from .images import ImageTask, check_classes, load_images
from .modular import ModularTask
from .ssl import SSLTask
from .synthetic import Task
from .tokens import TokenTask, check_block, read_tokens


def make_task(spec, device="cpu"):
    """The task of a `task` config section: `ImageTask`, `SSLTask`, `ModularTask`, `TokenTask` or a
    synthetic `Task`."""
    if spec.name == "ssl":
        return SSLTask(spec, device)
    if spec.name in IMAGE_TASKS:
        return ImageTask(spec, device)
    if spec.name == "modular":
        return ModularTask(spec, device)
    if spec.name == "tokens":
        return TokenTask(spec, device)
    return Task(spec, device)


def check(spec) -> None:
    """Read the files a task needs, so a missing or malformed one is a `ConfigError` naming its
    path (or the field it does not fit: `task.n_classes`, `task.block`) before anything starts
    (image data is loaded once; a token `.bin` is checked for its size, vocabulary and block, its
    ids when a trial reads it)."""
    if spec.name in IMAGE_TASKS or spec.name == "ssl":
        images = dataclasses.replace(spec, name=spec.data) if spec.name == "ssl" else spec
        check_classes(images, load_images(images.name, images.path, images.held_out))
    elif spec.name == "tokens" and not spec.path.endswith(".bin"):
        check_block(spec, len(read_tokens(spec.path)[0]))
    elif spec.name == "tokens":
        if not os.path.isfile(spec.path):
            read_tokens(spec.path)  # its error names the path
        if spec.vocab_size < 1:
            raise ConfigError([f"task.vocab_size: `the vocabulary size of {spec.path!r}` must be given (> 0), "
                               f"but got {spec.vocab_size}"])
        size = os.path.getsize(spec.path)
        if size % 2:
            raise ConfigError([f"task.path: `uint16 token ids (an even number of bytes)` must hold, but got "
                               f"{size} bytes in {spec.path!r}"])
        check_block(spec, size // 2)


__all__ = ["ImageTask", "ModularTask", "SSLTask", "Task", "TokenTask", "check", "load_images", "make_task", "read_tokens"]
