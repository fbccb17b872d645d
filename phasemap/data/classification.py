"""What classification tasks share: cross-entropy per sample, accuracy, and a task made of a
fixed training split (sampled with replacement) and a held-out split (for probes)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of logits `out` (..., C) against labels `y` broadcast to out's leading
    shape (a pack's K, then samples, tokens); one loss per label."""
    lead = out.shape[:-1]
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.expand(lead).reshape(-1), reduction="none").view(lead)


def accuracy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Share of labels `y` (N, ...) whose largest logit is the label, per leading index of out."""
    return (out.argmax(-1) == y).float().flatten(-y.dim()).mean(-1)


class HeldOutTask:
    """A classification task over fixed splits: subclasses set x_train, y_train, x_test,
    y_test (on `device`), output_dim and input_shape."""

    classification = True
    device: torch.device

    def sample(self, n: int, generator: torch.Generator):
        """`n` training examples drawn uniformly with replacement."""
        idx = torch.randint(len(self.x_train), (n,), generator=generator, device=self.device)
        return self.x_train[idx], self.y_train[idx]

    def probe_set(self, n: int, generator: torch.Generator | None = None):
        """The first `n` held-out examples (all if fewer): probes measure on unseen data."""
        return self.x_test[:n], self.y_test[:n]

    def train_set(self, n: int):
        """The first `n` training examples: the train accuracy beside each probe."""
        return self.x_train[:n], self.y_train[:n]

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return cross_entropy(out, y)

    def accuracy(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return accuracy(out, y)
