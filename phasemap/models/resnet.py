"""A CIFAR-style ResNet (the `resnet` family; He et al. 2016, section 4.2): one member.

depth = 6 n + 2 layers: a 3x3 stem convolution, three stages of n basic blocks (two 3x3
convolutions and a skip) with 16, 32, 64 channels times `width` (the width multiplier;
stride 2 at the start of the second and third stage, a 1x1 projection on the skip where the
shape changes), global average pooling and a linear classifier. ResNet-20: depth 20.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from .cnn import norm_layer
from .mlp import ACTIVATION_MODULES


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, norm: str, activation: str):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = norm_layer(norm, c_out)
        self.act1 = ACTIVATION_MODULES[activation]()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = norm_layer(norm, c_out)
        self.act2 = ACTIVATION_MODULES[activation]()
        self.skip = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.skip = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), norm_layer(norm, c_out))

    def forward(self, x):
        out = self.act1(self.norm1(self.conv1(x)))
        return self.act2(self.norm2(self.conv2(out)) + self.skip(x))


def resnet(in_shape: tuple[int, int, int], n_classes: int, depth: int, width: int, activation: str = "relu",
           norm: str = "batch") -> nn.Sequential:
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"`resnet depth = 6 n + 2 (8, 14, 20, 32, 44, 56, ...)` must hold, but got {depth}")
    n = (depth - 2) // 6
    c = 16 * width
    layers = [("conv", nn.Conv2d(in_shape[0], c, 3, padding=1, bias=False)), ("norm", norm_layer(norm, c)),
              ("act", ACTIVATION_MODULES[activation]())]
    c_in = c
    for stage, c_out in enumerate((c, 2 * c, 4 * c), start=1):
        for b in range(1, n + 1):
            stride = 2 if stage > 1 and b == 1 else 1
            layers.append((f"stage{stage}_block{b}", BasicBlock(c_in, c_out, stride, norm, activation)))
            c_in = c_out
    layers += [("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(c_in, n_classes))]
    return nn.Sequential(OrderedDict(layers))
