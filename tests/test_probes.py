"""The CRH/PAH maths against values known by construction."""

import math

import pytest
import torch
from torch import nn

from phasemap.models import StackedMLP
from phasemap.measure import (
    METRIC_COLUMNS,
    alignment,
    batched_eigvalsh,
    descending_eigvals,
    effective_rank,
    layer_metrics,
    measure,
    power_law,
    power_law_fit,
    probe_stacked,
    second_moment,
)
from phasemap.measure import haar_rotations
from phasemap.config import TaskSpec
from phasemap.data import Task

torch.set_default_dtype(torch.float32)


def random_spd(d, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T


def test_alignment_with_itself_is_one_and_with_negative_minus_one():
    A = random_spd(6)
    assert alignment(A, A).item() == pytest.approx(1.0, abs=1e-12)
    assert alignment(A, -A).item() == pytest.approx(-1.0, abs=1e-12)


def test_alignment_is_scale_and_shift_invariant():
    A, B = random_spd(5, 1), random_spd(5, 2)
    base = alignment(A, B).item()
    assert -1 < base < 1
    assert alignment(3.7 * A, 0.01 * B).item() == pytest.approx(base, rel=1e-12)
    assert alignment(A + 5.0, B).item() == pytest.approx(base, rel=1e-12)


def test_alignment_equals_pearson_correlation_of_entries():
    A, B = random_spd(4, 3), random_spd(4, 4)
    a, b = A.flatten().numpy(), B.flatten().numpy()
    import numpy as np

    assert alignment(A, B).item() == pytest.approx(np.corrcoef(a, b)[0, 1], rel=1e-12)


def test_alignment_is_nan_for_1x1_and_constant_matrices():
    one = torch.ones(1, 1, dtype=torch.float64)
    assert math.isnan(alignment(one, one).item())
    const = torch.full((3, 3), 2.0, dtype=torch.float64)
    assert math.isnan(alignment(const, random_spd(3)).item())


def test_alignment_is_batched_over_leading_dims():
    A = torch.stack([random_spd(4, s) for s in range(3)])
    out = alignment(A, torch.stack([A[0], -A[1], 2 * A[2]]))
    assert out.tolist() == pytest.approx([1.0, -1.0, 1.0], abs=1e-12)


def test_centered_covariance_normalises_each_sample_then_centres():
    v = torch.tensor([[[3.0, 0.0], [0.0, 2.0], [0.0, -5.0]]], dtype=torch.float64)
    C, _, zero = second_moment(v, "centered")
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=torch.float64)
    u = u - u.mean(0)
    assert torch.allclose(C[0], u.T @ u / 3)
    assert zero.item() == 0


def test_zero_vectors_are_left_out_and_counted():
    v = torch.tensor([[[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, 0.0]]], dtype=torch.float64)
    C, _, zero = second_moment(v, "centered")
    C_ref, _, _ = second_moment(v[:, [0, 2]], "centered")
    assert zero.item() == 2
    assert torch.allclose(C, C_ref)
    assert torch.isfinite(C).all()


@pytest.mark.parametrize("dtype,small", [(torch.float64, 1e-10), (torch.float32, 1e-4), (torch.bfloat16, 1e-3),
                                         (torch.float16, 1e-3)])
