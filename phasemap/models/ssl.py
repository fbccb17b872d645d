"""SimCLR's network (Chen et al. 2020): a backbone whose output is the embedding, and a projection
head on it whose output InfoNCE compares. One member, an ordinary `nn.Module`.

- `cnn`: the conv stack, pooled and flattened (4 x width), is the backbone; its two fully
  connected layers (4 width -> width -> projection_dim) are the head.
- `resnet`: everything up to the pooled features (64 x width) is the backbone; the head is
  SimCLR's, Linear(d, d), the activation, Linear(d, projection_dim).
- `factory`: your module is the backbone (images -> (N, d) embeddings); the head is SimCLR's
  on its d, found by one forward pass of two zero images.

`forward(x)` is the projection; `forward(x, embed=True)` the embedding (the linear probe's).
Every linear and convolutional layer of both is measured, the head's included.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .cnn import cnn
from .mlp import ACTIVATION_MODULES
from .resnet import resnet


class SimCLR(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor, embed: bool = False) -> torch.Tensor:
        z = self.backbone(x)
        return z if embed else self.head(z)


def projection_head(d: int, projection_dim: int, activation: str) -> nn.Sequential:
    return nn.Sequential(OrderedDict([("fc1", nn.Linear(d, d)), ("act", ACTIVATION_MODULES[activation]()),
                                      ("fc2", nn.Linear(d, projection_dim))]))


def simclr(spec, input_shape: tuple[int, ...], projection_dim: int, factory=None) -> SimCLR:
    """One member for the `model` config section `spec` (family cnn, resnet or factory)."""
    if spec.family == "cnn":
        parts = list(cnn(input_shape, projection_dim, spec.depth, spec.width, spec.activation, spec.norm,
                         spec.bias).named_children())
        return SimCLR(nn.Sequential(OrderedDict(parts[:-3])), nn.Sequential(OrderedDict(parts[-3:])))
    if spec.family == "resnet":
        net = resnet(input_shape, projection_dim, spec.depth, spec.width, spec.activation, spec.norm)
        d = net.fc.in_features
        backbone = nn.Sequential(OrderedDict((n, m) for n, m in net.named_children() if n != "fc"))
        return SimCLR(backbone, projection_head(d, projection_dim, spec.activation))
    if spec.family == "factory":
        backbone = factory(**spec.kwargs)
        was = backbone.training
        backbone.eval()
        with torch.no_grad():
            out = backbone(torch.zeros(2, *input_shape))
        backbone.train(was)
        if out.dim() != 2:
            raise ValueError(f"`a factory backbone for task ssl returns (N, d) embeddings` must hold, but its output "
                             f"has shape {tuple(out.shape)}")
        return SimCLR(backbone, projection_head(out.shape[1], projection_dim, spec.activation))
    raise ValueError(f"`model.family in cnn, resnet, factory for task ssl` must hold, but got {spec.family!r}")
