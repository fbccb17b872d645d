"""The batched probe of a pack (`probe_packed`: one vmapped capture for all members) against
`measure` member by member: the same value in every metric column, the same NaN reasons,
and the member loop where vmap cannot run a module."""

import logging
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from phasemap.config import ProbeSpec
from phasemap.measure import METRIC_COLUMNS, Stationarity, measure
from phasemap.measure.capture import probe_packed
from phasemap.models import PackedModel
from phasemap.models.cnn import cnn
from phasemap.models.resnet import resnet
from phasemap.models.transformer import Transformer
from phasemap.train.probing import Prober

DECAYS = [1e-3, 0.0, 2e-3]


def _classification(o, t):
    return F.cross_entropy(o, t, reduction="none")


def _next_token(o, t):
    return F.cross_entropy(o.reshape(-1, o.shape[-1]), t.reshape(-1), reduction="none")


def _case(family: str):
    """(make, x, y, loss_fn, measure options) of a small float64 network of each family."""
    g = torch.Generator().manual_seed(0)
    if family == "cnn":  # 12 images x 64 positions: the first conv on a subset of its samples
        x = torch.randn(12, 3, 8, 8, generator=g, dtype=torch.float64)
        y = torch.randint(0, 4, (12,), generator=g)
        options = {"labels": y, "n_classes": 4, "max_samples": 500}
        return (lambda: cnn((3, 8, 8), 4, 2, 4, norm="batch")), x, y, _classification, options
    if family == "resnet":  # ResNet-8 (16 to 64 channels: matrices up to 576 x 576) on few images
        x = torch.randn(4, 3, 4, 4, generator=g, dtype=torch.float64)
        y = torch.tensor([0, 1, 2, 1])
        options = {"null_samples": 2}  # neural collapse: the cnn case
        return (lambda: resnet((3, 4, 4), 3, 8, 1, norm="batch")), x, y, _classification, options
    x = torch.randint(0, 7, (4, 6), generator=g)
    y = torch.randint(0, 7, (4, 6), generator=g)
    return (lambda: Transformer(7, 6, 1, 8, 2, tied=True)), x, y, _next_token, {"per_head": True}


def _pack(make, K=3):
    model = PackedModel(lambda: make().double(), seeds=list(range(1, K + 1)))
    with torch.no_grad():  # BatchNorm's running statistics away from (0, 1): eval mode must use them
        for name, b in model.functional()[2].items():
            if name.endswith("running_mean"):
                b.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(1))
            elif name.endswith("running_var"):
                b.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(2))
    return model


def _assert_rows_equal(values: dict, reasons: str, loss: float, table, row: int, probe_loss: float):
    for c in METRIC_COLUMNS:
        a, b = float(values[c]), float(table[c].iloc[row])
        assert math.isnan(a) == math.isnan(b), (table["name"].iloc[row], c, a, b)
        assert math.isnan(a) or a == pytest.approx(b, rel=0, abs=1e-6), (table["name"].iloc[row], c, a, b)
    assert reasons == table["nan_reason"].iloc[row]
    assert loss == pytest.approx(probe_loss, rel=1e-6)


@pytest.mark.parametrize("family,K,probes", [("cnn", 2, 2), ("resnet", 2, 1), ("transformer", 2, 2)])
def test_batched_probe_equals_measure_member_by_member(family, K, probes):
    make, x, y, loss_fn, options = _case(family)
    model = _pack(make, K)
    trackers = [Stationarity() for _ in range(K)]
    batched = Stationarity()
    for probe in range(probes):  # a second probe has stationarity values to compare
        base, params, buffers = model.functional()
        # the first probe under vmap (as on a GPU), the second member after member (as on a CPU)
        loss, rows = probe_packed(base, params, buffers, x, y, loss_fn, weight_decay=DECAYS[:K], stationarity=batched,
                                  vectorize=probe == 0, **options)
        for k in range(K):
            table = measure(model.member(k), x, y, loss_fn, weight_decay=DECAYS[k], stationarity=trackers[k], **options)
            assert len(table) == len(rows)
            for l, (metrics, reasons) in enumerate(rows):
                _assert_rows_equal({c: metrics[c][k] for c in METRIC_COLUMNS}, reasons[k], float(loss[k]), table, l,
                                   table["probe_loss"].iloc[0])
            if probe == 1:
                assert table["stat_h_b"].notna().all() and (table["stat_h_b"] > 0).any()
        assert not any(math.isnan(v) for v in loss.tolist())
        with torch.no_grad():  # a training step's worth of change before the next probe
            for p in model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(5), dtype=p.dtype))
    if family == "transformer":
        assert any(".head" in str(n) for n in table["name"])
        # the heads' outputs (out_proj's input) with their baselines, compared above column by column
        outs = table[table["kind"] == "attention.head_out"]
        assert outs["name"].tolist() == ["block1.attn.head1.out", "block1.attn.head2.out"]
        assert outs["rga_b"].notna().all() and outs["rga_a"].isna().all() and outs["heads_h_b"].notna().all()
        assert (outs["init_h_b"] < 1).all()  # the second probe: against the first probe's H_b
    if family == "cnn":  # the first convolution's 768 samples: a subset of 500, as measure takes
        assert table["rga_a"].iloc[:2].notna().all()


