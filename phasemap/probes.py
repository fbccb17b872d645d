"""Measurements of the Canonical Representation Hypothesis (SCIENCE.md).

Pure tensor functions, batched over any leading dimensions (a pack's K), plus two ways to
collect a layer's `h_a, h_b, g_b, W`:
- `probe_stacked` for the stacked MLP (one forward, one backward for all K members, or
  for chunks of members that fit in a CPU's cache),
- `measure` for any `torch.nn.Module`, by hooks on its `nn.Linear` layers.

For a linear layer h_b = W h_a + b, the per-sample gradient g_a = -dl/dh_a through the layer
is W^T g_b: `measure` computes it so, `probe_stacked` takes it from the backward pass, which
computes it for every layer but the first anyway. Sums over samples and eigendecompositions
run in the activations' dtype; the (d, d) matrices, alignments and fits in float64.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import NamedTuple

import pandas as pd
import torch
from torch import nn

from . import attention

log = logging.getLogger(__name__)

RELATIONS = ("rga", "rwa", "gwa")
PAH_PAIRS = ("hg", "hz", "gz")  # lambda_H ~ lambda_G^k, lambda_H ~ lambda_Z^k, lambda_G ~ lambda_Z^k
METRIC_COLUMNS = (
    [f"{r}_{s}" for s in "ab" for r in RELATIONS]
    + ["cross_b"]
    # paired through B's eigenvectors (signed), then the sorted-spectra fit of the paper's Fig. 3
    + [f"pah_{p}_{s}{suffix}" for s in "ab" for p in PAH_PAIRS for suffix in ("", "_r2", "_n")]
    + [f"pah_{p}_{s}_sorted{suffix}" for s in "ab" for p in PAH_PAIRS for suffix in ("", "_r2", "_n")]
    + ["erank_h_a", "erank_h_b", "n_zero_h_a", "n_zero_g_a", "n_zero_h_b", "n_zero_g_b"]
    + ["erank_g_a", "erank_g_b"]
    # trace ratios Tr[E[v]E[v]^T] / Tr[E[vv^T]] of the raw vectors (paper Fig. 10)
    + ["r_h_a", "r_h_b", "r_g_a", "r_g_b"]
    # the theory's balance condition |E[g_b h_a^T] - gamma W| / |gamma W| (NaN at gamma = 0)
    + ["balance"]
    # neural collapse of the layer's input features h_a (classification; NaN otherwise):
    # NC1-NC2 at every layer, NC3 (classifier against class means) and NC4 at the output layer
    + ["nc1", "nc2", "nc2_norms", "nc3", "nc4"]
    # the neural feature ansatz: W^T W against the AGOP of the network output w.r.t. h_a
    + ["nfa", "nfa_cos"]
    # stationarity |M_t - M_t'| / |M_t| of H and G since the previous probe (NaN at the first)
    + ["stat_h_a", "stat_g_a", "stat_h_b", "stat_g_b"]
    # the null of each relation (alignment_null) and its Monte Carlo standard error
    + [f"{r}_{s}_null{suffix}" for s in "ab" for r in RELATIONS for suffix in ("", "_se")]
)
NULL_SAMPLES = 8  # Haar rotations per null estimate (probe.null_samples)
NC_COLUMNS = ("nc1", "nc2", "nc2_norms", "nc3", "nc4")
NFA_EXACT = 16  # networks with at most this many outputs (per sample): the AGOP exactly
NFA_PROJECTIONS = 16  # beyond that: this many Gaussian projections of the output (unbiased)


# ----------------------------------------------------------------------------- pure maths


def second_moment(v: torch.Tensor, kind: str = "centered") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Covariance of the rows of v (..., N, d).

    centered: every row scaled to unit norm, then the mean subtracted (the paper's default);
    raw: E[v v^T] of the raw rows. Rows that are exactly zero have no direction: they are
    left out. Returns (C (..., d, d), the centred rows used (..., N, d), rows left out (...,)).
    """
    norms = v.norm(dim=-1, keepdim=True)  # (..., N, 1)
    keep = norms > 0
    n = keep.sum(-2, keepdim=True).clamp_min(1)  # (..., 1, 1)
    if kind == "centered":
        inv = keep / norms.clamp_min(torch.finfo(v.dtype).tiny)  # 0 for zero rows: they stay zero
        mean = (inv.transpose(-1, -2) @ v) / n  # (..., 1, d): the mean unit row, without a copy
        u = torch.addcmul(-mean, v, inv)
        if not bool(keep.all()):  # rare: a zero row must stay zero, not become -mean
            u.mul_(keep)
    elif kind == "raw":
        u = v
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
    and the mean of B''s entries is sum_i b_i (1^T p_i)^2 / d^2, so each rotation costs one
    (d, d) product with A, shared by every spectrum (in float32: the estimate's standard
    error is far above its rounding).
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
    values = [[] for _ in spectra]
    for P in haar_rotations(d, samples, seed, torch.float32, ua.device):
        diag = (P * (Abar @ P)).sum(-2).to(torch.float64)  # (..., d): p_i^T Abar p_i
        ones_sq = P.sum(-2).to(torch.float64) ** 2  # (d,): (1^T p_i)^2
        for b, out in zip(bs, values):
            centred_sq = (b * b).sum(-1) - (ones_sq * b).sum(-1) ** 2 / d**2  # |B' - mean(B')|^2
            out.append((diag * b).sum(-1) / centred_sq.clamp_min(torch.finfo(torch.float64).tiny).sqrt())
    result = []
    for v, ok in zip(values, oks):
        v = torch.stack(v, -1).clamp(-1.0, 1.0)  # (..., samples)
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


