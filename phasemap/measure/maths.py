"""The pure maths of the measurements (SCIENCE.md): covariances, alignments and their nulls,
eigenvalues, power laws, ranks, trace ratios, balance, neural collapse and the neural feature
ansatz. Functions of tensors, batched over any leading dimensions (a pack's K); no models,
no storage.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch

# A row counts as zero when its norm is at most ZERO_EPS * eps times the largest row norm of its
# matrix (the layer's samples; per member of a pack), eps that of the precision the vectors were
# accumulated in: the dtype's own for float32 and float64, float32's for narrower dtypes (bfloat16,
# float16), whose kernels accumulate in float32. Where the exact value is 0 (the query gradient at
# position 0 of causal attention), fused kernels return rounding noise instead:
# F.scaled_dot_product_attention on a CPU left, relative to the layer's largest norm, up to 10
# float32 eps in float32 over 324 shapes (sequence 16-256, head dim 16-128, 1-4 heads, score
# scales 0.3-3; median about 3 eps), and over 54 of those shapes up to 2.2 float32 eps in bfloat16
# and 6.9 in float16 (medians 0.5 and 1.4; a third exact zeros): float32 rounding, stored in a
# dtype whose exponent range holds it (bfloat16 has float32's), not rounding at bfloat16's eps
# (7.8e-3, 65000 times larger). 16 leaves a margin over that. It drops only vectors below 2e-6 of
# the largest (float32, bfloat16, float16) and 4e-15 (float64). A threshold at the narrow dtype's
# own eps would drop real vectors: in bfloat16, everything below 1/8 of the largest (most samples
# of inputs whose per-sample scale is lognormal), a selection bias; a small vector computed in
# float32 and rounded to bfloat16 keeps its direction to bfloat16's eps of its own norm.
ZERO_EPS = 16


def zero_eps(dtype: torch.dtype) -> float:
    """The eps of the precision a dtype's vectors are accumulated in: the dtype's own for float32
    and wider, float32's for narrower floating dtypes (bfloat16, float16)."""
    return torch.finfo(torch.promote_types(dtype, torch.float32)).eps


def zero_rows(v: torch.Tensor, norms: torch.Tensor | None = None) -> torch.Tensor:
    """Which rows of v (..., N, d) count as zero (..., N, 1): norm at most ZERO_EPS *
    zero_eps(v.dtype) times the largest finite row norm among the N, rounding noise included.
    Rows with NaN count as zero too (no direction), rows with inf do not (they make the matrix
    non-finite). `norms`: v's row norms (..., N, 1), when already computed."""
    norms = (v.norm(dim=-1, keepdim=True) if norms is None else norms).to(torch.promote_types(v.dtype, torch.float32))
    largest = torch.where(torch.isfinite(norms), norms, 0.0).amax(-2, keepdim=True)  # (..., 1, 1)
    return ~(norms > (ZERO_EPS * zero_eps(v.dtype)) * largest)


