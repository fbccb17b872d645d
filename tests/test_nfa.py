"""The neural feature ansatz (NFA) columns against values known by construction."""

import pytest
import torch
from torch import nn

from phasemap.models import StackedMLP
from phasemap.measure import NFA_EXACT, NFA_PROJECTIONS, measure, nfa, output_directions, probe_stacked
from phasemap.config import TaskSpec
from phasemap.data import Task


def _orthogonal(d, seed):
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed)))
    return q


def test_nfa_is_one_where_w_t_w_equals_the_agop_and_lower_where_it_does_not():
    # f(x) = V W x with V orthogonal: d f / d x = V W, AGOP = W^T V^T V W = W^T W
    torch.manual_seed(0)
    first, second = nn.Linear(6, 5, bias=False), nn.Linear(5, 5, bias=False)
    with torch.no_grad():
        second.weight.copy_(_orthogonal(5, 1))
    net = nn.Sequential(first, second)
    x, y = torch.randn(300, 6), torch.randn(300, 5)
    per_sample = lambda out, y: 0.5 * ((out - y) ** 2).sum(-1)  # noqa: E731
    table = measure(net, x, y, per_sample)
    assert table["nfa"].tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    assert table["nfa_cos"].tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    # a non-orthogonal V breaks it for the first layer: AGOP = W^T V^T V W
    with torch.no_grad():
        second.weight.copy_(torch.diag(torch.tensor([4.0, 1.0, 0.3, 0.1, 0.01])) @ _orthogonal(5, 2))
    broken = measure(net, x, y, per_sample)
    assert broken["nfa"].iloc[0] < 0.9 and broken["nfa"].iloc[1] == pytest.approx(1.0, abs=1e-6)
    V, W = second.weight.detach().double(), first.weight.detach().double()
    pearson, cosine = nfa(W, W.T @ V.T @ V @ W)
    assert broken["nfa"].iloc[0] == pytest.approx(pearson.item(), abs=1e-6)
    assert broken["nfa_cos"].iloc[0] == pytest.approx(cosine.item(), abs=1e-6)


def test_the_stacked_probe_gives_the_nfa_of_measure():
    # a pack of tanh networks: the same columns through probe_stacked as through measure
    model = StackedMLP([4, 6, 6, 3], "tanh", seeds=[0, 1])
    task = Task(TaskSpec(name="fc2", input_dim=4, output_dim=3))
    x, y = task.sample(200, torch.Generator().manual_seed(0))
    _, layers = probe_stacked(model, task, x, y, "centered", 1e-4)
    for k in range(2):
        table = measure(model.member(k), x, y, lambda out, t: task.loss(out.unsqueeze(0), t)[0])
        for layer, (metrics, _) in enumerate(layers):
            assert metrics["nfa"][k].item() == pytest.approx(table["nfa"].iloc[layer], abs=1e-5)
            assert metrics["nfa_cos"][k].item() == pytest.approx(table["nfa_cos"].iloc[layer], abs=1e-5)
    assert all(m["nfa"][0].item() == pytest.approx(1.0) for m, _ in layers[-1:])  # the output layer: W^T I W


def test_projected_agop_is_unbiased():
    # beyond NFA_EXACT outputs: Gaussian directions with E[sum_p u_p u_p^T] = I
    C = NFA_EXACT + 4
    assert len(list(output_directions(torch.Size([3, C]), C))) == NFA_PROJECTIONS
    assert len(list(output_directions(torch.Size([3, 5]), 5))) == 5  # exact: one per output
    total = torch.zeros(C, C)
    seeds = 400
    for seed in range(seeds):
        for u in output_directions(torch.Size([1, C]), C, seed=seed):
            total += u[0, :, None] * u[0, None, :]
    assert torch.allclose(total / seeds, torch.eye(C), atol=0.08)


def test_many_outputs_give_an_estimate_close_to_the_exact_agop():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 40))
    x, y = torch.randn(400, 5), torch.randn(400, 40)
    per_sample = lambda out, y: 0.5 * ((out - y) ** 2).sum(-1)  # noqa: E731
    table = measure(net, x, y, per_sample)  # 40 outputs: projections
    # the exact AGOP of the first layer's input, output by output
    x.requires_grad_(True)
    out = net(x)
    agop = sum(torch.autograd.grad(out[:, c].sum(), x, retain_graph=True)[0].T.double()
               @ torch.autograd.grad(out[:, c].sum(), x, retain_graph=True)[0].double() for c in range(40)) / 400
    exact, exact_cos = nfa(net[0].weight.detach(), agop)
    assert table["nfa"].iloc[0] == pytest.approx(exact.item(), abs=0.15)
    assert table["nfa_cos"].iloc[0] == pytest.approx(exact_cos.item(), abs=0.05)


def test_stationarity_is_the_relative_change_since_the_previous_probe():
    from phasemap.measure import Stationarity, layer_metrics, second_moment

    g = torch.Generator().manual_seed(0)
    h_a, W = torch.randn(1, 300, 4, generator=g, dtype=torch.float64), torch.randn(1, 3, 4, generator=g, dtype=torch.float64)
    g_b = torch.randn(1, 300, 3, generator=g, dtype=torch.float64)
    tracker = Stationarity()
    first, _ = layer_metrics(h_a, h_a @ W.transpose(1, 2), g_b, W, stationarity=tracker, key="fc")
    assert all(first[c].isnan().all() for c in ("stat_h_a", "stat_g_a", "stat_h_b", "stat_g_b"))  # nothing before
    # the same samples scaled: centred covariances of unit rows do not change
    again, _ = layer_metrics(3 * h_a, 3 * h_a @ W.transpose(1, 2), g_b, W, stationarity=tracker, key="fc")
    assert again["stat_h_a"].item() == pytest.approx(0.0, abs=1e-6) and again["stat_g_b"].item() == pytest.approx(0.0, abs=1e-6)
    # new inputs: |H_t - H_t'| / |H_t| of the two covariances
    h_new = h_a * torch.tensor([1.0, 2.0, 0.5, 1.0], dtype=torch.float64)
    moved, _ = layer_metrics(h_new, h_new @ W.transpose(1, 2), g_b, W, stationarity=tracker, key="fc")
    H0, H1 = second_moment(h_a)[0], second_moment(h_new)[0]
    assert moved["stat_h_a"].item() == pytest.approx(((H1 - H0).norm() / H1.norm()).item(), rel=1e-5)
    assert moved["stat_g_b"].item() == pytest.approx(0.0, abs=1e-6)  # g_b did not change
    other, _ = layer_metrics(h_new, h_new @ W.transpose(1, 2), g_b, W, stationarity=tracker, key="other layer")
    assert other["stat_h_a"].isnan().all()  # kept per layer
