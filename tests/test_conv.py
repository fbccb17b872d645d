"""Convolutions measured as linear maps on patches (SCIENCE.md, Beyond fully connected layers)."""

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from phasemap.measure import METRIC_COLUMNS, layer_metrics, measure


def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(4, 5, 3, padding=1, padding_mode="reflect"), nn.Tanh(),
        nn.Flatten(), nn.Linear(5 * 4 * 4, 3),
    ).double()


def _patch_rows(x, conv):
    """Patches by explicit slicing, position by position (no unfold)."""
    pad = conv.padding[0]
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    xp = F.pad(x, (pad,) * 4, mode=mode)
    k, s = conv.kernel_size[0], conv.stride[0]
    H = (xp.shape[-1] - k) // s + 1
    return torch.stack([xp[n, :, i * s:i * s + k, j * s:j * s + k].reshape(-1)
                        for n in range(x.shape[0]) for i in range(H) for j in range(H)])


def test_conv_layers_equal_a_direct_computation_from_patches():
    net = _net()
    x, y = torch.randn(6, 3, 8, 8, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    loss = lambda out, t: 0.5 * ((out - t) ** 2).sum(-1)  # noqa: E731
    table = measure(net, x, y, loss)
    assert table["kind"].tolist() == ["conv", "conv", "linear"]
    assert table[["dim_in", "dim_out"]].values.tolist() == [[27, 4], [36, 5], [80, 3]]
    # the direct computation: inputs and outputs of each conv, and the gradient at its output
    ins, outs = [], []
    hooks = [m.register_forward_hook(lambda m, i, o: ins.append(i[0]) or outs.append(o)) for m in (net[0], net[2])]
    out = net(x)
    for h in hooks:
        h.remove()
    grads = torch.autograd.grad(loss(out, y).sum(), outs)
    for row, conv, h_in, h_out, g in zip(range(2), (net[0], net[2]), ins, outs, grads):
        h_a = _patch_rows(h_in.detach(), conv)
        W = conv.weight.detach().reshape(conv.out_channels, -1)
        h_b = h_out.detach().permute(0, 2, 3, 1).reshape(-1, conv.out_channels)
        assert torch.allclose(h_a @ W.T + conv.bias.detach(), h_b)  # the patches are the conv's
        g_b = -g.permute(0, 2, 3, 1).reshape(-1, conv.out_channels)
        direct, _ = layer_metrics(h_a[None], h_b[None], g_b[None], W[None])
        for c in METRIC_COLUMNS:
            if c.startswith(("nfa", "stat", "nc", "balance")):
                continue  # need the rest of the network, earlier probes or labels
            want, got = direct[c][0].item(), table[c].iloc[row]
            assert (math.isnan(want) and math.isnan(got)) or got == pytest.approx(want, rel=1e-5, abs=1e-8), c


def test_conv_samples_above_the_cap_are_a_fixed_subset_and_grouped_convs_are_named():
    net = _net()
    x, y = torch.randn(6, 3, 8, 8, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    loss = lambda out, t: 0.5 * ((out - t) ** 2).sum(-1)  # noqa: E731
    full = measure(net, x, y, loss)
    capped = measure(net, x, y, loss, max_samples=50)  # 6 images x 16 positions = 96 > 50
    again = measure(net, x, y, loss, max_samples=50)
    pd.testing.assert_frame_equal(capped, again)  # the same subset every time
    assert capped["rga_a"].iloc[0] != full["rga_a"].iloc[0] and capped["rga_a"].iloc[2] == full["rga_a"].iloc[2]
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(4 * 6 * 6, 1)).double()
    t = measure(grouped, torch.randn(5, 4, 8, 8, dtype=torch.float64), torch.randn(5, 1, dtype=torch.float64),
                lambda o, t: ((o - t) ** 2).sum(-1))
    assert t["nan_reason"].iloc[0] == "not measured: grouped convolution (groups=2)" and t["rga_a"].notna().iloc[1]
