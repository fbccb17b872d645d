"""nn.MultiheadAttention measured as four linear maps (phasemap.measure.attention)."""

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from phasemap import measure
from phasemap.measure.attention import decomposed, projections
from phasemap.measure import METRIC_COLUMNS


def _stepwise(mha, *args, **kwargs):
    with decomposed(mha, projections(mha)):
        return mha(*args, **kwargs)


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")  # torch's own, on the reference
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("masks", ["none", "causal-bool", "causal-float+padding", "per-head"])
def test_the_stepwise_forward_is_multihead_attention(batch_first, masks):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(12, 3, batch_first=batch_first).eval()
    N, L = 4, 6
    x = torch.randn(N, L, 12) if batch_first else torch.randn(L, N, 12)
    kwargs = {}
    causal = torch.triu(torch.ones(L, L, dtype=torch.bool), 1)
    if masks == "causal-bool":
        kwargs = {"attn_mask": causal, "is_causal": True}
    elif masks == "causal-float+padding":
        padding = torch.zeros(N, L, dtype=torch.bool)
        padding[1, 4:] = True
        kwargs = {"attn_mask": torch.zeros(L, L).masked_fill(causal, float("-inf")), "key_padding_mask": padding}
    elif masks == "per-head":
        kwargs = {"attn_mask": torch.randn(N * 3, L, L), "average_attn_weights": False}
    want, want_w = mha(x, x, x, **kwargs)
    got, got_w = _stepwise(mha, x, x, x, **kwargs)
    assert torch.allclose(got, want, atol=1e-5) and torch.allclose(got_w, want_w, atol=1e-5)
    assert "forward" not in vars(mha)  # the class's forward is back
    got, none = _stepwise(mha, x, x, x, need_weights=False, **kwargs)
    assert none is None and torch.allclose(got, want, atol=1e-5)


def test_the_stepwise_forward_with_separate_key_and_value_dimensions_and_unbatched_input():
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(8, 2, kdim=5, vdim=3).eval()
    q, k, v = torch.randn(7, 8), torch.randn(9, 5), torch.randn(9, 3)  # unbatched (L, E)
    want, want_w = mha(q, k, v)
    got, got_w = _stepwise(mha, q, k, v)
    assert torch.allclose(got, want, atol=1e-5) and torch.allclose(got_w, want_w, atol=1e-5)
    assert [p.weight.shape for _, p, _ in projections(mha)] == [(8, 8), (8, 5), (8, 3)]


class FourLinears(nn.Module):
    """Self-attention written with four nn.Linear layers, then a head."""

    def __init__(self, mha: nn.MultiheadAttention, head: nn.Linear):
        super().__init__()
        E, self.H = mha.embed_dim, mha.num_heads
        self.q, self.k, self.v = (nn.Linear(E, E) for _ in range(3))
        with torch.no_grad():
            for i, lin in enumerate((self.q, self.k, self.v)):
                lin.weight.copy_(mha.in_proj_weight[i * E:(i + 1) * E])
                lin.bias.copy_(mha.in_proj_bias[i * E:(i + 1) * E])
        self.o = nn.Linear(E, E)
        self.o.load_state_dict(mha.out_proj.state_dict())
        self.head = head

    def forward(self, x):  # (N, L, E)
        N, L, E = x.shape
        split = lambda t: t.reshape(N, L, self.H, E // self.H).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        w = torch.softmax(q @ k.transpose(-1, -2) / (E // self.H) ** 0.5, -1)
        return self.head(self.o((w @ v).transpose(1, 2).reshape(N, L, E)))


class WithAttention(nn.Module):
    def __init__(self, mha, head):
        super().__init__()
        self.attn, self.head = mha, head

    def forward(self, x):
        return self.head(self.attn(x, x, x, need_weights=False)[0])


def test_measure_on_multihead_attention_equals_four_separate_linears():
    torch.manual_seed(0)
    mha, head = nn.MultiheadAttention(8, 2, batch_first=True), nn.Linear(8, 3)
    x, y = torch.randn(10, 6, 8), torch.randn(10, 6, 3)
    loss = lambda o, t: 0.5 * ((o - t) ** 2).sum(-1)  # noqa: E731  one loss per token
    fused = measure(WithAttention(mha, head), x, y, loss)
    plain = measure(FourLinears(mha, head), x, y, loss)
    assert fused["name"].tolist() == ["attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj", "head"]
    assert plain["name"].tolist() == ["q", "k", "v", "o", "head"]
    assert (fused[["dim_in", "dim_out"]].values == plain[["dim_in", "dim_out"]].values).all()
    assert fused["probe_loss"].iloc[0] == pytest.approx(plain["probe_loss"].iloc[0], rel=1e-6)
    cols = METRIC_COLUMNS  # NFA of tokens too: the same seeded projections of the same output
    pd.testing.assert_frame_equal(fused[cols], plain[cols], rtol=1e-4, atol=1e-5)
    assert (fused["nan_reason"] == "").all()
    assert not mha.in_proj_weight.grad  # measure leaves no gradient behind


class FusedCausal(FourLinears):
    """The same attention with a fused kernel: `F.scaled_dot_product_attention(is_causal=True)`."""

    def forward(self, x):  # (N, L, E)
        N, L, E = x.shape
        split = lambda t: t.reshape(N, L, self.H, E // self.H).transpose(1, 2)  # noqa: E731
        out = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)), is_causal=True)
        return self.head(self.o(out.transpose(1, 2).reshape(N, L, E)))


