"""The null of an alignment: its value by chance for the same spectra (SCIENCE.md), by value."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from phasemap import alignment, alignment_null, excess, label_phases, parse_config, train_pack
from phasemap.measure.phases import ALIGNMENT_COLUMNS, critical_depth
from phasemap.measure import haar_rotations, second_moment


def cov(n, d, seed):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return second_moment(x)[0]


def test_two_independent_isotropic_covariances_align_only_by_chance():
    A, B = cov(3000, 100, 1), cov(3000, 100, 2)
    alpha = alignment(A, B).item()
    null, se = (t.item() for t in alignment_null(A, B))
    assert alpha > 0.95  # the raw number says "aligned" (0.968 in SCIENCE.md) ...
    assert abs(alpha - null) < 0.02 and se < 0.005  # ... the null says: no better than chance
    assert abs(excess(alpha, null)) < 0.5


def test_a_planted_anisotropic_pair_in_one_eigenbasis_is_far_above_its_null():
    d = 60
    V = haar_rotations(d, 1, seed=3)[0]
    lam = torch.logspace(0, -2, d, dtype=torch.float64)
    A = V @ torch.diag(lam) @ V.T
    B = V @ torch.diag(2 * lam + 1e-3 * torch.rand(d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)) @ V.T
    alpha = alignment(A, B).item()
    null, _ = alignment_null(A, B)
    assert alpha >= 0.99 and null.item() < 0.6 and excess(alpha, null.item()) >= 0.98  # null 0.42 here


def test_the_null_agrees_with_a_brute_force_monte_carlo_estimate():
    d = 24
    V, U = haar_rotations(d, 2, seed=11)
    A = V @ torch.diag(torch.linspace(0.1, 3, d, dtype=torch.float64)) @ V.T + 0.2  # not centred: a mean to remove
    b = torch.linspace(1, 0, d, dtype=torch.float64) ** 3
    B = U @ torch.diag(b) @ U.T
    Q = haar_rotations(d, 4000, seed=99)  # independent of the estimator's own rotations
    brute = alignment(A.expand(4000, d, d), Q @ B @ Q.transpose(-1, -2))
    brute_mean, brute_se = brute.mean().item(), brute.std().item() / math.sqrt(4000)
    null, se = (t.item() for t in alignment_null(A, B, samples=256))
    assert abs(null - brute_mean) < 4 * math.hypot(se, brute_se)
    assert 0.2 < se * math.sqrt(256) / (brute_se * math.sqrt(4000)) < 5  # the stated error is the spread's
    by_spectrum, _ = alignment_null(A, eig_b=b, samples=256)
    assert by_spectrum.item() == pytest.approx(null, abs=1e-5)  # only B's eigenvalues matter
    batch, _ = alignment_null(torch.stack([A, A]), torch.stack([B, 2 * B]), samples=256)
    assert batch.tolist() == pytest.approx([null, null], abs=1e-5)  # batched; invariant to B's scale


def test_the_null_is_nan_where_the_alignment_is_undefined():
    A = torch.ones(5, 5, dtype=torch.float64)  # constant
    null, se = alignment_null(A, torch.eye(5, dtype=torch.float64))
    assert math.isnan(null.item()) and math.isnan(se.item())
    assert math.isnan(alignment_null(cov(50, 5, 0), cov(50, 5, 1), samples=0)[0].item())


def test_records_carry_every_relations_null_and_its_error(tmp_path):
    base = {"name": "n", "task": {"name": "fc1", "input_dim": 6, "teacher_width": 6},
            "model": {"depth": 2, "width": 6}, "train": {"steps": 10, "batch_size": 8, "device": "cpu"},
            "probe": {"n_samples": 64, "steps": [5]}}
    recs = train_pack(parse_config(base), root=str(tmp_path / "a")).records
    for col in ALIGNMENT_COLUMNS:
        defined = recs[col].notna()  # not the 1x1 output side of fc1's last layer
        null, se = recs.loc[defined, f"{col}_null"], recs.loc[defined, f"{col}_null_se"]
        assert defined.sum() >= 6 and null.between(-1, 1).all() and (se >= 0).all() and (se < 0.5).all(), col
        assert recs.loc[~defined, f"{col}_null"].isna().all()
    off = train_pack(parse_config({**base, "probe": {**base["probe"], "null_samples": 0}}), root=str(tmp_path / "b"))
    assert off.records["rga_b_null"].isna().all() and off.records["rga_b"].notna().sum() == 6


def table(alpha, null, depth=2):
    rows = [{"layer": l, "depth": depth, "status": "ok", "run_id": "r", "member": 0, "step": 1,
             **{c: alpha[l - 1] for c in ALIGNMENT_COLUMNS}, **{f"{c}_null": null[l - 1] for c in ALIGNMENT_COLUMNS}}
            for l in range(1, depth + 1)]
    return pd.DataFrame(rows)


def test_phases_and_critical_depth_can_be_judged_against_the_null():
    t = table(alpha=[0.95, 0.95], null=[0.94, 0.0])  # layer 1 aligned only as much as chance allows
    assert label_phases(t, 0.9).tolist() == ["CRH", "CRH"]
    assert label_phases(t, 0.9, against="null").tolist() == ["none", "CRH"]
    assert critical_depth(t, "rga_b", 0.9)["l_star"].tolist() == [1.0]
    assert critical_depth(t, "rga_b", 0.9, against="null")["l_star"].tolist() == [2.0]
    assert excess(np.array([0.95, 0.95]), np.array([0.94, 0.0])) == pytest.approx([1 / 6, 0.95])
    with pytest.raises(ValueError, match="against in"):
        label_phases(t, 0.9, against="chance")


def test_a_dead_layer_gives_nan_with_its_reason_not_numbers():
    """A layer whose input ReLUs are all silent: its output is its bias for every sample."""
    from torch import nn

    from phasemap import measure

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 6), nn.ReLU(),
                        nn.Linear(6, 1))
    with torch.no_grad():
        net[2].bias.fill_(-100.0)  # every unit of the second hidden layer is silent
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a Ray trial with one CPU: a one-thread float32 sum of equal rows drifts most
    try:
        t = measure(net, torch.randn(500, 8), torch.randn(500, 1), lambda o, y: ((o - y) ** 2).sum(-1))
    finally:
        torch.set_num_threads(threads)
    t = t.set_index("layer")
    dead = t.loc[3]  # input: all zero; output: the bias, the same for every sample
    assert dead["n_zero_h_a"] == 500
    for col in ("rga_a", "rwa_a", "rga_b", "rwa_b", "erank_h_a", "erank_h_b", "pah_hg_b", "pah_hz_b", "rga_b_null"):
        assert math.isnan(dead[col]), col
    assert "rga_a: H_a fewer than 2 non-zero samples" in dead["nan_reason"]
    assert "rga_b: H_b spread at rounding level" in dead["nan_reason"]
    assert "rga_a: H_a spread at rounding level" in t.loc[4]["nan_reason"]  # constant after the ReLU too
    assert "G_b fewer than 2 non-zero samples" in t.loc[1]["nan_reason"]  # no gradient reaches below it
    assert not math.isnan(t.loc[1]["erank_h_b"])  # H itself is fine there


def test_the_degenerate_rule_is_at_rounding_level_and_no_higher():
    from phasemap.measure import degenerate

    d, n = 100, 1000
    for dtype in (torch.float32, torch.float64):
        row = torch.randn(d, dtype=dtype)
        same = second_moment(row.expand(n, d).contiguous())[0]  # one direction, rounding left over
        eps = torch.finfo(dtype).eps
        spread = second_moment(row + 100 * eps * torch.randn(n, d, dtype=dtype) * row.abs().max())[0]
        assert degenerate(same, torch.tensor(n)).item() == 1
        assert degenerate(spread, torch.tensor(n)).item() == 0  # a spread of 100 eps per entry is measured
    assert degenerate(cov(50, 5, 0), torch.tensor(1)).item() == 2


def test_measure_runs_in_eval_mode_restores_modes_and_names_what_it_cannot_measure(caplog):
    from torch import nn

    from phasemap import measure

    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, dropout=0.5, batch_first=True)
    head = nn.Linear(8, 1)
    net = nn.Sequential(layer, head)
    net.train()
    x, y = torch.randn(20, 5, 8), torch.randn(20, 5, 1)

    def loss(o, t):
        return ((o - t) ** 2).sum(-1)

    with caplog.at_level("WARNING"):
        first = measure(net, x, y, loss)
    second = measure(net, x, y, loss)
    assert net.training and layer.dropout.training  # modes restored
    pd.testing.assert_frame_equal(first, second)  # dropout off: two calls agree
    names = first.set_index("name")
    # attention's projections are measured too (phasemap.measure.attention), the last layer is 1x1
    assert list(names.index) == ["0.self_attn.q_proj", "0.self_attn.k_proj", "0.self_attn.v_proj",
                                 "0.self_attn.out_proj", "0.linear1", "0.linear2", "1"]
    assert (names.iloc[:-1]["nan_reason"] == "").all() and names.iloc[:-1]["rga_a"].notna().all()
    assert "not measured" not in caplog.text
    # an attention module it cannot decompose: its out_proj is named, with the reason
    odd = nn.Sequential(nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, batch_first=True), head)
    odd[0].self_attn = nn.MultiheadAttention(8, 2, batch_first=True, add_bias_kv=True)
    with caplog.at_level("WARNING"):
        skipped = measure(odd, x, y, loss).set_index("name")
    out_proj = skipped.loc["0.self_attn.out_proj"]
    assert math.isnan(out_proj["rga_b"]) and "add_bias_kv=True is not decomposed" in out_proj["nan_reason"]
    assert "0.self_attn.out_proj" in caplog.text
    in_train = measure(net, x, y, loss, train_mode=True)
    assert not in_train["probe_loss"].equals(first["probe_loss"])  # dropout on when asked


def test_trace_ratios_by_construction():
    from phasemap.measure import trace_ratio

    v = torch.randn(7, dtype=torch.float64)
    assert trace_ratio(v.expand(30, 7)).item() == pytest.approx(1.0)  # one vector: all mean
    signs = torch.tensor([1.0, -1.0] * 15, dtype=torch.float64)[:, None]
    assert trace_ratio(signs * v).item() == pytest.approx(0.0, abs=1e-15)  # +-v: no mean at all
    shifted = torch.cat([v + 1, v - 1]).reshape(2, 7)  # mean v, spread 1 per coordinate
    assert trace_ratio(shifted).item() == pytest.approx((v @ v).item() / ((v @ v).item() + 7))
    assert math.isnan(trace_ratio(torch.zeros(5, 3)).item())


def test_the_balance_residual_is_zero_at_a_planted_stationary_point():
    from phasemap.measure import balance, layer_metrics

    g = torch.Generator().manual_seed(0)
    h_a = torch.randn(2, 400, 5, generator=g, dtype=torch.float64)
    g_b = torch.randn(2, 400, 3, generator=g, dtype=torch.float64)
    gamma = torch.tensor([0.1, 0.01], dtype=torch.float64)
    W = (g_b.transpose(1, 2) @ h_a) / 400 / gamma[:, None, None]  # E[g_b h_a^T] = gamma W exactly
    assert balance(h_a, g_b, W, gamma).tolist() == pytest.approx([0.0, 0.0], abs=1e-12)
    assert balance(h_a, g_b, 2 * W, gamma).tolist() == pytest.approx([0.5, 0.5])  # |E - 2E| / |2E|
    assert balance(h_a, g_b, W, torch.tensor([0.0, 0.01])).isnan().tolist() == [True, False]
    assert balance(h_a, g_b, W, None).isnan().all()
    m, _ = layer_metrics(h_a, h_a @ W.transpose(1, 2), g_b, W, weight_decay=gamma)  # the same through a layer
    assert m["balance"].tolist() == pytest.approx([0.0, 0.0], abs=1e-12)


def test_the_effective_rank_of_g_counts_its_directions():
    from phasemap.measure import layer_metrics

    g = torch.Generator().manual_seed(1)
    h_a = torch.randn(1, 2000, 6, generator=g, dtype=torch.float64)
    W = torch.randn(1, 4, 6, generator=g, dtype=torch.float64)
    one_way = torch.zeros(1, 2000, 4, dtype=torch.float64)
    one_way[..., 0] = torch.randn(2000, generator=g, dtype=torch.float64).sign()  # every g_b along +-e1
    every_way = torch.randn(1, 2000, 4, generator=g, dtype=torch.float64)
    m1, _ = layer_metrics(h_a, h_a @ W.transpose(1, 2), one_way, W)
    m4, _ = layer_metrics(h_a, h_a @ W.transpose(1, 2), every_way, W)
    assert m1["erank_g_b"].item() == pytest.approx(1.0, abs=1e-6)
    assert m4["erank_g_b"].item() == pytest.approx(4.0, abs=0.05)
    assert m1["r_g_b"].item() < 0.01 and m4["r_g_b"].item() < 0.01  # centred gradients: no mean to speak of


def test_records_carry_balance_for_members_with_weight_decay(tmp_path):
    cfg = parse_config({"name": "b", "task": {"name": "fc1", "input_dim": 6, "teacher_width": 6},
                        "model": {"depth": 2, "width": 6},
                        "optimizer": {"name": "sgd", "lr": 0.05, "weight_decay": [0.0, 1e-2]},
                        "train": {"steps": 10, "batch_size": 8, "device": "cpu"}, "probe": {"n_samples": 64, "steps": [5]}})
    recs = train_pack(cfg, root=str(tmp_path)).records
    assert recs[recs["weight_decay"] == 0]["balance"].isna().all()
    decayed = recs[recs["weight_decay"] > 0]
    assert decayed["balance"].notna().all() and (decayed["balance"] > 0).all()
    assert recs[["r_h_a", "r_h_b", "erank_g_a"]].notna().all().all()


def test_a_recorder_run_is_read_like_sweep_records(tmp_path):
    from torch import nn

    from phasemap import Recorder, load, sql
    from phasemap.cli import main

    torch.manual_seed(0)
    x, y = torch.randn(256, 6), torch.randn(256, 1)
    per_sample = lambda o, t: ((o - t) ** 2).sum(-1)  # noqa: E731
    for wd in (0.0, 1e-2):
        net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1))
        opt = torch.optim.SGD(net.parameters(), lr=0.05, weight_decay=wd)
        with Recorder(str(tmp_path), "mine", f"net-wd{wd}", config={"depth": 2, "width": 16, "optimizer": "sgd",
                                                                      "lr": 0.05, "weight_decay": wd, "seed": 0}) as rec:
            for step in range(31):
                loss = per_sample(net(x[:64]), y[:64]).mean()
                if step % 10 == 0:
                    rec.probe(net, x[64:], y[64:], per_sample, step, train_loss=loss.item())
                opt.zero_grad()
                loss.backward()
                opt.step()
    recs = load(str(tmp_path))
    assert len(recs) == 2 * 4 * 3 and set(recs["run_id"]) == {"net-wd0.0", "net-wd0.01"}
    assert recs["config_hash"].nunique() == 2 and set(recs["depth"]) == {2} and recs["rga_b_null"].notna().any()
    assert recs[recs["weight_decay"] > 0]["balance"].notna().all() and recs[recs["weight_decay"] == 0]["balance"].isna().all()
    assert [p.name for p in tmp_path.rglob("*.parquet") if not p.name.startswith("_")] == ["records.parquet"] * 2
    assert sql(str(tmp_path), "SELECT count(DISTINCT run_id) FROM records WHERE step = 30").iloc[0, 0] == 2
    assert main(["plot", str(tmp_path), "layers", "--out", str(tmp_path / "layers.png")]) == 0
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "phase-diagram.png").exists()
    with pytest.raises(RuntimeError, match="being written by another process"):
        with Recorder(str(tmp_path), "mine", "busy"):
            Recorder(str(tmp_path), "mine", "busy")
    with pytest.raises(ValueError, match="config keys are config columns"):
        Recorder(str(tmp_path), "mine", "typo", config={"weigth_decay": 0.1})


def etf_features(C=4, d=6, per_class=25, noise=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0][:, :C]
    means = (Q @ (torch.eye(C, dtype=torch.float64) - 1.0 / C)).T * 3.0  # (C, d): a simplex ETF
    labels = torch.arange(C).repeat(per_class)
    return means[labels] + noise * torch.randn(C * per_class, d, generator=g, dtype=torch.float64), labels, means


def test_neural_collapse_is_zero_at_collapse_and_grows_with_within_class_spread():
    from phasemap.measure import neural_collapse

    h, labels, means = etf_features()
    nc = neural_collapse(h, labels, 4, W=means, logits=h @ means.T)
    for col in ("nc1", "nc2", "nc2_norms", "nc3"):
        assert nc[col].item() == pytest.approx(0.0, abs=1e-9), col
    assert nc["nc4"].item() == 0.0
    noisy, labels, means = etf_features(noise=0.5)
    nc_noisy = neural_collapse(noisy, labels, 4, W=means, logits=noisy @ means.T)
    assert 0.01 < nc_noisy["nc1"].item() < 1
    spread = neural_collapse(etf_features(noise=2.0)[0], labels, 4)
    assert spread["nc1"].item() > 5 * nc_noisy["nc1"].item() and math.isnan(spread["nc3"].item())
    # class means that are not equiangular: NC2 away from 0; a classifier that is not M: NC3 away from 0
    skewed = h.clone()
    skewed[labels == 0] *= 3
    assert neural_collapse(skewed, labels, 4)["nc2"].item() > 0.1
    assert neural_collapse(h, labels, 4, W=means.flip(0))["nc3"].item() > 0.5
    wrong = neural_collapse(h, labels, 4, logits=(h @ means.T).roll(1, -1))  # predictions off by one class
    assert wrong["nc4"].item() == 1.0


def test_a_classification_pack_records_neural_collapse_at_every_layer(tmp_path):
    from phasemap import measure
    from phasemap.config import TaskSpec
    from phasemap.models import StackedMLP
    from phasemap.measure import probe_stacked
    from phasemap.data import Task

    task = Task(TaskSpec(name="clusters", input_dim=6, n_classes=3, noise=0.3))
    x, y = task.sample(300, torch.Generator().manual_seed(1))
    model = StackedMLP([6, 8, 8, 3], "relu", seeds=[0, 1])
    _, layers = probe_stacked(model, task, x, y, "centered", 1e-4)
    for l, (metrics, _) in enumerate(layers):
        assert metrics["nc1"].isfinite().all() and metrics["nc2"].isfinite().all(), l
        assert metrics["nc3"].isfinite().all() == (l == 2) and metrics["nc4"].isfinite().all() == (l == 2)
    for k in range(2):  # measure with labels gives the same numbers as the stacked path
        table = measure(model.member(k), x, y, task.loss, labels=y)
        for l, (metrics, _) in enumerate(layers):
            for col in ("nc1", "nc2", "nc2_norms", "nc3", "nc4"):
                a, b = table[col].iloc[l], metrics[col][k].item()
                assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-4, abs=1e-8), col
    regression = parse_config({"name": "r", "task": {"name": "fc1", "input_dim": 6, "teacher_width": 6},
                               "model": {"depth": 1, "width": 6}, "train": {"steps": 4, "batch_size": 8, "device": "cpu"},
                               "probe": {"n_samples": 32, "steps": [2]}})
    assert train_pack(regression, root=str(tmp_path / "r")).records["nc1"].isna().all()


@pytest.mark.parametrize("head", ["embedding", "regression", "classifier"])
def test_measure_takes_classes_from_the_labels_whatever_the_output_width(head):
    # 4 classes in the labels; the output is a 3-wide embedding, a 1-wide regression or a
    # 4-class classifier. NC1/NC2 of the first layer's input are those of x itself; NC3/NC4 only
    # where the output is a classifier over the labels' classes, else NaN with a reason
    from phasemap.measure import measure, neural_collapse

    x, labels, means = etf_features(noise=0.5)
    x, means = x.float(), means.float()
    width = {"embedding": 3, "regression": 1, "classifier": 4}[head]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, width))
    target = torch.randn(len(labels), width)
    loss = (lambda o, y: nn.functional.cross_entropy(o, y, reduction="none")) if head == "classifier" else \
        (lambda o, y: ((o - y) ** 2).sum(-1))
    table = measure(net, x, labels if head == "classifier" else target, loss, labels=labels)
    by_hand = neural_collapse(x.double().unsqueeze(0), labels, 4)
    for col in ("nc1", "nc2", "nc2_norms"):
        assert table[col].iloc[0] == pytest.approx(by_hand[col].item(), rel=1e-5), col
        assert table[col].notna().all(), col
    last = table.iloc[-1]
    if head == "classifier":
        h = torch.tanh(net[0](x)).detach().double()
        ref = neural_collapse(h.unsqueeze(0), labels, 4, W=net[2].weight.detach().double().unsqueeze(0),
                              logits=net(x).detach().double().unsqueeze(0))
        assert last["nc3"] == pytest.approx(ref["nc3"].item(), rel=1e-5)
        assert last["nc4"] == pytest.approx(ref["nc4"].item(), abs=1e-12)
    else:
        assert math.isnan(last["nc3"]) and math.isnan(last["nc4"])
        assert f"nc3, nc4: output width {width} is not the 4 classes of the labels" in last["nan_reason"]
    assert table["nc3"].iloc[:-1].isna().all() and table["nc4"].iloc[:-1].isna().all()


@pytest.mark.parametrize("absent", [9, 4])
def test_a_classifier_probed_without_some_of_its_classes_records_nc3_and_nc4(absent):
    # a 10-way classifier probed with labels that lack one class (the highest, or one inside):
    # given n_classes=10 it is a classifier over the labels' classes; NC1/NC2 over the 9 present
    # classes, NC3 over their classifier rows, NC4 with predictions among all 10 outputs
    from phasemap.measure import measure

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 10))
    x = torch.randn(200, 8)
    labels = torch.arange(200) % 9
    labels = labels + (labels >= absent).long()  # the 9 classes other than `absent`
    ce = lambda o, y: nn.functional.cross_entropy(o, y, reduction="none")  # noqa: E731
    table = measure(net, x, labels, ce, labels=labels, null_samples=0, n_classes=10)
    last = table.iloc[-1]
    # by hand, C = 10 classifier rows, 9 of them with samples
    h = torch.relu(net[0](x)).detach().double()
    logits = net(x).detach().double()
    present = [c for c in range(10) if c != absent]
    means = torch.stack([h[labels == c].mean(0) for c in present])  # (9, 16)
    M = means - means.mean(0)
    W = net[2].weight.detach().double()
    assert W.shape == (10, 16)
    Wp = W[present]
    nc3 = (Wp / Wp.norm() - M / M.norm()).norm().item()
    nearest = torch.tensor(present)[torch.cdist(h, means).argmin(-1)]
    nc4 = (nearest != logits.argmax(-1)).double().mean().item()
    within = h - means[torch.searchsorted(torch.tensor(present), labels)]
    sigma_w, sigma_b = within.T @ within / 200, M.T @ M / 9
    nc1 = torch.trace(sigma_w @ torch.linalg.pinv(sigma_b, hermitian=True)).item() / 9
    assert last["nc3"] == pytest.approx(nc3, rel=1e-5)
    assert last["nc4"] == pytest.approx(nc4, abs=1e-12)
    assert last["nc1"] == pytest.approx(nc1, rel=1e-4)
    assert table[["nc1", "nc2", "nc2_norms"]].notna().all().all()
    assert "nc3" not in last["nan_reason"]
    # an embedding head of another width: NaN with the reason, n_classes given or not (then max + 1)
    emb = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    mse = lambda o, y: ((o - y) ** 2).sum(-1)  # noqa: E731
    for n in (10, None):
        t = measure(emb, x, torch.randn(200, 3), mse, labels=labels, null_samples=0, n_classes=n)
        assert math.isnan(t["nc3"].iloc[-1]) and math.isnan(t["nc4"].iloc[-1])
        assert f"nc3, nc4: output width 3 is not the {n or int(labels.max()) + 1} classes of the labels" in t["nan_reason"].iloc[-1]
        assert t[["nc1", "nc2"]].notna().all().all()
    with pytest.raises(ValueError, match="n_classes > max"):  # fewer classes than the labels name
        measure(net, x, labels, ce, labels=labels, null_samples=0, n_classes=int(labels.max()))