@pytest.mark.parametrize("kind", ["centered", "raw"])
def test_vectors_at_rounding_level_count_as_zero(dtype, small, kind):
    # rows: three real vectors (the largest of norm 4), an exact zero, rounding noise (a fused
    # kernel's 1e-16 where the exact value is 0; in bfloat16 and float16 float32 rounding, 1e-7
    # relative: their kernels accumulate in float32) and a genuinely small real vector (norm
    # `small` * 1.4 / 4 of the largest: far above 16 eps in float64 and float32, and in bfloat16
    # and float16 far above 16 float32 eps though below their own eps)
    noise = 1e-16 if dtype == torch.float64 else 4e-7
    rows = torch.tensor([[4.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0], [0.0, 0.0, 0.0],
                         [noise, -noise, noise], [small, small, 0.0]], dtype=torch.float64)
    C, u, zero = second_moment(rows.to(dtype).unsqueeze(0), kind)
    C_ref, _, _ = second_moment(rows[[0, 1, 2, 5]].to(dtype).unsqueeze(0), kind)
    assert zero.item() == 2  # the exact zero and the noise; the small real vector is kept
    assert torch.equal(u[0, 3:5], torch.zeros(2, 3, dtype=dtype)) if kind == "centered" else True
    narrow = dtype in (torch.bfloat16, torch.float16)
    assert torch.allclose(C.double(), C_ref.double(), rtol=1e-2 if narrow else 1e-6, atol=0)
    # the rule: at most ZERO_EPS eps of the largest norm, eps of float32 for narrower dtypes
    from phasemap.measure.maths import ZERO_EPS, zero_eps
    assert zero_eps(dtype) == torch.finfo(torch.float32 if narrow else dtype).eps
    edge = ZERO_EPS * zero_eps(dtype) * 4.0
    # exactly at the edge where the dtype holds it, else a quarter below and above
    below, above = (edge, 1.5 * edge) if not narrow else (0.75 * edge, 1.25 * edge)
    for e, dropped in ((below, 1), (above, 0)):
        pair = torch.tensor([[4.0, 0, 0], [e, 0, 0]], dtype=torch.float64).to(dtype)
        assert second_moment(pair.unsqueeze(0), kind)[2].item() == dropped, (e, dropped)


def test_a_bfloat16_model_keeps_its_small_vectors():
    # inputs whose per-sample scale is lognormal (norms from ~1e-3 to ~1e2 of each other) and 5
    # exact zero inputs, through tanh layers (no unit is ever silent): only the 5 zero inputs
    # are zero vectors, in bfloat16 and float16 as in float32 (a rule at their own eps, 16 x
    # 7.8e-3, dropped every input below 1/8 of the largest: most of them), and the alignments
    # agree with float32's to the narrow dtypes' rounding
    import copy

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4))
    x = torch.randn(400, 16) * torch.exp(torch.randn(400, 1))
    x[:5] = 0.0
    y = torch.randn(400, 4)
    mse = lambda o, t: ((o - t) ** 2).sum(-1)  # noqa: E731
    zeros = ["n_zero_h_a", "n_zero_g_a", "n_zero_h_b", "n_zero_g_b"]
    ref = measure(model, x, y, mse, null_samples=0)
    assert ref[zeros].values.tolist() == [[5, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    cols = [f"{r}_{s}" for s in "ab" for r in ("rga", "rwa", "gwa")]
    for dtype in (torch.bfloat16, torch.float16):
        t = measure(copy.deepcopy(model).to(dtype), x.to(dtype), y.to(dtype), mse, null_samples=0)
        assert t[zeros].values.tolist() == ref[zeros].values.tolist(), dtype
        diff = (t[cols] - ref[cols]).abs().max().max()
        assert diff < 0.02, (dtype, diff)


def test_raw_second_moment_is_mean_outer_product():
    v = torch.randn(1, 50, 3, dtype=torch.float64)
    C, _, _ = second_moment(v, "raw")
    assert torch.allclose(C[0], v[0].T @ v[0] / 50)


def test_effective_rank_of_identity_is_width_and_of_rank_one_is_one():
    assert effective_rank(descending_eigvals(torch.eye(7, dtype=torch.float64))).item() == pytest.approx(7.0)
    x = torch.randn(5, 1, dtype=torch.float64)
    assert effective_rank(descending_eigvals(x @ x.T)).item() == pytest.approx(1.0, abs=1e-6)
    # two equal eigenvalues among zeros: rank 2
    assert effective_rank(torch.tensor([2.0, 2.0, 0.0, 0.0])).item() == pytest.approx(2.0)


def test_planted_power_law_gives_its_exponent():
    lam_g = torch.logspace(0, -3, 20, dtype=torch.float64)
    k, r2, n = power_law_fit(lam_g**2, lam_g, floor=1e-12)
    assert k.item() == pytest.approx(2.0, abs=1e-10)
    assert r2.item() == pytest.approx(1.0, abs=1e-10)
    assert n.item() == 20


def test_power_law_fit_uses_only_eigenvalues_above_the_floor():
    lam_b = torch.logspace(0, -8, 9, dtype=torch.float64)  # 1, 1e-1, ..., 1e-8
    k, _, n = power_law_fit(lam_b**0.5, lam_b, floor=1e-3)
    assert n.item() == 3  # eig(B) = 1, 0.1, 0.01 lie above 1e-3 * max; 1e-3 itself does not
    assert k.item() == pytest.approx(0.5)


def test_power_law_fit_on_matrices_with_planted_spectra():
    # H and G share eigenvectors, eig(H) = eig(G)^3: the exponent is 3 whatever the basis
    q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64))
    lam = torch.linspace(1.0, 0.2, 8, dtype=torch.float64)
    G = q @ torch.diag(lam) @ q.T
    H = q @ torch.diag(lam**3) @ q.T
    k, r2, _ = power_law_fit(descending_eigvals(H), descending_eigvals(G), floor=1e-6)
    assert k.item() == pytest.approx(3.0, abs=1e-8)