class CausalAttention(WithAttention):
    def forward(self, x):
        L = x.shape[1]
        mask = torch.triu(torch.ones(L, L, dtype=torch.bool), 1)  # True: not attended
        return self.head(self.attn(x, x, x, attn_mask=mask, need_weights=False)[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_fused_causal_attention_measures_as_multihead_attention(dtype):
    # the query gradient at position 0 is exactly zero (it attends to itself only); the fused
    # kernel returns rounding noise there, which must count as zero as the exact zeros do
    torch.manual_seed(0)
    mha, head = nn.MultiheadAttention(8, 2, batch_first=True), nn.Linear(8, 3)
    mha, head = mha.to(dtype), head.to(dtype)
    x, y = torch.randn(10, 6, 8, dtype=dtype), torch.randn(10, 6, 3, dtype=dtype)
    loss = lambda o, t: 0.5 * ((o - t) ** 2).sum(-1)  # noqa: E731  one loss per token
    exact = measure(CausalAttention(mha, head), x, y, loss)
    fused = measure(FusedCausal(mha, head).to(dtype), x, y, loss)
    zeros = [c for c in METRIC_COLUMNS if c.startswith("n_zero")]
    assert exact[["name"] + zeros].iloc[0].tolist() == ["attn.q_proj", 0, 10, 0, 10]  # g_a, g_b: one per sequence
    assert (fused[zeros].values == exact[zeros].values).all(), (fused[zeros], exact[zeros])
    cols = [f"{r}_{s}" for s in "ab" for r in ("rga", "rwa", "gwa")] + ["cross_b"]
    tol = {torch.float32: 1e-4, torch.float64: 1e-9, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    pd.testing.assert_frame_equal(fused[cols], exact[cols], rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_the_fused_query_gradient_at_position_0_is_rounding_noise_and_counts_as_zero(dtype):
    # F.scaled_dot_product_attention's query gradient at position 0 (exactly 0: it attends to
    # itself only) is float32 rounding noise, a few float32 eps of the largest, in bfloat16 and
    # float16 too (their kernels accumulate in float32): it counts as zero, and no other
    # position's gradient does (the smallest is ~1e-5 of the largest; a threshold at bfloat16's
    # own eps dropped 70 of them, at float16's 9)
    from phasemap.measure.maths import zero_rows

    g = torch.Generator().manual_seed(0)
    N, H, L, D = 4, 4, 64, 32
    q, k, v, grad_out = (torch.randn(N, H, L, D, generator=g) * s for s in (3, 3, 1, 1))
    q = q.to(dtype).requires_grad_(True)
    out = F.scaled_dot_product_attention(q, k.to(dtype), v.to(dtype), is_causal=True)
    (dq,) = torch.autograd.grad(out, q, grad_out.to(dtype))
    rows = dq.transpose(1, 2).reshape(N * L, H * D)  # tokens x heads, as the q projection's g_b
    norms = rows.float().norm(dim=-1).reshape(N, L)
    assert (norms[:, 0] > 0).any()  # noise, not exact zeros: the rule is what drops it
    assert (norms[:, 0] <= 16 * torch.finfo(torch.float32).eps * norms.max()).all()
    zero = zero_rows(rows.unsqueeze(0))[0, :, 0].reshape(N, L)
    assert zero[:, 0].all() and not zero[:, 1:].any()
