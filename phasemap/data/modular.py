"""Modular arithmetic (`task.name: modular`): a op b mod p as a sequence task.

Every pair (a, b) in [0, p)^2 (b != 0 for division) is one example, the sequence
`a op b =` with tokens 0..p-1 for numbers, p for the operation and p + 1 for `=`; the label is
c = a op b mod p, predicted at the last position. A fixed random `task.train_fraction` of the
pairs (seeded by `task.teacher_seed`) is the training set; the rest is held out for probes and
held-out accuracy (Power et al. 2022). The loss is the cross-entropy at the last position.
"""

from __future__ import annotations

import torch

from .classification import HeldOutTask, accuracy, cross_entropy


def modular_table(p: int, operation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(sequences (n, 4) long, labels (n,)) of every pair, in (a, b) order."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.flatten(), b.flatten()
    if operation == "div":
        keep = b != 0
        a, b = a[keep], b[keep]
        inverse = torch.tensor([pow(int(v), -1, p) for v in b])
        c = (a * inverse) % p
    else:
        c = {"add": a + b, "sub": a - b, "mul": a * b}[operation] % p
    seq = torch.stack([a, torch.full_like(a, p), b, torch.full_like(a, p + 1)], 1)
    return seq, c


class ModularTask(HeldOutTask):
    def __init__(self, spec, device: torch.device | str = "cpu"):
        self.spec = spec
        self.device = torch.device(device)
        seq, labels = modular_table(spec.modulus, spec.operation)
        order = torch.randperm(len(seq), generator=torch.Generator().manual_seed(spec.teacher_seed))
        n_train = max(1, min(len(seq) - 1, round(spec.train_fraction * len(seq))))
        train, test = order[:n_train], order[n_train:]
        self.x_train, self.y_train = seq[train].to(self.device), labels[train].to(self.device)
        self.x_test, self.y_test = seq[test].to(self.device), labels[test].to(self.device)
        self.output_dim = spec.modulus + 2  # the vocabulary: numbers, the operation, `=`
        self.input_shape = (4,)

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the last position's logits; out (..., N, T, vocab) -> (..., N)."""
        return cross_entropy(out[..., -1, :], y)

    def accuracy(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return accuracy(out[..., -1, :], y)