def test_too_few_eigenvalues_give_nan():
    k, r2, n = power_law_fit(torch.tensor([1.0, 0.5]), torch.tensor([1.0, 0.25]))
    assert math.isnan(k.item()) and n.item() == 2


def _small_model(K=3, activation="tanh"):
    return StackedMLP([5, 7, 6, 2], activation, seeds=list(range(K)))


def _planted(spectrum, basis):
    return basis @ torch.diag(spectrum) @ basis.T


def test_paired_power_law_keeps_the_sign_in_a_shared_basis():
    q = haar_rotations(40, 1, seed=5)[0]
    lam = torch.logspace(0, -2, 40, dtype=torch.float64)
    fit = power_law(_planted(1 / lam, q), _planted(lam, q))  # lambda_A = lambda_B^-1
    assert fit.k.item() == pytest.approx(-1.0, abs=1e-9) and fit.r2.item() >= 0.99 and fit.n.item() == 40
    assert fit.b.tolist() == pytest.approx(lam.tolist())  # B's eigenvalues, largest first
    assert fit.a.tolist() == pytest.approx((1 / lam).tolist())  # v_i^T A v_i
    # the sorted fit cannot see the sign: it pairs 100 with 1
    k_sorted, r2_sorted, _ = power_law_fit(descending_eigvals(_planted(1 / lam, q)), lam)
    assert k_sorted.item() == pytest.approx(1.0) and r2_sorted.item() == pytest.approx(1.0)


def test_unrelated_eigenbases_give_a_poor_paired_fit_while_the_sorted_fit_reports_two():
    q = haar_rotations(60, 2, seed=1)
    lam = torch.logspace(0, -1.5, 60, dtype=torch.float64)
    A, B = _planted(lam**2, q[0]), _planted(lam, q[1])
    fit = power_law(A, B)
    assert fit.r2.item() < 0.1  # measured 0.02
    k_sorted, r2_sorted, _ = power_law_fit(descending_eigvals(A), descending_eigvals(B))
    assert k_sorted.item() == pytest.approx(2.0) and r2_sorted.item() == pytest.approx(1.0)


def test_paired_fit_uses_pairs_above_the_floor_in_both():
    lam = torch.logspace(0, -6, 7, dtype=torch.float64)  # 1 ... 1e-6
    fit = power_law(torch.diag(lam**0.5), torch.diag(lam), floor=1e-3)
    assert fit.n.item() == 3 and fit.used.tolist() == [True] * 3 + [False] * 4
    assert fit.k.item() == pytest.approx(0.5)
    batch = power_law(torch.stack([torch.diag(lam**0.5), torch.diag(lam**2)]), torch.diag(lam).expand(2, 7, 7), 1e-9)
    assert batch.k.tolist() == pytest.approx([0.5, 2.0])  # batched over leading dims


