"""SGD (momentum), Adam and AdamW over stacked parameters.

Every parameter has a leading member dimension K; learning rate, momentum and weight decay
are tensors of shape (K,), one value per member. The arithmetic per member is exactly that
of torch.optim's SGD / Adam / AdamW, so a member trained in a pack follows the same path as
when trained alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch


def _per_member(values: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *([1] * (p.dim() - 1)))  # (K, 1, ...) broadcasts against p


class StackedOptimizer:
    """Base: holds the parameters and the per-member hyperparameters."""

    def __init__(self, params: Iterable[torch.Tensor], lr: Sequence[float], weight_decay: Sequence[float]):
        self.params = list(params)
        device = self.params[0].device
        self.lr = torch.tensor(lr, dtype=torch.float32, device=device)  # (K,)
        self.weight_decay = torch.tensor(weight_decay, dtype=torch.float32, device=device)
        self.t = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def state(self) -> dict:
        """Everything needed to continue exactly where this optimizer stands."""
        return {"t": self.t, "lr": self.lr, "buffers": self._buffers()}

    def load_state(self, state: dict) -> None:
        self.t = state["t"]
        self.lr = state["lr"].to(self.lr.device)
        for mine, saved in zip(self._buffers(), state["buffers"]):
            mine.copy_(saved)

    def _buffers(self) -> list[torch.Tensor]:
        return []

    def freeze(self, members: torch.Tensor) -> None:
        """Stop updating members where `members` is true (for example after divergence)."""
        self.lr = torch.where(members, torch.zeros_like(self.lr), self.lr)


class SGD(StackedOptimizer):
    def __init__(self, params, lr, weight_decay, momentum):
        super().__init__(params, lr, weight_decay)
        self.momentum = torch.tensor(momentum, dtype=torch.float32, device=self.lr.device)
        self.buffers = [torch.zeros_like(p) for p in self.params]

    def _buffers(self):
        return self.buffers

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        views = {}  # per-member values shaped for each parameter rank, made once per step
        for p, buf in zip(self.params, self.buffers):
            if p.dim() not in views:
                views[p.dim()] = [_per_member(v, p) for v in (self.weight_decay, -self.lr, self.momentum)]
            wd, neg_lr, mom = views[p.dim()]
            d_p = torch.addcmul(p.grad, wd, p)  # grad + wd * p
            if self.t == 1:  # torch.optim.SGD: the first step copies d_p into the buffer
                buf.copy_(d_p)
            else:
                buf.mul_(mom).add_(d_p)
            p.addcmul_(neg_lr, buf)


class Adam(StackedOptimizer):
    """Adam with L2 weight decay (decoupled=False) or AdamW (decoupled=True)."""

    def __init__(self, params, lr, weight_decay, betas=(0.9, 0.999), eps=1e-8, decoupled=False):
        super().__init__(params, lr, weight_decay)
        self.betas, self.eps, self.decoupled = betas, eps, decoupled
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    def _buffers(self):
        return self.m + self.v

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1**self.t, 1 - b2**self.t
        views = {}  # per-member values shaped for each parameter rank, made once per step
        for p, m, v in zip(self.params, self.m, self.v):
            if p.dim() not in views:
                views[p.dim()] = [_per_member(t, p) for t in (self.weight_decay, 1 - self.lr * self.weight_decay,
                                                               -self.lr / c1)]
            wd, shrink, neg_step = views[p.dim()]
            if self.decoupled:
                p.mul_(shrink)
                grad = p.grad
            else:
                grad = torch.addcmul(p.grad, wd, p)
            m.lerp_(grad, 1 - b1)
            v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
            denom = (v / c2).sqrt_().add_(self.eps)
            p.addcmul_(neg_step, m.div(denom))


def make_optimizer(name: str, params, lr, weight_decay, momentum, betas, eps) -> StackedOptimizer:
    if name == "sgd":
        return SGD(params, lr, weight_decay, momentum)
    return Adam(params, lr, weight_decay, betas, eps, decoupled=(name == "adamw"))
