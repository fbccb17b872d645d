"""The stacked MLP: K networks of one shape trained as one computation.

Layer l (1-based) computes h_b = W_l h_a + b_l with W_l of shape (K, d_out, d_in); every
hidden layer is followed by the activation, the last linear layer is the output. The
parameters are stored transposed, (K, d_in, d_out), so that the batched matmul of a
row-major batch takes them as they are and their gradients come out contiguous (stored the
other way, every step paid a transposing copy of each weight gradient); `weights` gives
the (K, d_out, d_in) views.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

ACTIVATION_FNS = {
    "relu": torch.relu,
    "tanh": torch.tanh,
    "gelu": nn.functional.gelu,
    "linear": lambda h: h,
}
# in place, for training: each keeps its output for backward, and the pre-activation it
# overwrites is needed by nothing else (the matmul's backward needs its inputs only)
ACTIVATION_FNS_INPLACE = {"relu": torch.relu_, "tanh": torch.tanh_}  # others: ACTIVATION_FNS
ACTIVATION_MODULES = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "linear": nn.Identity}


def mlp_dims(input_dim: int, width: int, depth: int, output_dim: int) -> list[int]:
    """[input, width x depth, output]: depth hidden layers, depth + 1 linear layers."""
    return [input_dim] + [width] * depth + [output_dim]


class StackedMLP(nn.Module):
    """K MLPs with identical shapes; member k is initialised from `seeds[k]` alone."""

    def __init__(self, dims: Sequence[int], activation: str, seeds: Sequence[int], bias: bool = True):
        super().__init__()
        self.dims = list(dims)
        self.activation = activation
        self.act = ACTIVATION_FNS[activation]
        self.K = len(seeds)
        # He init for relu (gain sqrt 2), unit gain otherwise; biases start at zero.
        gain = math.sqrt(2.0) if activation == "relu" else 1.0
        weights = [[] for _ in dims[1:]]
        for seed in seeds:  # each member draws from its own generator: packing does not matter
            g = torch.Generator().manual_seed(int(seed))
            for l, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
                weights[l].append(torch.randn(d_out, d_in, generator=g) * gain / math.sqrt(d_in))
        self.weights_t = nn.ParameterList(nn.Parameter(torch.stack(w).transpose(1, 2).contiguous()) for w in weights)
        self.biases = nn.ParameterList(
            nn.Parameter(torch.zeros(self.K, d_out)) for d_out in dims[1:]
        ) if bias else None

    @property
    def n_layers(self) -> int:
        return len(self.weights_t)

    @property
    def weights(self) -> list[torch.Tensor]:
        """W_l (K, d_out, d_in) per layer: views of the stored parameters, gradients flow."""
        return [w.transpose(1, 2) for w in self.weights_t]

    def forward(self, x: torch.Tensor, keep: bool = False, members: slice = slice(None)):
        """x: (B, d_in) shared by all members, or (K, B, d_in).

        Returns the output (K, B, d_out) and, with keep=True, each layer's input h_a and
        pre-activation output h_b. `members` runs only those members (K is then their count).
        """
        weights_t = list(self.weights_t)
        biases = list(self.biases) if self.biases is not None else [None] * self.n_layers
        if members != slice(None):  # a sliced view costs a zero-filled gradient in backward
            weights_t = [W_t[members] for W_t in weights_t]
            biases = [b if b is None else b[members] for b in biases]
        h = x.expand(weights_t[0].shape[0], *x.shape[-2:])  # a shared x is a view, not K copies
        h_as, h_bs = [], []
        for l, (W_t, b) in enumerate(zip(weights_t, biases)):
            # (K, B, d_out); the bias add fused into the batched matmul
            z = torch.bmm(h, W_t) if b is None else torch.baddbmm(b.unsqueeze(1), h, W_t)
            if keep:
                h_as.append(h)
                h_bs.append(z)
            if l < self.n_layers - 1:  # the pre-activation z is overwritten unless kept
                h = self.act(z) if keep else ACTIVATION_FNS_INPLACE.get(self.activation, self.act)(z)
            else:
                h = z
        return (h, h_as, h_bs) if keep else h

    def member(self, k: int) -> nn.Sequential:
        """Member k as an ordinary nn.Sequential with the same weights (a copy)."""
        layers: list[nn.Module] = []
        for l, W in enumerate(self.weights):
            lin = nn.Linear(W.shape[2], W.shape[1], bias=self.biases is not None)
            with torch.no_grad():
                lin.weight.copy_(W[k])
                if self.biases is not None:
                    lin.bias.copy_(self.biases[l][k])
            layers.append(lin)
            if l < self.n_layers - 1:
                layers.append(ACTIVATION_MODULES[self.activation]())
        return nn.Sequential(*layers).to(W.device)
