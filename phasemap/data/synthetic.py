"""Data: the paper's teachers (fc1, fc2) and a Gaussian-cluster classification task.

Every task is online: `sample(n, generator)` draws fresh samples on the task's device, so
training never reuses a batch and probes use samples the model has not trained on.
Teachers are drawn on the CPU from `teacher_seed`, so a task is the same on every device.
Nothing is downloaded.
"""

from __future__ import annotations

import math

import torch

from ..config import TaskSpec
from .classification import accuracy, cross_entropy


class Task:
    """A data distribution with a per-sample loss."""

    def __init__(self, spec: TaskSpec, device: torch.device | str = "cpu"):
        self.spec = spec
        self.device = torch.device(device)
        g = torch.Generator().manual_seed(spec.teacher_seed)
        d, m = spec.input_dim, spec.teacher_width
        if spec.name in ("fc1", "fc2"):
            out = 1 if spec.name == "fc1" else spec.output_dim
            # y(x) = sum_i u_i sin(w_i . x + b_i). The paper draws u, w, b Gaussian without
            # a scale; w ~ N(0, I/d) and u ~ N(0, 1/m) keep sin's argument and y of order 1.
            self.w = (torch.randn(m, d, generator=g) / math.sqrt(d)).to(self.device)
            self.b = torch.randn(m, generator=g).to(self.device)
            self.u = (torch.randn(m, out, generator=g) / math.sqrt(m)).to(self.device)
            self.output_dim = out
        else:
            self.centres = torch.randn(spec.n_classes, d, generator=g).to(self.device)
            self.output_dim = spec.n_classes
        if spec.name == "fc2":
            # x = ((1 - phi) Z + phi I) x', Z a fixed Bernoulli(0.8) 0/1 matrix; rescaled so
            # that E|x|^2 = d (the correlation structure is phi's, the scale stays fixed).
            z = torch.bernoulli(torch.full((d, d), 0.8), generator=g)
            mix = (1 - spec.phi) * z + spec.phi * torch.eye(d)
            mix = mix / torch.sqrt((mix**2).sum() / d)
            self.mix = mix.to(self.device)

    @property
    def classification(self) -> bool:
        return self.spec.name == "clusters"

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """`n` fresh samples: x (n, input_dim) and targets (n, out) or labels (n,)."""
        d = self.spec.input_dim
        x = torch.randn(n, d, generator=generator, device=self.device)
        if self.spec.name == "clusters":
            y = torch.randint(self.spec.n_classes, (n,), generator=generator, device=self.device)
            return self.centres[y] + self.spec.noise * x, y
        if self.spec.name == "fc2":
            x = x @ self.mix.T
        y = torch.sin(x @ self.w.T + self.b) @ self.u  # (n, out)
        return x, y

    @property
    def input_shape(self) -> tuple[int]:
        return (self.spec.input_dim,)

    def probe_set(self, n: int, generator: torch.Generator):
        """`n` fresh samples from the probe stream (never trained on)."""
        return self.sample(n, generator)

    def train_set(self, n: int):
        """None: training is online, so train accuracy is that of the current batch."""
        return None

    def accuracy(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """clusters: share of samples whose largest output is the label, per leading index."""
        return accuracy(out, y)

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample loss; `out` may carry extra leading dims (a pack's K)."""
        if self.classification:
            return cross_entropy(out, y)
        return 0.5 * ((out - y) ** 2).sum(-1)