@pytest.mark.parametrize("d_in, d_out", [(5, 8), (8, 5)])
def test_probe_exponents_are_the_paired_fits_of_the_layer_matrices(d_in, d_out):
    # Z_a = W^T W and Z_b = W W^T come from one decomposition; both sides' eigenvectors must
    # pair as a direct decomposition of each would
    g = torch.Generator().manual_seed(d_in)
    h_a = torch.randn(1, 400, d_in, generator=g, dtype=torch.float64) * torch.linspace(2, 0.2, d_in, dtype=torch.float64)
    W = torch.randn(1, d_out, d_in, generator=g, dtype=torch.float64)
    h_b = h_a @ W.transpose(1, 2)
    g_b = torch.tanh(h_b) * torch.randn(1, 400, 1, generator=g, dtype=torch.float64)
    out, _ = layer_metrics(h_a, h_b, g_b, W, pah_floor=1e-6)
    for side, h, grad, Z in (("a", h_a, g_b @ W, W.transpose(1, 2) @ W), ("b", h_b, g_b, W @ W.transpose(1, 2))):
        H, G = second_moment(h)[0], second_moment(grad)[0]
        for pair, A, B in (("hg", H, G), ("hz", H, Z), ("gz", G, Z)):
            fit = power_law(A, B, floor=1e-6)
            assert out[f"pah_{pair}_{side}_n"].item() == fit.n.item(), (pair, side)
            assert out[f"pah_{pair}_{side}"].item() == pytest.approx(fit.k.item(), rel=1e-6, abs=1e-9), (pair, side)
            k, _, _ = power_law_fit(descending_eigvals(A), descending_eigvals(B), 1e-6)
            assert out[f"pah_{pair}_{side}_sorted"].item() == pytest.approx(k.item(), rel=1e-6, nan_ok=True)


def test_per_sample_gradients_from_one_backward_equal_single_sample_autograd():
    torch.manual_seed(0)
    model = _small_model()
    task = Task(TaskSpec(name="fc2", input_dim=5, output_dim=2))
    x, y = task.sample(6, torch.Generator().manual_seed(1))
    out, _, h_bs = model(x, keep=True)
    grads = torch.autograd.grad(task.loss(out, y).sum(), h_bs)
    for i in range(6):
        out_i, _, h_bs_i = model(x[i : i + 1], keep=True)
        single = torch.autograd.grad(task.loss(out_i, y[i : i + 1]).sum(), h_bs_i)
        for l in range(3):
            assert torch.allclose(grads[l][:, i], single[l][:, 0], atol=1e-6)


def test_g_a_is_minus_gradient_with_respect_to_the_layer_input():
    model = _small_model(K=1, activation="linear")
    x = torch.randn(4, 5, requires_grad=True)
    task = Task(TaskSpec(name="fc2", input_dim=5, output_dim=2))
    y = torch.randn(4, 2)
    out, _, h_bs = model(x, keep=True)
    g_b0 = -torch.autograd.grad(task.loss(out, y).sum(), h_bs[0], retain_graph=True)[0]
    dx = torch.autograd.grad(task.loss(out, y).sum(), x)[0]
    assert torch.allclose(g_b0 @ model.weights[0], -dx, atol=1e-6)


def test_layer_metrics_golden_values_by_construction():
    # raw moments, samples h_a = the rows of W: E[h_a h_a^T] = W^T W / d_out, so RWA_a = 1;
    # g_b = h_b gives G_b = H_b, so RGA_b = 1.
    W = torch.randn(1, 5, 4, dtype=torch.float64)
    h_a = W.clone()  # (K=1, N=5, d_in=4)
    h_b = h_a @ W.transpose(1, 2)
    m, reasons = layer_metrics(h_a, h_b, h_b, W, covariance="raw")
    assert m["rwa_a"].item() == pytest.approx(1.0, abs=1e-12)
    assert m["rga_b"].item() == pytest.approx(1.0, abs=1e-12)
    assert -1 <= m["gwa_a"].item() <= 1
    assert set(METRIC_COLUMNS) <= set(m)
    assert reasons == [""]