def second_moment(v: torch.Tensor, kind: str = "centered",
                  norms: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Covariance of the rows of v (..., N, d).

    centered: every row scaled to unit norm, then the mean subtracted (the paper's default);
    raw: E[v v^T] of the raw rows. Rows that are zero have no direction: they are left out,
    rows at the rounding level of the largest included (`zero_rows`; normalised, rounding noise
    would be a random unit vector). Returns (C (..., d, d), the centred rows used (..., N, d),
    rows left out (...,)). `norms`: v's row norms (..., N, 1), when already computed.
    """
    norms = v.norm(dim=-1, keepdim=True) if norms is None else norms  # (..., N, 1)
    keep = ~zero_rows(v, norms)
    n = keep.sum(-2, keepdim=True).clamp_min(1)  # (..., 1, 1)
    if kind == "centered":
        inv = keep / norms.clamp_min(torch.finfo(v.dtype).tiny)  # 0 for zero rows: they stay zero
        # (..., 1, d): the mean unit row, summed in float64: a float32 sum of N equal rows on one
        # thread drifts by ~N eps, which would leave a constant layer a spread above rounding
        wide = torch.float64 if v.dtype != torch.float64 and v.device.type != "mps" else v.dtype
        mean = ((inv.to(wide).transpose(-1, -2) @ v.to(wide)) / n).to(v.dtype)
        u = torch.addcmul(-mean, v, inv)
        if not bool(keep.all()):  # rare: a zero row must stay zero, not become -mean
            u.mul_(keep)
    elif kind == "raw":
        u = v if bool(keep.all()) else v * keep
    else:
        raise ValueError(f"`kind in ('centered', 'raw')` must hold, but got {kind=}")
    C = u.transpose(-1, -2) @ u / n
    return C, u, (~keep).sum((-2, -1))


def alignment(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of the entries of A and B (..., d, d); NaN when undefined.

    Undefined for 1x1 matrices and for a constant matrix (see `alignment_reason`).
    """
    return _aligned(_unit_entries(A), _unit_entries(B))


def _unit_entries(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """M's entries (..., d*d) centred and scaled to unit norm, and where that is defined.

    Prepared once per matrix when it takes part in several alignments.
    """
    m = M.flatten(-2)
    m = m - m.mean(-1, keepdim=True)
    norm = m.norm(dim=-1, keepdim=True)
    ok = _spread(norm.squeeze(-1), M) & (m.shape[-1] > 1)
    return m / norm.clamp_min(torch.finfo(m.dtype).tiny), ok


def _aligned(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """alignment of two matrices prepared by _unit_entries."""
    (ua, ok_a), (ub, ok_b) = a, b
    return torch.where(ok_a & ok_b, (ua * ub).sum(-1).clamp(-1.0, 1.0), torch.nan)


def _spread(centred_norm: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """True where a matrix is not constant: the norm of its centred entries (...) is above
    rounding (relative to its size and largest entry)."""
    eps = 64 * torch.finfo(M.dtype).eps
    return centred_norm > eps * _max_abs(M) * M.shape[-1]  # sqrt(d * d) entries


def _max_abs(M: torch.Tensor) -> torch.Tensor:
    """max |entry| of each matrix (..., n, n) without a copy of M; NaN where M has NaN."""
    return torch.maximum(M.amax((-2, -1)), -M.amin((-2, -1)))


def haar_rotations(d: int, samples: int, seed: int = 0, dtype=torch.float64, device=None) -> torch.Tensor:
    """`samples` Haar-random orthogonal (d, d) matrices, the same for a given (d, samples, seed).

    QR of a Gaussian matrix with the signs of R's diagonal moved into Q (Mezzadri 2007).
    """
    return _haar(d, samples, seed, dtype, torch.device(device or "cpu"))


@functools.lru_cache(maxsize=32)
def _haar(d: int, samples: int, seed: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    g = torch.randn(samples, d, d, generator=torch.Generator().manual_seed(seed * 7919 + d), dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    return q.to(dtype=dtype, device=device)


def alignment_null(A: torch.Tensor, B: torch.Tensor | None = None, samples: int = 16, *,
                   eig_b: torch.Tensor | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """How high alignment(A, B) is by chance: E_Q[alignment(A, Q B Q^T)] over Haar-random Q.

    The same spectra with unrelated eigenvectors. Only B's eigenvalues matter (Q V_B is Haar
    when Q is), so B may be given by them (`eig_b`, (..., d)). Estimated from `samples`
    rotations, the same ones on every call (seeded by d and `seed`): returns (mean, its
    standard error), each (...); NaN where alignment(A, B) is undefined or samples < 2.
    """
    b = descending_eigvals(B.to(torch.float64)) if eig_b is None else eig_b
    return _nulls(_unit_entries(A.to(torch.float64)), [b], samples, seed)[0]


def _nulls(unit_a: tuple[torch.Tensor, torch.Tensor], spectra: list[torch.Tensor], samples: int, seed: int = 0):
    """alignment_null of A, given as `_unit_entries(A)`, against several spectra (..., d): [(mean, se)].

    With B' = P diag(b) P^T (P Haar): <A - mean(A), B'> = sum_i b_i p_i^T (A - mean(A)) p_i
    and the mean of B''s entries is sum_i b_i (1^T p_i)^2 / d^2, so the rotations cost one
    (d, d) by (d, samples * d) product with A, shared by every spectrum (in float32: the
    estimate's standard error is far above its rounding).
    """
    ua, ok_a = unit_a  # (A - mean) / |A - mean|, flattened (..., d * d); where that is defined
    d = spectra[0].shape[-1]
    nan = torch.full(ok_a.shape, torch.nan, dtype=torch.float64, device=ua.device)
    if samples < 2 or d < 2:
        return [(nan, nan.clone()) for _ in spectra]
    Abar = torch.where(ok_a[..., None], ua, 0.0).unflatten(-1, (d, d)).to(torch.float32)
    bs, oks = [], []
    for b in spectra:
        b = b.to(torch.float64)
        ok = ok_a & torch.isfinite(b).all(-1) & (b.abs().amax(-1) > 0)
        bs.append(torch.where(ok[..., None], b, 0.0))
        oks.append(ok)
    P = haar_rotations(d, samples, seed, torch.float32, ua.device)  # (samples, d, d)
    # every rotation in one product: Abar [P_1 ... P_s], (..., d, samples * d)
    Ps = P.transpose(0, 1).reshape(d, samples * d)
    diag = (Ps * (Abar @ Ps)).sum(-2).unflatten(-1, (samples, d)).to(torch.float64)  # (..., samples, d): p_i^T Abar p_i
    ones_sq = P.sum(-2).to(torch.float64) ** 2  # (samples, d): (1^T p_i)^2
    result = []
    for b, ok in zip(bs, oks):
        b = b.unsqueeze(-2)  # (..., 1, d)
        centred_sq = (b * b).sum(-1) - (ones_sq * b).sum(-1) ** 2 / d**2  # (..., samples): |B' - mean(B')|^2
        v = ((diag * b).sum(-1) / centred_sq.clamp_min(torch.finfo(torch.float64).tiny).sqrt()).clamp(-1.0, 1.0)
        result.append((torch.where(ok, v.mean(-1), torch.nan), torch.where(ok, v.std(-1) / samples**0.5, torch.nan)))
    return result


def excess(alpha, null):
    """(alpha - null) / (1 - null): 1 perfectly aligned, 0 no better than chance for these
    spectra, below 0 worse. Works on tensors, arrays and pandas columns alike."""
    return (alpha - null) / (1 - null)


def alignment_reason(A: torch.Tensor) -> str:
    """Why alignment with A is undefined ('' when it is defined); A is one (d, d) matrix."""
    if A.shape[-1] == 1:
        return "1x1 matrix"
    if not torch.isfinite(A).all():
        return "non-finite matrix"
    a = A.flatten() - A.flatten().mean()
    if not bool(_spread(a.norm(), A)):
        return "constant matrix"
    return ""


def descending_eigvals(C: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of symmetric PSD C (..., d, d), largest first, rounding negatives set to 0.

    Matrices with non-finite entries (a diverged member) give NaN without failing the batch.
    """
    finite = torch.isfinite(_max_abs(C))  # (...): any NaN or inf entry makes it so
    safe = C if bool(finite.all()) else torch.where(finite[..., None, None], C, 0.0)
    if safe.is_cuda and safe.shape[-1] > 32 and safe[..., 0, 0].numel() >= CUDA_LOCKSTEP_EIG_BATCH:
        # torch decomposes a batch of matrices larger than 32 on CUDA one matrix at a time
        # (one cuSOLVER call each): thousands per probe at large K. This takes a fixed number
        # of batched steps instead.
        eig = batched_eigvalsh(safe).flip(-1)
    else:
        try:
            eig = torch.linalg.eigvalsh(safe).flip(-1)
        except torch.linalg.LinAlgError:  # rare convergence failure: PSD, so singular values agree
            eig = torch.linalg.svdvals(safe)
    return torch.where(finite[..., None], eig.clamp_min(0.0), torch.nan)


# From this many matrices on, a CUDA batch goes to batched_eigvalsh (a guess, not yet timed on
# a GPU: benchmarks/eig_speed.py compares the two on the device at hand).
CUDA_LOCKSTEP_EIG_BATCH = 256


def batched_eigvalsh(A: torch.Tensor, bits: int | None = None) -> torch.Tensor:
    """Eigenvalues (ascending) of symmetric A (..., n, n), all matrices in lockstep.

    Householder reduction to tridiagonal form (n - 2 batched steps on A's dtype), then
    multisection on Sturm counts in float64: every eigenvalue of every matrix is narrowed
    at once until its interval is 2^-bits of the matrix's Gershgorin range (default: 32 for
    float32, 50 for float64). The absolute error is that of any backward-stable solver in A's
    dtype (~eps * |A|), plus the range times 2^-bits. The number of kernel launches does not
    grow with the batch.
    """
    bits = bits or (50 if A.dtype == torch.float64 else 32)
    lead, n = A.shape[:-2], A.shape[-1]
    if n == 1:
        return A.reshape(*lead, 1).clone()
    # each matrix scaled to max |entry| = 1 (as LAPACK does): norms of columns neither
    # overflow nor underflow in A's dtype
    A = A.reshape(-1, n, n)
    scale = _max_abs(A).clamp_min(torch.finfo(A.dtype).tiny)  # (M,)
    A = A / scale[:, None, None]
    M = A.shape[0]
    diag = torch.empty(M, n, dtype=A.dtype, device=A.device)
    off = torch.empty(M, n - 1, dtype=A.dtype, device=A.device)
    for k in range(n - 2):
        x = A[:, k + 1:, k]  # (M, m): the column below the diagonal
        alpha = -torch.where(x[:, 0] >= 0, 1.0, -1.0).to(A.dtype) * x.norm(dim=1)  # H x = alpha e1
        v = x.clone()
        v[:, 0] -= alpha
        vv = (v * v).sum(1)
        beta = torch.where(vv > 0, 2 / vv.clamp_min(torch.finfo(A.dtype).tiny), 0.0)  # H = I - beta v v^T
        B = A[:, k + 1:, k + 1:]
        p = beta[:, None] * (B @ v[:, :, None]).squeeze(2)
        w = p - (0.5 * beta * (v * p).sum(1))[:, None] * v
        B -= v[:, :, None] * w[:, None, :] + w[:, :, None] * v[:, None, :]  # H B H
        diag[:, k], off[:, k] = A[:, k, k], alpha
    diag[:, n - 2], diag[:, n - 1], off[:, n - 2] = A[:, n - 2, n - 2], A[:, n - 1, n - 1], A[:, n - 1, n - 2]
    eig = _tridiagonal_eigvalsh(diag.double(), off.double(), bits) * scale.double()[:, None]
    return eig.to(A.dtype).reshape(*lead, n)


def _tridiagonal_eigvalsh(d: torch.Tensor, e: torch.Tensor, bits: int, points: int = 3) -> torch.Tensor:
    """Eigenvalues (ascending) of the symmetric tridiagonal matrices (d (M, n), e (M, n-1)).

    Each pass evaluates `points` Sturm counts per eigenvalue (log2(points + 1) bits): more
    points mean fewer launches but more memory touched per launch.
    """
    M, n = d.shape
    e2 = e * e
    radius = torch.zeros_like(d)
    radius[:, 1:] += e.abs()
    radius[:, :-1] += e.abs()
    lo, hi = (d - radius).amin(1), (d + radius).amax(1)  # Gershgorin: every eigenvalue inside
    pad = (hi - lo).clamp_min(hi.abs().maximum(lo.abs())) * 1e-12 + torch.finfo(d.dtype).tiny
    lo, hi = lo - pad, hi + pad
    pivmin = torch.finfo(d.dtype).tiny * e2.amax(1).clamp_min(1.0)  # smallest pivot allowed
    j = torch.arange(n, device=d.device)
    a = lo[:, None].expand(M, n).clone()  # the j-th eigenvalue of each matrix lies in [a, b)
    b = hi[:, None].expand(M, n).clone()
    frac = torch.arange(1, points + 1, device=d.device, dtype=d.dtype) / (points + 1)
    for _ in range(math.ceil(bits / math.log2(points + 1))):
        x = a[..., None] + (b - a)[..., None] * frac  # (M, n, points)
        # Sturm count: the number of eigenvalues below x is the number of negative pivots of
        # the LDL^T factorisation of T - x I
        q = d[:, :1, None] - x
        q = torch.where(q.abs() < pivmin[:, None, None], -pivmin[:, None, None], q)
        count = (q < 0).to(torch.int32)
        for i in range(1, n):
            q = d[:, i:i + 1, None] - x - e2[:, i - 1:i, None] / q
            q = torch.where(q.abs() < pivmin[:, None, None], -pivmin[:, None, None], q)
            count += q < 0
        below = count <= j[None, :, None]  # x at or below eigenvalue j: it becomes the new a
        a = torch.where(below, x, a[..., None]).amax(-1)
        b = torch.where(below, b[..., None], x).amin(-1)
    return (a + b) / 2


def effective_rank(eigs: torch.Tensor) -> torch.Tensor:
    """exp(entropy(p)), p = eigenvalues / their sum (Roy & Vetterli); NaN for a zero matrix."""
    total = eigs.sum(-1, keepdim=True)
    p = eigs / total.clamp_min(torch.finfo(eigs.dtype).tiny)
    entropy = -(torch.where(p > 0, p * p.log(), 0.0)).sum(-1)
    return torch.where(total.squeeze(-1) > 0, entropy.exp(), torch.nan)


def descending_eigh(C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (..., d), largest first, negatives from rounding set to 0, and their
    eigenvectors as columns (..., d, d) of symmetric PSD C; NaN for matrices with non-finite
    entries (the rest of the batch is unaffected)."""
    finite = torch.isfinite(_max_abs(C))
    safe = C if bool(finite.all()) else torch.where(finite[..., None, None], C, 0.0)
    try:
        eig, vec = torch.linalg.eigh(safe)
        eig, vec = eig.flip(-1), vec.flip(-1)
    except torch.linalg.LinAlgError:  # rare convergence failure: PSD, so the SVD's U will do
        vec, eig, _ = torch.linalg.svd(safe)
    eig = torch.where(finite[..., None], eig.clamp_min(0.0), torch.nan)
    return eig, torch.where(finite[..., None, None], vec, torch.nan)


def paired_values(A: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """a_i = v_i^T A v_i for the columns v_i of V (..., d, m): A seen through B's eigenbasis."""
    return ((A @ V) * V).sum(-2)


class PowerLaw(NamedTuple):
    """A fit lambda_A ~ lambda_B^k. `a` and `b` (..., d): the pairs, B's eigenvalues largest
    first; `used` marks the pairs the fit used, `n` counts them."""

    k: torch.Tensor
    r2: torch.Tensor
    n: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    used: torch.Tensor


def power_law(A: torch.Tensor, B: torch.Tensor, floor: float = 1e-4) -> PowerLaw:
    """The paired power law lambda_A ~ lambda_B^k of symmetric PSD A and B (..., d, d).

    With B = sum_i lambda_i v_i v_i^T, a_i = v_i^T A v_i is fitted against lambda_i (SCIENCE.md):
    the sign is kept (lambda_A = lambda_B^-1 in a shared basis gives k = -1) and unrelated
    eigenbases give a poor fit (R^2 near 0). `power_law_fit` is the sorted-spectra fit.
    """
    A, B = A.to(torch.float64), B.to(torch.float64)
    b, V = descending_eigh(B)
    a = paired_values(A, V)
    k, r2, n, used = _log_fit(a, b, floor, paired=True)
    return PowerLaw(k, r2, n, a, b, used)


def power_law_fit(eig_a: torch.Tensor, eig_b: torch.Tensor, floor: float = 1e-4):
    """The sorted-spectra fit lambda_A ~ lambda_B^k (paper Fig. 3; the `_sorted` columns).

    Both spectra (..., d) are sorted descending and paired by rank; the fit uses the leading
    eigenvalues that are above `floor` times the largest of their own spectrum in both. Never
    negative, and a good fit for unrelated eigenbases too: `power_law` pairs through
    eigenvectors. Returns (k, R^2, n); k and R^2 are NaN with fewer than 3 usable pairs.
    """
    ea, eb = eig_a.sort(-1, descending=True).values, eig_b.sort(-1, descending=True).values
    k, r2, n, _ = _log_fit(ea, eb, floor, paired=False)
    return k, r2, n


def _log_fit(a: torch.Tensor, b: torch.Tensor, floor: float, paired: bool):
    """Least-squares slope of log a on log b (..., d), b descending: (k, R^2, n, used).

    Used: the leading run of b above `floor` times its largest, where a is above `floor` times
    its largest too (for sorted spectra also a leading run; paired values are in B's order).
    """
    tiny = torch.finfo(torch.float64).tiny
    a, b = a.to(torch.float64), b.to(torch.float64)
    a_ok = (a > floor * a.amax(-1, keepdim=True)) & (a > 0)
    b_ok = (b > floor * b[..., :1]) & (b > 0)
    if paired:
        use = b_ok.to(torch.int64).cumprod(-1).bool() & a_ok
    else:
        use = (a_ok & b_ok).to(torch.int64).cumprod(-1).bool()
    n = use.sum(-1)
    w = use.to(torch.float64)
    x = torch.where(use, b.clamp_min(tiny).log(), 0.0)
    y = torch.where(use, a.clamp_min(tiny).log(), 0.0)
    cnt = w.sum(-1).clamp_min(1)
    mx, my = (x * w).sum(-1) / cnt, (y * w).sum(-1) / cnt
    dx, dy = (x - mx.unsqueeze(-1)) * w, (y - my.unsqueeze(-1)) * w
    sxx, syy, sxy = (dx * dx).sum(-1), (dy * dy).sum(-1), (dx * dy).sum(-1)
    ok = (n >= 3) & (sxx > 0)
    k = torch.where(ok, sxy / sxx.clamp_min(tiny), torch.nan)
    r2 = torch.where(ok & (syy > 0), sxy**2 / (sxx * syy).clamp_min(tiny), torch.nan)
    return k, r2, n, use


def trace_ratio(v: torch.Tensor, norms: torch.Tensor | None = None) -> torch.Tensor:
    """Tr[E[v] E[v]^T] / Tr[E[v v^T]] = |mean v|^2 / mean |v|^2 of raw rows v (..., N, d), in
    [0, 1]: 1 when every sample is the same vector, near 0 for centred ones; NaN for all-zero v.
    `norms`: v's row norms (..., N, 1), when already computed (one pass over v fewer)."""
    mean = v.mean(-2)
    num = (mean * mean).sum(-1).to(torch.float64)
    squares = (v * v).sum(-1) if norms is None else norms.squeeze(-1).square()
    den = squares.mean(-1).to(torch.float64)
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(torch.float64).tiny), torch.nan)


def balance(h_a: torch.Tensor, g_b: torch.Tensor, W: torch.Tensor, weight_decay) -> torch.Tensor:
    """The theory's stationarity condition for L2 weight decay gamma: |E[g_b h_a^T] - gamma W| /
    |gamma W| (Frobenius) on raw vectors, g_b = -dl/dh_b. At an SGD stationary point of the mean
    loss plus gamma/2 |W|^2, -grad_W = E[g_b h_a^T] = gamma W, so it is 0 there. (..., N, d)
    samples, W (..., d_out, d_in), weight_decay (...,) or None; NaN where gamma is 0 or unknown.
    """
    shape = W.shape[:-2]
    if weight_decay is None:
        return torch.full(shape, torch.nan, dtype=torch.float64, device=W.device)
    gamma = torch.as_tensor(weight_decay, dtype=torch.float64, device=W.device).expand(shape)
    E = (g_b.transpose(-1, -2) @ h_a).to(torch.float64) / h_a.shape[-2]  # (..., d_out, d_in)
    target = gamma[..., None, None] * W.to(torch.float64)
    ratio = (E - target).flatten(-2).norm(dim=-1) / target.flatten(-2).norm(dim=-1).clamp_min(torch.finfo(torch.float64).tiny)
    return torch.where(gamma > 0, ratio, torch.nan)


def neural_collapse(h: torch.Tensor, labels: torch.Tensor, n_classes: int, W: torch.Tensor | None = None,
                    logits: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Neural collapse of features h (..., N, d) with labels (N,) in [0, n_classes) (SCIENCE.md).

    With class means mu_c, their mean mu_G and M the centred class means (..., C, d):
    nc1 = Tr(Sigma_W Sigma_B^+) / C; nc2 = | M M^T / |M M^T| - E / |E| | for the simplex ETF
    E = I - 11^T / C, and nc2_norms = std / mean of the class means' norms; nc3 = | W / |W| -
    M / |M| | for classifier rows W (..., C, d); nc4 = the share of samples whose nearest class
    mean is not the network's prediction argmax(logits (..., N, C)). All 0 at collapse; classes
    absent from the samples are left out; NaN where not given, undefined, or where W or the logits
    do not have one row or column per class (not a classifier over these labels). Each (...,).
    """
    h = h.to(torch.float64)
    onehot = torch.nn.functional.one_hot(labels.to(h.device).long(), n_classes).to(h.dtype)  # (N, C)
    counts = onehot.sum(0)
    present = counts > 0
    onehot, counts = onehot[:, present], counts[present]
    C = int(present.sum())
    means = (onehot.T @ h) / counts[:, None]  # (..., C, d)
    M = means - means.mean(-2, keepdim=True)
    within = h - onehot @ means  # (..., N, d): each sample minus its class mean
    sigma_w = within.transpose(-1, -2) @ within / h.shape[-2]
    sigma_b = M.transpose(-1, -2) @ M / C
    nan = torch.full(h.shape[:-2], torch.nan, dtype=torch.float64, device=h.device)
    try:
        pinv = torch.linalg.pinv(sigma_b, hermitian=True)
    except torch.linalg.LinAlgError:  # eigh failed to converge (rank C - 1 of d, few samples): the SVD's
        pinv = torch.linalg.pinv(sigma_b)
    out = {"nc1": torch.diagonal(sigma_w @ pinv, dim1=-2, dim2=-1).sum(-1) / C}

    def unit(A):
        return A / A.flatten(-2).norm(dim=-1)[..., None, None].clamp_min(torch.finfo(A.dtype).tiny)

    etf = torch.eye(C, dtype=h.dtype, device=h.device) - 1.0 / C
    out["nc2"] = (unit(M @ M.transpose(-1, -2)) - unit(etf)).flatten(-2).norm(dim=-1)
    norms = M.norm(dim=-1)
    out["nc2_norms"] = norms.std(-1) / norms.mean(-1).clamp_min(torch.finfo(h.dtype).tiny)
    if W is not None and W.shape[-2] == n_classes:
        out["nc3"] = (unit(W.to(torch.float64)[..., present, :]) - unit(M)).flatten(-2).norm(dim=-1)
    else:
        out["nc3"] = nan
    if logits is not None and logits.shape[-1] == n_classes:  # predictions among the classes
        nearest = torch.cdist(h, means).argmin(-1)  # (..., N) index among present classes
        predicted = logits.argmax(-1)
        present_ids = present.nonzero().flatten().to(h.device)
        out["nc4"] = (present_ids[nearest] != predicted).to(torch.float64).mean(-1)
    else:
        out["nc4"] = nan
    if C < 2:
        out = {k: nan.clone() for k in out}
    return out


def nfa(W: torch.Tensor, agop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The neural feature ansatz of a layer: W^T W (W (..., d_out, d_in)) against the AGOP
    (..., d_in, d_in) of the network output with respect to the layer's input. Returns the
    centred Pearson alignment of their entries and the uncentred cosine <A, B> / (|A| |B|) the
    NFA papers use; NaN where undefined (a zero AGOP)."""
    W = W.to(torch.float64)
    Z, agop = W.transpose(-1, -2) @ W, agop.to(torch.float64)
    norms = Z.flatten(-2).norm(dim=-1) * agop.flatten(-2).norm(dim=-1)
    cosine = (Z * agop).sum((-2, -1)) / norms.clamp_min(torch.finfo(torch.float64).tiny)
    return alignment(Z, agop), torch.where(norms > 0, cosine.clamp(-1.0, 1.0), torch.nan)


DEGENERATE = {1: "spread at rounding level (every sample points the same way)",
              2: "fewer than 2 non-zero samples"}


def degenerate(C: torch.Tensor, n_kept: torch.Tensor, kind: str = "centered") -> torch.Tensor:
    """Why a covariance from `second_moment` is meaningless (0: it is not), per matrix (...,).

    1: its spread is at the rounding level of the samples' scale before centring: the trace of
    a centred covariance of unit rows is at most d * (8 eps)^2, about 64 times what rounding leaves
    of a layer whose output is its bias for every sample (measured); 2: it was built from
    fewer than 2 non-zero samples (one direction cannot be centred). Raw second moments are
    not centred: only rule 2 (fewer than 1 sample) applies to them.
    """
    d = C.shape[-1]
    if d == 1:  # every alignment with a 1x1 matrix is undefined, and says so itself
        return torch.zeros(C.shape[:-2], dtype=torch.int8, device=C.device)
    if kind == "raw":
        return torch.where(n_kept < 1, 2, 0).to(torch.int8)
    tol = d * (8 * torch.finfo(C.dtype).eps) ** 2  # unit rows: the scale before centring is 1
    code = torch.where(torch.diagonal(C, dim1=-2, dim2=-1).sum(-1) <= tol, 1, 0)
    return torch.where(n_kept < 2, 2, code).to(torch.int8)
