"""A plain convolutional stack (the `cnn` family): one member, an ordinary `nn.Module`.

depth 3x3 convolutions of `width` channels (padding 1; the one in the middle of the stack has
stride 2), each followed by the normalisation (none, BatchNorm or GroupNorm) and the
activation; then a 2x2 average pool and the two fully connected layers the paper's res1 ends
with (4 * width -> width -> classes).
"""

from __future__ import annotations

import math
from collections import OrderedDict

from torch import nn

from .mlp import ACTIVATION_MODULES


def norm_layer(norm: str, channels: int) -> nn.Module:
    """none | batch (BatchNorm2d) | group (GroupNorm with gcd(channels, 8) groups)."""
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        return nn.GroupNorm(math.gcd(channels, 8), channels)
    return nn.Identity()


def cnn(in_shape: tuple[int, int, int], n_classes: int, depth: int, width: int, activation: str = "relu",
        norm: str = "none", bias: bool = True) -> nn.Sequential:
    channels, layers = in_shape[0], []
    for l in range(1, depth + 1):
        stride = 2 if depth > 1 and l == depth // 2 + 1 else 1
        layers += [(f"conv{l}", nn.Conv2d(channels, width, 3, stride=stride, padding=1, bias=bias)),
                   (f"norm{l}", norm_layer(norm, width)), (f"act{l}", ACTIVATION_MODULES[activation]())]
        channels = width
    layers += [("pool", nn.AdaptiveAvgPool2d(2)), ("flatten", nn.Flatten()),
               ("fc1", nn.Linear(4 * width, width, bias=bias)), ("act_fc1", ACTIVATION_MODULES[activation]()),
               ("fc2", nn.Linear(width, n_classes, bias=bias))]
    return nn.Sequential(OrderedDict(layers))