@pytest.mark.parametrize("activation, chunk", [("relu", None), ("linear", None), ("tanh", 2)])
def test_measure_on_sequential_equals_the_stacked_path(activation, chunk):
    # measure computes g_a = W^T g_b per sample; the stacked path takes it from the backward
    # pass (for "linear" h_a of a layer is the previous h_b itself) and may go in chunks of
    # members (3 members in chunks of 2: a short last chunk)
    torch.manual_seed(0)
    model = StackedMLP([6, 8, 8, 3], activation, seeds=[3, 4, 5])
    task = Task(TaskSpec(name="fc2", input_dim=6, output_dim=3))
    x, y = task.sample(200, torch.Generator().manual_seed(2))
    wds = [0.5, 0.0, 2.0]  # balance: the stacked path's g signs must agree with measure's
    loss, layers = probe_stacked(model, task, x, y, "centered", 1e-4, chunk=chunk, weight_decay=wds)
    assert loss.shape == (3,) and all(m["rga_a"].shape == (3,) for m, _ in layers)
    assert not math.isnan(layers[0][0]["balance"][0].item()) and math.isnan(layers[0][0]["balance"][1].item())
    for k in range(3):
        table = measure(model.member(k), x, y, task.loss, weight_decay=wds[k])
        assert list(table["layer"]) == [1, 2, 3]
        assert table["probe_loss"].iloc[0] == pytest.approx(loss[k].item(), rel=1e-5)
        for l, (metrics, _) in enumerate(layers):
            for col in METRIC_COLUMNS:
                a, b = table[col].iloc[l], metrics[col][k].item()
                assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-4, abs=1e-6), col


def test_measure_counts_tokens_as_samples_and_removes_its_hooks():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.GELU(), nn.Linear(5, 3))
    x = torch.randn(7, 10, 4)  # (batch, tokens, features)
    y = torch.randn(7, 10, 3)
    per_sample = lambda out, y: 0.5 * ((out - y) ** 2).sum(-1)  # noqa: E731
    table = measure(net, x, y, per_sample)
    flat = measure(net, x.reshape(70, 4), y.reshape(70, 3), per_sample)
    # NFA: exact for the flat output, estimated from projections for tokens (output_directions)
    cols = [c for c in METRIC_COLUMNS if not c.startswith("nfa")]
    assert table[cols].equals(flat[cols]) or (table[cols] - flat[cols]).abs().max().max() < 1e-9
    for m in net.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_measure_removes_hooks_when_the_loss_fails_and_restores_requires_grad():
    net = nn.Sequential(nn.Linear(3, 3))
    net[0].weight.requires_grad_(False)

    def bad_loss(out, y):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        measure(net, torch.randn(4, 3), None, bad_loss)
    assert not net[0]._forward_hooks
    assert net[0].weight.requires_grad is False


def test_measure_names_the_reason_for_nan_alignments():
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 1))
    table = measure(net, torch.randn(50, 4), torch.randn(50, 1), lambda o, y: ((o - y) ** 2).sum(-1))
    last = table.iloc[-1]
    assert math.isnan(last["rga_b"]) and "rga_b: 1x1 matrix" in last["nan_reason"]


def test_weight_spectra_are_shared_between_sides_and_padded_with_zeros():
    # Z_a = W^T W (7x7, rank 3) and Z_b = W W^T (3x3) have the same nonzero eigenvalues
    W = torch.randn(2, 3, 7, dtype=torch.float64)
    h_a, h_b = torch.randn(2, 50, 7, dtype=torch.float64), torch.randn(2, 50, 3, dtype=torch.float64)
    m, _ = layer_metrics(h_a, h_b, torch.randn(2, 50, 3, dtype=torch.float64), W)
    direct_a = torch.linalg.eigvalsh(W.transpose(1, 2) @ W).flip(-1)
    direct_b = torch.linalg.eigvalsh(W @ W.transpose(1, 2)).flip(-1)
    assert torch.allclose(m["eig_z_b"], direct_b, rtol=1e-10)
    assert torch.allclose(m["eig_z_a"][:, :3], direct_b, rtol=1e-10)
    assert torch.equal(m["eig_z_a"][:, 3:], torch.zeros(2, 4, dtype=torch.float64))
    assert torch.allclose(m["eig_z_a"], direct_a.clamp_min(0), atol=1e-12)


