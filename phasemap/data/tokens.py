"""Token streams from local files (`task.name: tokens`), read as contiguous blocks.

- a nanoGPT-style `.bin`: the token ids as little-endian uint16, with `task.vocab_size` (ids
  must be below it);
- any other file: plain UTF-8 text read character by character; the vocabulary is the file's
  sorted distinct characters;
- a folder: its `*.py` and `*.txt` files (not its subfolders), sorted by name, as one text;
  `python-stdlib` is the running interpreter's standard library folder (its own source: real
  text on every machine, read at run time; another Python version is another text).

The last 10% of the stream is held out for probes and held-out accuracy. A sample is
`task.block` + 1 consecutive tokens at a random offset: the first `block` are the input, the
last `block` the targets (the next token at every position). The training loss is the mean
next-token cross-entropy; every (sequence, position) pair is a sample for the measurements, and
its loss is that token's.
"""

from __future__ import annotations

import os
import sysconfig

import numpy as np
import torch

from ..config import STDLIB_TEXT, ConfigError
from .classification import accuracy, cross_entropy

HELD_OUT = 0.1  # the last tenth of the stream


def read_tokens(path: str, vocab_size: int = 0) -> tuple[torch.Tensor, int]:
    """(token ids (n,) int64, vocabulary size) of a `.bin` (uint16, `vocab_size`) or a text file."""
    if path == STDLIB_TEXT:
        path = sysconfig.get_paths()["stdlib"]
    if not os.path.isfile(path) and not os.path.isdir(path):
        raise ConfigError([f"task.path: `a token file or a folder of text files exists` must hold, but got {path!r} "
                           f"(no such file or folder)"])
    if path.endswith(".bin"):
        if vocab_size < 1:
            raise ConfigError([f"task.vocab_size: `the vocabulary size of {path!r}` must be given (> 0), but got "
                               f"{vocab_size}"])
        raw = np.fromfile(path, dtype="<u2")
        if raw.size and int(raw.max()) >= vocab_size:
            raise ConfigError([f"task.vocab_size: `token ids < vocab_size` must hold, but got id {int(raw.max())} "
                               f">= {vocab_size} in {path!r}"])
        return torch.from_numpy(raw.astype(np.int64)), vocab_size
    text = read_text(path)
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    return torch.tensor([index[c] for c in text], dtype=torch.int64), len(chars)


def read_text(path: str) -> str:
    """A UTF-8 text file, or a folder's *.py and *.txt files (sorted by name) joined by newlines."""
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(path, n) for n in os.listdir(path) if n.endswith((".py", ".txt"))
        and os.path.isfile(os.path.join(path, n)))
    if not files:
        raise ConfigError([f"task.path: `a folder holding *.py or *.txt files` must hold, but got {path!r} (none)"])
    parts = []
    for name in files:
        try:
            with open(name, encoding="utf-8") as f:
                parts.append(f.read())
        except UnicodeDecodeError as e:
            raise ConfigError([f"task.path: `UTF-8 text (or a .bin of uint16 tokens)` must hold, but got {name!r} "
                               f"({e})"]) from e
    return "\n".join(parts)


def check_block(spec, n_tokens: int) -> int:
    """The index where the held-out tail starts; a `ConfigError` unless a block (and its next
    token) fits in both the training head and the held-out tail."""
    T, split = spec.block, int(n_tokens * (1 - HELD_OUT))
    if split < T + 2 or n_tokens - split < T + 2:
        raise ConfigError([f"task.block: `a block fits in both splits` must hold, but got block={T} for "
                           f"{n_tokens} tokens in {spec.path!r}"])
    return split


class TokenTask:
    classification = True  # next-token accuracy is recorded beside the loss

    def __init__(self, spec, device: torch.device | str = "cpu"):
        self.spec = spec
        self.device = torch.device(device)
        tokens, vocab = read_tokens(spec.path, spec.vocab_size)
        split = check_block(spec, len(tokens))
        self.train, self.test = tokens[:split].to(self.device), tokens[split:].to(self.device)
        self.output_dim = vocab
        self.input_shape = (spec.block,)

    def _blocks(self, stream: torch.Tensor, starts: torch.Tensor):
        T = self.spec.block
        idx = starts[:, None] + torch.arange(T + 1, device=self.device)
        chunk = stream[idx]
        return chunk[:, :-1], chunk[:, 1:]

    def sample(self, n: int, generator: torch.Generator):
        starts = torch.randint(len(self.train) - self.spec.block - 1, (n,), generator=generator, device=self.device)
        return self._blocks(self.train, starts)

    def probe_set(self, n: int, generator: torch.Generator | None = None):
        """`n` evenly spaced blocks of the held-out stream (the same every probe)."""
        last = len(self.test) - self.spec.block - 1
        return self._blocks(self.test, torch.linspace(0, last, n, device=self.device).long())

    def train_set(self, n: int):
        last = len(self.train) - self.spec.block - 1
        return self._blocks(self.train, torch.linspace(0, last, n, device=self.device).long())

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Next-token cross-entropy per token: out (..., N, T, vocab), y (N, T) -> (..., N, T).

        Per token, not per block: a token is a sample, so its gradient is its own loss's (the
        training loss is their mean, and the balance condition's E[g_b h_a^T] is over tokens)."""
        return cross_entropy(out, y)

    def accuracy(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return accuracy(out, y)