class _Opaque(nn.Module):
    """A network vmap cannot run: its forward reads a value of its input on the host."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(5, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = self.fc1(x)
        scale = 1.0 + 0.0 * float(h.detach().abs().max())  # .item() of a batched tensor: vmap refuses
        return self.fc2(torch.tanh(h * scale))


def _prober(make, K=3, spec=ProbeSpec(null_samples=4)):
    model = _pack(make, K)
    task = SimpleNamespace(loss=_classification, classification=True, output_dim=3)
    return model, Prober(model, task, lambda x: x, spec, DECAYS[:K])


def test_prober_falls_back_to_members_where_vmap_fails_and_says_so_once(caplog):
    x = torch.randn(16, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y = torch.arange(16) % 3
    model, prober = _prober(_Opaque)
    prober.vectorize = True  # as on a GPU (on a CPU the capture runs member after member)
    with caplog.at_level(logging.WARNING, logger="phasemap.train.probing"):
        first, second = prober(x, y), prober(x, y)
    assert not prober.batched
    assert len([r for r in caplog.records if "member by member" in r.message]) == 1
    for k in range(model.K):
        table = measure(model.member(k), x, y, _classification, null_samples=4, weight_decay=DECAYS[k], labels=y,
                        n_classes=3)
        for l in range(len(table)):
            _assert_rows_equal({c: first.values[l][c][k] for c in METRIC_COLUMNS}, first.reasons[l][k],
                               first.loss[k], table, l, table["probe_loss"].iloc[0])
    assert first.values[0]["rga_a"] == second.values[0]["rga_a"]
    assert second.values[0]["stat_h_b"] == [0.0] * model.K  # the same network twice: no change


def test_prober_batched_equals_member_loop_with_a_diverged_member():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(10, 3, 6, 6, generator=g, dtype=torch.float64)
    y = torch.arange(10) % 3

    def make():
        return cnn((3, 6, 6), 3, 2, 4, norm="batch")

    model, batched = _prober(make)
    batched.vectorize = True  # as on a GPU
    _, looped = _prober(make)
    looped.batched = False
    with torch.no_grad():
        model.functional()[1]["conv1.weight"][1, 0, 0, 0] = math.nan  # member 1 diverged
    looped.model = model
    for _ in range(2):  # stationarity from the second probe on
        a, b = batched(x, y), looped(x, y)
        assert batched.batched
        assert math.isnan(a.loss[1]) and math.isnan(b.loss[1])
        for l in range(len(a.layers)):
            for c in METRIC_COLUMNS:
                for k in (0, 2):
                    assert a.values[l][c][k] == pytest.approx(b.values[l][c][k], rel=0, abs=1e-6, nan_ok=True), (l, c)
                assert a.values[l][c][1] == pytest.approx(b.values[l][c][1], nan_ok=True)  # the divergence rows
            assert a.reasons[l] == b.reasons[l]
        assert a.loss[0] == pytest.approx(b.loss[0], rel=1e-6)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(6), dtype=p.dtype))
    assert a.values[1]["stat_h_a"][0] > 0 and math.isnan(a.values[1]["stat_h_a"][1])


def test_a_member_whose_activations_overflow_is_recorded_diverged_and_the_others_are_kept(tmp_path):
    """Finite parameters, infinite outputs (lr 1e30 after one step): the probe used to fail the
    whole run in neural collapse's pinv; now that member is diverged and the others are probed."""
    from phasemap import load, parse_config, train_pack

    cfg = parse_config({"name": "overflow", "task": {"name": "digits"},
                        "model": {"family": "cnn", "depth": 2, "width": 8, "norm": "batch"},
                        "optimizer": {"name": "sgd", "lr": [0.02, 1e30, 0.05], "momentum": 0.9},
                        "train": {"steps": 3, "batch_size": 32, "check_every": 1, "device": "cpu"},
                        "probe": {"n_samples": 32, "steps": [0, 1, 3], "null_samples": 0},
                        "storage": {"root": str(tmp_path), "sweep_id": "s"}})
    result = train_pack(cfg)
    assert result.status == ["ok", "diverged", "ok"]
    recs = load(str(tmp_path))
    assert sorted(recs.loc[recs["member"] == 1, "step"].unique()) == [0, 1]  # probed at 0, diverged at 1
    kept = recs[(recs["member"] != 1) & (recs["step"] == 3)]
    assert len(kept) == 2 * kept["n_layers"].iloc[0] and kept["rga_b"].notna().all() and (kept["status"] == "ok").all()