def test_float32_spectra_agree_with_float64_on_a_trained_like_layer():
    # the stacked path decomposes in the activations' dtype (float32 for training): the PAH
    # exponents and effective ranks must match a float64 decomposition of the same samples
    g = torch.Generator().manual_seed(0)
    scales = torch.logspace(0, -2, 40, dtype=torch.float64)
    h_a = torch.relu(torch.randn(1, 2000, 40, generator=g, dtype=torch.float64) * scales)
    W = torch.randn(1, 40, 40, generator=g, dtype=torch.float64) / 40**0.5
    h_b = h_a @ W.transpose(1, 2)
    g_b = torch.randn(1, 2000, 40, generator=g, dtype=torch.float64) * scales.sqrt()
    m64, _ = layer_metrics(h_a, h_b, g_b, W)
    m32, _ = layer_metrics(h_a.float(), h_b.float(), g_b.float(), W.float())
    for col in ("pah_hg_a", "pah_hz_a", "pah_gz_b", "erank_h_a", "erank_h_b", "rga_a", "rwa_b"):
        assert m32[col].item() == pytest.approx(m64[col].item(), rel=1e-3), col


def test_float32_spectra_of_huge_weights_are_finite():
    # a member about to diverge: |W| ~ 1e19, so Z = W^T W ~ 1e38 overflows float32; the
    # float32 decomposition must still give Z's spectrum (matrices are scaled before the cast)
    g = torch.Generator().manual_seed(0)
    W = torch.randn(2, 6, 6, generator=g, dtype=torch.float64)
    W[1] *= 1e19
    h_a = torch.randn(2, 50, 6, generator=g)
    g_b = torch.randn(2, 50, 6, generator=g)
    m, _ = layer_metrics(h_a, h_a @ W.float().transpose(1, 2), g_b, W.float())
    direct = torch.linalg.eigvalsh(W.transpose(1, 2) @ W).flip(-1)
    assert torch.isfinite(m["eig_z_a"]).all()
    assert ((m["eig_z_a"] - direct).abs() <= 1e-5 * direct[:, :1]).all()  # float32 rounding of the largest


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_lockstep_eigenvalues_equal_lapack(dtype):
    # the CUDA path for large batches: Householder tridiagonalisation and Sturm multisection
    g = torch.Generator().manual_seed(0)
    for n in (1, 2, 3, 7, 40):
        x = torch.randn(5, n, n, generator=g, dtype=torch.float64)
        A = x @ x.transpose(1, 2)
        A[0] = 0  # a zero matrix
        A[1] = torch.diag(torch.arange(n, dtype=torch.float64) - 2)  # already diagonal, negatives
        A[2] = torch.eye(n, dtype=torch.float64) * 3  # one eigenvalue n times
        ref = torch.linalg.eigvalsh(A)
        got = batched_eigvalsh(A.to(dtype)).double()
        tol = (1e-12 if dtype == torch.float64 else 1e-5) * ref.abs().amax().clamp_min(1)
        assert (got - ref).abs().max() <= tol, (n, dtype)
    assert batched_eigvalsh(torch.ones(2, 3, 4, 4)).shape == (2, 3, 4)  # any leading dims


def test_lockstep_eigenvalues_at_extreme_scales_and_huge_finite_entries():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 40, 40, generator=g, dtype=torch.float64)
    C = x @ x.transpose(1, 2)
    ref = torch.linalg.eigvalsh(C)
    for s in (1e20, 1e-20, 1e-30):  # float32 squares of these over- or underflow unscaled
        got = batched_eigvalsh((C * s).float()).double() / s
        assert torch.allclose(got, ref, atol=1e-5 * ref.abs().max().item()), s
    huge = torch.full((1, 40, 40), 1e36) + torch.eye(40) * 1e36  # finite, but its sum overflows
    assert descending_eigvals(huge).isfinite().all()


def test_measure_works_on_a_bfloat16_model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).to(torch.bfloat16)
    x, y = torch.randn(200, 8, dtype=torch.bfloat16), torch.randn(200, 4, dtype=torch.bfloat16)
    table = measure(net, x, y, lambda out, y: 0.5 * ((out - y) ** 2).sum(-1))
    ref = measure(net.float(), x.float(), y.float(), lambda out, y: 0.5 * ((out - y) ** 2).sum(-1))
    assert table["erank_h_b"].notna().all()
    assert (table["rga_a"] - ref["rga_a"]).abs().max() < 0.05  # bfloat16 activations: ~3 digits
