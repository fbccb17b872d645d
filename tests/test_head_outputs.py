"""Per-head attention outputs (probe.per_head; the paper's llm Fig. 3, 5, 15): each head's rows
against the head's output and its loss gradient sliced by hand from phasemap's own transformer."""

import math

import numpy as np
import torch
import torch.nn.functional as F

from phasemap.measure import Stationarity, measure
from phasemap.measure.maths import (
    alignment, descending_eigvals, effective_rank, power_law, power_law_fit, second_moment,
)
from phasemap.models.transformer import Transformer

E, HEADS, T = 12, 3, 6
D = E // HEADS


def _loss(o, t):
    return F.cross_entropy(o.reshape(-1, o.shape[-1]), t.reshape(-1), reduction="none")


def _by_hand(model, x, y):
    """Each head's output o_h (tokens, D) and g_h = -dl/do_h, from attention written out here:
    a forward hook on the MultiheadAttention recomputes its output from the heads' outputs
    (checked equal to its own), so the loss's gradient reaches them."""
    mha = model.block1.attn
    found = {}

    def hook(module, inputs, output):
        h = inputs[0]  # (N, T, E) (batch_first), query = key = value
        Wq, Wk, Wv = mha.in_proj_weight.chunk(3)
        bq, bk, bv = mha.in_proj_bias.chunk(3)
        N = h.shape[0]
        q, k, v = ((h @ W.T + b).reshape(N, T, HEADS, D).transpose(1, 2) for W, b in ((Wq, bq), (Wk, bk), (Wv, bv)))
        scores = q @ k.transpose(-1, -2) / math.sqrt(D)
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        o = (scores.softmax(-1) @ v).transpose(1, 2).reshape(N, T, E).detach().requires_grad_(True)
        out = F.linear(o, mha.out_proj.weight, mha.out_proj.bias)
        assert (out - output[0]).abs().max() < 1e-12  # the attention written out is the module's
        found["o"] = o
        return out, None

    handle = mha.register_forward_hook(hook)
    try:
        loss = _loss(model(x), y).sum()
    finally:
        handle.remove()
    g = -torch.autograd.grad(loss, found["o"])[0]
    o, g = found["o"].detach().reshape(-1, E), g.reshape(-1, E)
    return [(o[:, h * D:(h + 1) * D], g[:, h * D:(h + 1) * D]) for h in range(HEADS)]


def _expected(model, heads, first_H):
    """Per head {column: value} from the sliced samples and maths' functions."""
    W_o = model.block1.attn.out_proj.weight.detach()
    Hs = [second_moment(o)[0] for o, _ in heads]
    want = []
    for h, (o, g) in enumerate(heads):
        H, u_h, _ = second_moment(o)
        G, u_g, _ = second_moment(g)
        W_s = W_o[:, h * D:(h + 1) * D]  # out_proj's columns that read this head
        Z = W_s.T @ W_s
        cross = u_g.T @ u_h  # cov(g, h) up to a scale
        e_h, e_g = descending_eigvals(H), descending_eigvals(G)
        others = [alignment(H, Hs[j]) for j in range(HEADS) if j != h]
        want.append({
            "rga_b": alignment(H, G), "rwa_b": alignment(H, Z), "gwa_b": alignment(G, Z),
            "cross_b": alignment(cross + cross.T, Z),
            "erank_h_b": effective_rank(e_h), "erank_g_b": effective_rank(e_g),
            "pah_hg_b": power_law(H, G).k, "pah_hz_b": power_law(H, Z).k, "pah_gz_b": power_law(G, Z).k,
            "pah_hg_b_sorted": power_law_fit(e_h, e_g)[0],
            "heads_h_b": sum(others) / len(others), "init_h_b": alignment(H, first_H[h]),
        })
    return want


def test_head_output_rows_are_the_heads_slices_taken_by_hand():
    torch.manual_seed(0)
    model = Transformer(11, T, 1, E, HEADS).double().eval()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, 11, (16, T), generator=g), torch.randint(0, 11, (16, T), generator=g)
    tracker, first_H, worst = Stationarity(), None, 0.0
    for probe in range(2):
        table = measure(model, x, y, _loss, per_head=True, stationarity=tracker)
        rows = table[table["kind"] == "attention.head_out"]
        assert rows["name"].tolist() == [f"block1.attn.head{h}.out" for h in (1, 2, 3)]
        out_proj = table[table["name"] == "block1.attn.out_proj"].iloc[0]
        assert (rows["layer"] == out_proj["layer"]).all() and rows["head"].tolist() == [1, 2, 3]
        assert (rows["dim_out"] == D).all()
        heads = _by_hand(model, x, y)
        if first_H is None:  # the first probe: H_b against itself (init_h_b 1)
            first_H = [second_moment(o)[0] for o, _ in heads]
        want = _expected(model, heads, first_H)
        for h, expected in enumerate(want):
            row = rows.iloc[h]
            for c, v in expected.items():
                assert math.isfinite(float(v)), (c, h)
                diff = abs(row[c] - float(v))
                worst = max(worst, diff)
                assert diff < 1e-6, (probe, h, c, row[c], float(v))
            # no input side: NaN with the reason; so are balance and NFA (a-side quantities)
            for c in ("rga_a", "rwa_a", "gwa_a", "erank_h_a", "pah_hg_a", "r_h_a", "balance", "nfa", "stat_h_a"):
                assert math.isnan(row[c]), c
            assert row["nan_reason"].startswith("rga_a, rwa_a, gwa_a: attention.head_out has no input side")
        if probe == 1:  # a step's worth of change: no longer H_b's own first value
            assert (rows["init_h_b"] < 1 - 1e-6).all() and rows["stat_h_b"].notna().all()
        # the baselines belong to head rows only; the q, k, v heads have theirs
        assert table.loc[table["head"].isna(), ["heads_h_b", "init_h_b"]].isna().all().all()
        assert table.loc[table["kind"] == "attention.q.head", "heads_h_b"].notna().all()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    print(f"largest difference from the hand slices: {worst:.2e}")


def test_the_first_probes_head_matrices_go_through_a_checkpoint():
    """init_h_b after a resume: the first probe's H_b comes back with the tracker's state."""
    torch.manual_seed(0)
    model = Transformer(11, T, 1, E, HEADS).double().eval()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, 11, (8, T), generator=g), torch.randint(0, 11, (8, T), generator=g)
    tracker = Stationarity()
    measure(model, x, y, _loss, per_head=True, stationarity=tracker)
    resumed = Stationarity()
    resumed.load(tracker.state())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    heads = lambda t: t.loc[t["head"].notna(), "init_h_b"].to_numpy()  # noqa: E731
    went_on = heads(measure(model, x, y, _loss, per_head=True, stationarity=tracker))
    after = heads(measure(model, x, y, _loss, per_head=True, stationarity=resumed))
    fresh = heads(measure(model, x, y, _loss, per_head=True, stationarity=Stationarity()))
    assert len(went_on) == 4 * HEADS and (went_on < 1 - 1e-6).all()  # q, k, v and output heads
    assert (after == went_on).all() and (abs(fresh - 1) < 1e-12).all()
    # a checkpoint written before init_h_b kept H_b but not the first probe's: the baseline is
    # unknown there (NaN), not the resumed probe's own H_b (1.0, as it was before this rule)
    older = Stationarity()
    older.load({key: M for key, M in tracker.state().items() if key[1] != "h_b_first"})
    unknown = heads(measure(model, x, y, _loss, per_head=True, stationarity=older))
    assert len(unknown) == 4 * HEADS and np.isnan(unknown).all()