# ----------------------------------------------------------------------------- per layer


def layer_metrics(
    h_a: torch.Tensor,
    h_b: torch.Tensor,
    g_b: torch.Tensor,
    W: torch.Tensor,
    covariance: str = "centered",
    pah_floor: float = 1e-4,
    null_samples: int = NULL_SAMPLES,
    weight_decay=None,
    agop_b: torch.Tensor | None = None,
    stationarity: Stationarity | None = None,
    key=0,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Every CRH/PAH metric of one linear layer, batched over a leading K.

    h_a (K, N, d_in), h_b and g_b (K, N, d_out), W (K, d_out, d_in); g_b = -dl/dh_b per
    sample. `agop_b` (K, d_out, d_out): the AGOP of the network output w.r.t. h_b, for the NFA
    columns (NaN without); `stationarity` and this layer's `key` in it, for the stat_* columns.
    Returns ({column: (K,) tensor, plus the spectra
    `eig_{h,g,z}_{a,b}`: (K, d) descending}, [reason per member why some value is NaN]).
    """
    out, mats = _layer_matrices(h_a, h_b, g_b, W, covariance, weight_decay=weight_decay, agop_b=agop_b)
    _stationarity(stationarity, key, out, mats)
    eigs = _layer_spectra([mats], h_a.dtype)[0]
    return _spectral_metrics(out, mats, eigs, pah_floor, null_samples)


def _layer_matrices(h_a, h_b, g_b, W, covariance: str, g_sign: float = 1.0, g_a=None, weight_decay=None,
                    agop_b=None):
    """Alignments, zero counts, trace ratios, balance and NFA of one layer, and its float64
    (H, G, Z) per side.

    g_b (and g_a, computed as W^T g_b per sample when not given) may come as +dl/dh with
    g_sign = -1 (no negated copy of the samples): every matrix but the cross term and the
    balance is the same for g and -g. `weight_decay` (K,): each member's gamma, for balance.
    """
    h_a, h_b, g_b, W = (t.detach() for t in (h_a, h_b, g_b, W))
    g_a = g_b @ W if g_a is None else g_a.detach()  # (K, N, d_in)
    out: dict[str, torch.Tensor] = {"balance": balance(h_a, g_sign * g_b, W, weight_decay)}
    out.update({c: torch.full(W.shape[:-2], torch.nan, dtype=torch.float64, device=W.device) for c in NC_COLUMNS})
    W = W.to(torch.float64)
    if agop_b is None:
        out["nfa"] = out["nfa_cos"] = torch.full(W.shape[:-2], torch.nan, dtype=torch.float64, device=W.device)
    else:  # d f / d h_a = (d f / d h_b) W, so the AGOP w.r.t. h_a is W^T AGOP_b W
        out["nfa"], out["nfa_cos"] = nfa(W, W.transpose(-1, -2) @ agop_b.to(torch.float64) @ W)
    mats = {}
    for side, h, g, Z in (("a", h_a, g_a, W.transpose(1, 2) @ W), ("b", h_b, g_b, W @ W.transpose(1, 2))):
        out[f"r_h_{side}"], out[f"r_g_{side}"] = trace_ratio(h), trace_ratio(g)
        # sample-sized maths in the activations' dtype; the (d, d) matrices in float64
        H, u_h, zero_h = _shared_second_moment(h, covariance)
        G, u_g, zero_g = second_moment(g, covariance)
        out[f"degenerate_h_{side}"] = degenerate(H, h.shape[-2] - zero_h, covariance)
        out[f"degenerate_g_{side}"] = degenerate(G, g.shape[-2] - zero_g, covariance)
        # a degenerate matrix has no meaningful alignment, spectrum or rank: NaN throughout
        # (filled in place: no copy beyond the float64 one, no host sync)
        H = H.to(torch.float64, copy=True).masked_fill_(out[f"degenerate_h_{side}"][:, None, None] > 0, torch.nan)
        G = G.to(torch.float64, copy=True).masked_fill_(out[f"degenerate_g_{side}"][:, None, None] > 0, torch.nan)
        out[f"n_zero_h_{side}"], out[f"n_zero_g_{side}"] = zero_h, zero_g
        uH, uG, uZ = _unit_entries(H), _unit_entries(G), _unit_entries(Z)
        out[f"_unit_h_{side}"], out[f"_unit_h_{side}_ok"] = uH  # kept for the nulls
        out[f"_unit_g_{side}"], out[f"_unit_g_{side}_ok"] = uG
        out[f"rga_{side}"] = _aligned(uH, uG)
        out[f"rwa_{side}"] = _aligned(uH, uZ)
        out[f"gwa_{side}"] = _aligned(uG, uZ)
        if side == "b":
            cross = g_sign * (u_g.transpose(1, 2) @ u_h).to(torch.float64)  # cov(g_b, h_b), up to a scale
            cross = torch.where(torch.isnan(H[:, :1, :1]) | torch.isnan(G[:, :1, :1]), torch.nan, cross)
            out["cross_b"] = _aligned(_unit_entries(cross + cross.transpose(1, 2)), uZ)
        mats[side] = (H, G, Z)
    mats["W"], mats["kind"] = W, covariance
    return out, mats


def trace_ratio(v: torch.Tensor) -> torch.Tensor:
    """Tr[E[v] E[v]^T] / Tr[E[v v^T]] = |mean v|^2 / mean |v|^2 of raw rows v (..., N, d), in
    [0, 1]: 1 when every sample is the same vector, near 0 for centred ones; NaN for all-zero v."""
    mean = v.mean(-2)
    num = (mean * mean).sum(-1).to(torch.float64)
    den = (v * v).sum(-1).mean(-1).to(torch.float64)
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
    absent from the samples are left out; NaN where not given or undefined. Each (...,).
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
    out = {"nc1": torch.diagonal(sigma_w @ torch.linalg.pinv(sigma_b, hermitian=True), dim1=-2, dim2=-1).sum(-1) / C}

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
    if logits is not None:
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


def output_directions(shape: torch.Size, per_sample_outputs: int, device=None, seed: int = 0):
    """The output cotangents whose vector-Jacobian products give the AGOP: `shape` is the
    network output's, the last dimension its outputs per sample (or per token).

    Exact (one-hot vectors, one per output) when a sample has at most NFA_EXACT outputs and the
    output has one row per sample (2-D): then sum_c J_c^T J_c is the AGOP. Otherwise
    NFA_PROJECTIONS Gaussian vectors u over the whole output, scaled so sum_p J_u^T J_u is an
    unbiased estimate of it (E[u u^T] = I); the same vectors on every call (seeded), shared by
    the members of a pack. Yields tensors of `shape` (or broadcastable to it).
    """
    if len(shape) <= 2 and per_sample_outputs <= NFA_EXACT:
        for c in range(per_sample_outputs):
            e = torch.zeros(per_sample_outputs, device=device)
            e[c] = 1.0
            yield e
        return
    g = torch.Generator().manual_seed(seed)
    for _ in range(NFA_PROJECTIONS):
        yield (torch.randn(tuple(shape), generator=g) / NFA_PROJECTIONS**0.5).to(device)


def output_gradient_grams(output: torch.Tensor, h_bs: list[torch.Tensor], shape: torch.Size,
                          batch_dims: int = 1) -> list[torch.Tensor]:
    """Per tensor h_b in `output`'s graph: the AGOP of the output with respect to it, the mean
    over its samples of J^T J, float64 (*batch, d, d). The first `batch_dims` dimensions of h_b
    are kept (a pack's K), every other but the last counts as samples (tokens too); `shape`:
    one member's output shape, for output_directions. The graph is kept for a later backward."""
    grams = [None] * len(h_bs)
    for u in output_directions(shape, shape[-1], output.device):
        js = torch.autograd.grad(output, h_bs, grad_outputs=u.to(output.dtype).expand_as(output), retain_graph=True)
        for l, j in enumerate(js):
            j = j.reshape(*j.shape[:batch_dims], -1, j.shape[-1])
            gram = (j.transpose(-1, -2) @ j).to(torch.float64)
            grams[l] = gram if grams[l] is None else grams[l] + gram
    samples = [h.numel() // (math.prod(h.shape[:batch_dims]) * h.shape[-1]) for h in h_bs]
    return [g / n for g, n in zip(grams, samples)]


class Stationarity:
    """The H and G matrices of each layer at the previous probe, for the relative change
    |M_t - M_t'| / |M_t| (Frobenius) since then: the `stat_*` columns (paper Fig. 21).

    Keeps K * 4 * d^2 float32 values per layer (fc1, K = 8: 6.4 MB); `state()`/`load()` carry
    them through a checkpoint so that a resumed run records what an uninterrupted one does.
    """

    def __init__(self):
        self.previous: dict = {}

    def update(self, layer, out: dict, mats: dict) -> None:
        """Set out["stat_{h,g}_{a,b}"] (K,) from this probe's matrices; remember them."""
        for side in "ab":
            for name, M in zip("hg", mats[side][:2]):
                key = (layer, f"{name}_{side}")
                before = self.previous.get(key)
                now = M.to(torch.float32)
                if before is None or before.shape != now.shape:
                    change = torch.full(M.shape[:-2], torch.nan, dtype=torch.float64, device=M.device)
                else:
                    change = ((now - before.to(now.device)).flatten(-2).norm(dim=-1)
                              / now.flatten(-2).norm(dim=-1).clamp_min(torch.finfo(torch.float32).tiny)).to(torch.float64)
                if mats["kind"] == "centered":  # at rounding level (as `degenerate` judges it, 1x1
                    # included) a matrix has no meaningful relative change
                    trace = torch.diagonal(now, dim1=-2, dim2=-1).sum(-1)
                    change = torch.where(trace <= now.shape[-1] * (8 * torch.finfo(torch.float32).eps) ** 2,
                                         torch.nan, change)
                out[f"stat_{name}_{side}"] = change
                self.previous[key] = now

    def state(self) -> dict:
        return {key: M.cpu() for key, M in self.previous.items()}

    def load(self, state: dict, device=None) -> None:
        self.previous = {key: M.to(device) for key, M in state.items()}


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


def _shared_second_moment(h: torch.Tensor, covariance: str):
    """second_moment of h (K, N, d); computed once when h is one input broadcast to all K.

    The first layer's input is the probe set itself, the same for every member of a pack.
    """
    if h.shape[0] > 1 and h.stride(0) == 0:
        C, u, zero = second_moment(h[:1], covariance)
        K = h.shape[0]
        return C.expand(K, -1, -1), u.expand(K, -1, -1), zero.expand(K)
    return second_moment(h, covariance)


def _layer_spectra(layers: list[dict], dtype: torch.dtype) -> list[dict]:
    """Per layer and side: eigenvalues (K, 3, d) of [H, G, Z], largest first, and the
    eigenvectors of G (K, d, d) and Z (K, d, r) that the paired power laws look through.

    The decomposition runs in `dtype`, the dtype the samples were summed in (their rounding
    is in the matrices' small eigenvalues either way; the PAH floor sits far above it), in one
    batched call per distinct d and kind. Z_a = W^T W and Z_b = W W^T share their nonzero
    eigenvalues (the squared singular values of W): the smaller is decomposed; the larger
    side's spectrum is the same padded with zeros, its eigenvectors W v / |W v| (r of them).
    """
    values, vectors, z_scales = [], [], []
    for mats in layers:
        (H_a, G_a, Z_a), (H_b, G_b, Z_b) = mats["a"], mats["b"]
        Z = Z_a if Z_a.shape[-1] <= Z_b.shape[-1] else Z_b
        # H and G were summed in `dtype`; Z = W^T W was formed in float64 and overflows
        # float32 for a member about to diverge (|W| ~ 1e19): it goes scaled to max |entry| 1
        z_scale = _max_abs(Z).clamp_min(torch.finfo(Z.dtype).tiny)
        values += [H_a, H_b]
        vectors += [G_a, G_b, Z / z_scale[:, None, None]]
        z_scales.append(z_scale[:, None])
    dtype = torch.promote_types(dtype, torch.float32)  # no half-precision eigensolvers
    e_vals = iter(e.to(torch.float64) for e in _batched(descending_eigvals, [m.to(dtype) for m in values]))
    e_vecs = iter((e.to(torch.float64), v.to(torch.float64))
                  for e, v in _batched(descending_eigh, [m.to(dtype) for m in vectors]))
    spectra = []
    for mats, z_scale in zip(layers, z_scales):
        e_ha, e_hb = next(e_vals), next(e_vals)
        (e_ga, v_ga), (e_gb, v_gb), (e_z, v_z) = next(e_vecs), next(e_vecs), next(e_vecs)
        e_z = e_z * z_scale
        W = mats["W"]
        small = "a" if mats["a"][2].shape[-1] <= mats["b"][2].shape[-1] else "b"
        other = W @ v_z if small == "a" else W.transpose(1, 2) @ v_z  # (K, d_other, r)
        other = other / other.norm(dim=-2, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
        z_vectors = {small: v_z, "b" if small == "a" else "a": other}
        sides = {}
        for side, e_h, e_g, v_g in (("a", e_ha, e_ga, v_ga), ("b", e_hb, e_gb, v_gb)):
            pad = e_h.shape[-1] - e_z.shape[-1]  # zeros, or NaN for a non-finite W
            e_zs = torch.cat([e_z, (e_z[:, :1] * 0).expand(-1, pad)], -1) if pad else e_z
            sides[side] = {"eig": torch.stack([e_h, e_g, e_zs], 1), "vec_g": v_g, "vec_z": z_vectors[side]}
        spectra.append(sides)
    return spectra


def _spectral_metrics(out: dict, mats: dict, spectra: dict, pah_floor: float, null_samples: int = NULL_SAMPLES):
    """Effective ranks, PAH fits (paired and sorted) and the alignments' nulls from each
    side's spectra (_layer_spectra); NaN reasons."""
    for side in "ab":
        eig_h, eig_g, eig_z = spectra[side]["eig"].unbind(1)
        H, G, _ = mats[side]
        unit_h = out.pop(f"_unit_h_{side}"), out.pop(f"_unit_h_{side}_ok")
        unit_g = out.pop(f"_unit_g_{side}"), out.pop(f"_unit_g_{side}_ok")
        (out[f"rga_{side}_null"], out[f"rga_{side}_null_se"]), (out[f"rwa_{side}_null"], out[f"rwa_{side}_null_se"]) = \
            _nulls(unit_h, [eig_g, eig_z], null_samples)
        ((out[f"gwa_{side}_null"], out[f"gwa_{side}_null_se"]),) = _nulls(unit_g, [eig_z], null_samples)
        out[f"eig_h_{side}"], out[f"eig_g_{side}"], out[f"eig_z_{side}"] = eig_h, eig_g, eig_z  # (K, d)
        out[f"erank_h_{side}"], out[f"erank_g_{side}"] = effective_rank(eig_h), effective_rank(eig_g)
        v_g, v_z = spectra[side]["vec_g"], spectra[side]["vec_z"]
        d = eig_h.shape[-1]
        paired = (paired_values(H, v_g), paired_values(H, v_z), paired_values(G, v_z))
        for pair, a, (ea, eb) in zip(PAH_PAIRS, paired, ((eig_h, eig_g), (eig_h, eig_z), (eig_g, eig_z))):
            if a.shape[-1] < d:  # seen through Z's r nonzero directions; the rest have lambda = 0
                a = torch.cat([a, a.new_zeros(*a.shape[:-1], d - a.shape[-1])], -1)
            k, r2, n, _ = _log_fit(a, eb, pah_floor, paired=True)
            out[f"pah_{pair}_{side}"], out[f"pah_{pair}_{side}_r2"], out[f"pah_{pair}_{side}_n"] = k, r2, n
            k, r2, n = power_law_fit(ea, eb, pah_floor)
            out[f"pah_{pair}_{side}_sorted"], out[f"pah_{pair}_{side}_sorted_r2"], out[f"pah_{pair}_{side}_sorted_n"] = k, r2, n
    K = out["rga_a"].shape[0]
    reasons = [""] * K
    undefined = torch.stack([out[f"{r}_{s}"] for s in "ab" for r in RELATIONS]).isnan().any(0)
    for k in undefined.nonzero().flatten().tolist():  # rare (1x1 outputs, dead layers)
        reasons[k] = _nan_reasons(out, mats, k)
    return out, reasons


def _batched(decompose, stacks: list[torch.Tensor]) -> list:
    """`decompose` (descending_eigvals or descending_eigh) of many (K, d, d) stacks: one call
    per distinct d, not per stack."""
    out: list = [None] * len(stacks)
    for d in sorted({m.shape[-1] for m in stacks}):
        idx = [i for i, m in enumerate(stacks) if m.shape[-1] == d]
        result = decompose(torch.cat([stacks[i] for i in idx]))  # (sum of K, ...)
        sizes = [stacks[i].shape[0] for i in idx]
        if isinstance(result, torch.Tensor):
            pieces = result.split(sizes)
        else:  # (values, vectors)
            pieces = list(zip(*(r.split(sizes) for r in result)))
        for i, piece in zip(idx, pieces):
            out[i] = piece
    return out


def _nan_reasons(out: dict, mats: dict, k: int) -> str:
    notes = []
    for side in "ab":
        H, G, Z = mats[side]
        bad = {name: DEGENERATE.get(int(out[f"degenerate_{name.lower()}_{side}"][k]), "")
               for name in ("H", "G") if f"degenerate_{name.lower()}_{side}" in out}
        for col, pair in ((f"rga_{side}", "HG"), (f"rwa_{side}", "HZ"), (f"gwa_{side}", "GZ")):
            if torch.isnan(out[col][k]):
                why = [f"{m}_{side} {bad[m]}" for m in pair if bad.get(m)]
                why += [r for r in (alignment_reason({"H": H, "G": G, "Z": Z}[m][k]) for m in pair) if r]
                notes.append(f"{col}: {why[0] if why else 'undefined'}")
    return "; ".join(notes)


# ----------------------------------------------------------------------------- collectors


def probe_stacked(model, task, x: torch.Tensor, y: torch.Tensor, covariance: str, pah_floor: float,
                  chunk: int | None = None, null_samples: int = NULL_SAMPLES, weight_decay=None,
                  stationarity: Stationarity | None = None):
    """Probe every layer of a StackedMLP on (x, y); `stationarity` (kept between probes) for
    the stat_* columns (NaN without).

    On a CPU the members go through in chunks of `chunk` (default: a chunk's sample-sized
    tensors fit in the cache), on a GPU all at once. Returns (per-member probe loss (K,),
    [per layer: (metrics, reasons)]).
    """
    K = model.K
    if chunk is None:
        chunk = K if x.is_cuda else _cache_chunk(K, x.shape[0], max(model.dims), x.element_size())
    losses, parts = [], []
    for start in range(0, K, chunk):
        members = slice(start, start + chunk) if chunk < K else slice(None)
        wd = None if weight_decay is None else torch.as_tensor(weight_decay, device=x.device)[members]
        loss, per_layer = _probe_matrices(model, task, x, y, covariance, members, wd)
        losses.append(loss)
        parts.append(per_layer)
    per_layer = [_cat_layer(chunks) for chunks in zip(*parts)]
    for l, (out, mats) in enumerate(per_layer):
        _stationarity(stationarity, l, out, mats)
    spectra = _layer_spectra([mats for _, mats in per_layer], x.dtype)  # as few eigen calls as widths
    layers = [_spectral_metrics(out, mats, eigs, pah_floor, null_samples)
              for (out, mats), eigs in zip(per_layer, spectra)]
    return torch.cat(losses), layers


def _cache_chunk(K: int, n: int, width: int, itemsize: int, cache_bytes: float = 4e6) -> int:
    """Members per chunk, chunks of equal size, whose (n, width) activations take at most
    about `cache_bytes` each.

    A probe makes several passes over every layer's samples (norms, means, centring,
    covariances); while they fit in the CPU's cache they cost less than from memory, while
    every chunk costs its own few hundred small operations (fc1, N = 1000, width 100, on a
    2-core EPYC with 32 MB L3: a K = 32 probe took 0.61 s in chunks of 8, 0.78 s in one,
    0.82 s in chunks of 1).
    """
    most = max(1, int(cache_bytes // (n * width * itemsize)))
    return math.ceil(K / math.ceil(K / most))


def _probe_matrices(model, task, x, y, covariance: str, members: slice, weight_decay=None):
    """Probe loss (k,) and per layer _layer_matrices of the members in `members`."""
    with torch.enable_grad():
        out, h_as, h_bs = model(x, keep=True, members=members)
        loss = task.loss(out, y)  # (k, N) per-sample losses
        # the sum's gradient w.r.t. h_b holds every sample's own dl/dh_b (no batch coupling);
        # the backward pass computes dl/dh_a of every layer but the first on its way
        L = len(h_bs)
        agops = output_gradient_grams(out, h_bs, out.shape[1:])  # before the last backward frees the graph
        grads = torch.autograd.grad(loss.sum(), h_bs + h_as[1:])
    grad_b, grad_a = grads[:L], (None,) + grads[L:]
    weights = [W[members] for W in model.weights]
    per_layer = [_layer_matrices(h_as[l], h_bs[l], grad_b[l], W, covariance, g_sign=-1.0, g_a=grad_a[l],
                                 weight_decay=weight_decay, agop_b=agops[l])
                 for l, W in enumerate(weights)]
    if task.classification:  # neural collapse of every layer's input; NC3 and NC4 at the classifier
        k = out.shape[0]
        for l, (metrics, _) in enumerate(per_layer):
            last = l == L - 1
            h = h_as[l].detach()
            metrics.update(neural_collapse(h.expand(k, *h.shape[-2:]), y, out.shape[-1],
                                           W=weights[l].detach() if last else None,
                                           logits=out.detach() if last else None))
    return loss.detach().mean(1), per_layer


def _stationarity(tracker: Stationarity | None, layer, out: dict, mats: dict) -> None:
    if tracker is None:
        for c in ("stat_h_a", "stat_g_a", "stat_h_b", "stat_g_b"):
            out[c] = torch.full(mats["W"].shape[:-2], torch.nan, dtype=torch.float64, device=mats["W"].device)
    else:
        tracker.update(layer, out, mats)


def _cat_layer(chunks):
    """One layer's (metrics, matrices) of consecutive member chunks joined into one."""
    if len(chunks) == 1:
        return chunks[0]
    out = {c: torch.cat([o[c] for o, _ in chunks]) for c in chunks[0][0]}
    mats = {side: tuple(torch.cat(ms) for ms in zip(*(m[side] for _, m in chunks))) for side in "ab"}
    mats["W"], mats["kind"] = torch.cat([m["W"] for _, m in chunks]), chunks[0][1]["kind"]
    return out, mats


def measure(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn,
    covariance: str = "centered",
    pah_floor: float = 1e-4,
    null_samples: int = NULL_SAMPLES,
    train_mode: bool = False,
    weight_decay: float | None = None,
    labels: torch.Tensor | None = None,
    stationarity: Stationarity | None = None,
) -> pd.DataFrame:
    """CRH/PAH metrics of every `nn.Linear` in any model, one row per layer.

    `loss_fn(output, y)` must return one loss per sample (any shape; it is summed). Extra
    leading dimensions of a layer's activations (tokens) count as samples. The model runs in
    eval mode (dropout off, BatchNorm on its running statistics, so samples stay independent)
    unless `train_mode`; its modes are restored after. Hooks are removed on every path out.
    `weight_decay`: the L2 gamma the model trains with, for the `balance` column (else NaN).
    `labels` (N,): class labels of the samples, for the neural-collapse columns of every layer
    whose input has one row per sample (NC3 and NC4 at the last measured layer; else NaN).
    `stationarity`: one `Stationarity` passed to every probe of a run, for the stat_* columns
    (each layer's change since the previous call; NaN without or at the first).
    `nn.MultiheadAttention` is measured as four linear maps, `q_proj`, `k_proj`, `v_proj` (the
    slices of its fused input projection) and `out_proj`, by running it step by step for the
    call (`phasemap.attention`; tokens as samples). An `nn.Linear` the forward pass does not
    call as a module is not measured: its row says why, with NaN metrics, and a warning names it.
    """
    qkv = attention.projections(model)
    linears = []  # every linear map in module order; an attention's q, k, v before its out_proj
    for name, m in model.named_modules():
        linears += [(n, p) for n, p, owner in qkv if owner is m]
        if isinstance(m, nn.Linear):
            linears.append((name, m))
    if not linears:
        raise ValueError(f"`model has at least one nn.Linear` must hold, but got {type(model).__name__}")
    modes = {m: m.training for m in model.modules()}
    model.train(train_mode)
    try:
        with attention.decomposed(model, qkv):
            return _measure(model, linears, x, y, loss_fn, covariance, pah_floor, null_samples, weight_decay,
                            labels, stationarity)
    finally:
        for m, mode in modes.items():
            m.training = mode


def _measure(model, linears, x, y, loss_fn, covariance, pah_floor, null_samples, weight_decay,
             labels, stationarity) -> pd.DataFrame:
    seen: dict[nn.Module, tuple] = {}

    def hook(module, inputs, output):
        if module in seen:
            raise RuntimeError("measure: an nn.Linear called twice in one forward is not supported")
        seen[module] = (inputs[0], output)

    handles = [m.register_forward_hook(hook) for _, m in linears]
    params = list({id(p): p for p in (_parameter(m) for _, m in linears)}.values())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)  # so every layer's output is part of the graph
        with torch.enable_grad():
            output = model(x)
            losses = loss_fn(output, y)
            used = [m for _, m in linears if m in seen]
            outputs = [seen[m][1] for m in used]
            agops = output_gradient_grams(output, outputs, output.shape, batch_dims=0)
            grads = torch.autograd.grad(losses.sum(), outputs)
    finally:
        for h in handles:
            h.remove()
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
    grad_of = dict(zip(used, grads))
    agop_of = dict(zip(used, agops))
    rows = []
    skipped = []
    for index, (name, m) in enumerate(linears, start=1):
        if m not in seen:
            owner = _owner(model, name)
            why = (f"not measured: called functionally by its {type(owner).__name__} "
                   f"({attention.unsupported(owner) or 'its forward was replaced'})"
                   if owner is not None else "not measured: not called in this forward pass")
            skipped.append(f"{name} ({why})")
            rows.append({"layer": index, "name": name, "dim_in": m.in_features, "dim_out": m.out_features,
                         **{c: (0 if c.startswith("n_zero") or c.endswith("_n") else math.nan) for c in METRIC_COLUMNS},
                         "nan_reason": why})
            continue
        h_a, h_b = seen[m]
        d_in, d_out = m.in_features, m.out_features
        metrics, reasons = layer_metrics(
            h_a.reshape(1, -1, d_in),
            h_b.reshape(1, -1, d_out),
            -grad_of[m].reshape(1, -1, d_out),
            m.weight.unsqueeze(0),
            covariance,
            pah_floor,
            null_samples,
            weight_decay,
            agop_b=agop_of[m].unsqueeze(0),
            stationarity=stationarity,
            key=name,
        )
        if labels is not None and h_a.reshape(-1, d_in).shape[0] == labels.numel():  # one feature row per label
            last = m is used[-1]
            n_classes = int(labels.max()) + 1 if output.shape[-1] < 2 else output.shape[-1]
            metrics.update(neural_collapse(h_a.detach().reshape(1, -1, d_in), labels.reshape(-1), n_classes,
                                           W=m.weight.detach().unsqueeze(0) if last else None,
                                           logits=output.detach().reshape(1, -1, output.shape[-1]) if last else None))
        row = {"layer": index, "name": name, "dim_in": d_in, "dim_out": d_out}
        row.update({c: metrics[c][0].item() for c in METRIC_COLUMNS})
        row["nan_reason"] = reasons[0]
        rows.append(row)
    if skipped:
        log.warning("measure: %d nn.Linear layer(s) not measured: %s", len(skipped), "; ".join(skipped))
    table = pd.DataFrame(rows)
    table["probe_loss"] = losses.detach().float().mean().item()
    return table


def _parameter(m: nn.Module) -> nn.Parameter:
    """The trained parameter a layer's weight is (a q/k/v projection's is a slice of one)."""
    return m.parameter if isinstance(m, attention.Projection) else m.weight


def _owner(model: nn.Module, name: str) -> nn.Module | None:
    """The module that holds a Linear and applies it itself (attention), or None."""
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    return parent if isinstance(parent, nn.MultiheadAttention) else None
