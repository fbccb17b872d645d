"""Every metric of one linear map from its samples: h_a, h_b, g_b (and g_a) and W, batched over
a leading K. The column list (METRIC_COLUMNS), the assembly of matrices, spectra, power laws,
nulls and NaN reasons per layer, the AGOP for NFA and stationarity between probes.

Sums over samples and eigendecompositions run in the activations' dtype; the (d, d) matrices,
alignments and fits in float64.
"""

from __future__ import annotations


import torch

from .columns import BASELINE_COLUMNS, NC_COLUMNS, PAH_PAIRS, RELATIONS
from .maths import (
    DEGENERATE, _aligned, _log_fit, _max_abs, _nulls, _unit_entries, alignment_reason, balance,
    degenerate, descending_eigh, descending_eigvals, effective_rank, nfa, paired_values, power_law_fit,
    second_moment, trace_ratio,
)

NULL_SAMPLES = 8  # Haar rotations per null estimate (probe.null_samples)
NFA_EXACT = 16  # networks with at most this many outputs (per sample): the AGOP exactly
NFA_PROJECTIONS = 16  # beyond that: this many Gaussian projections of the output (unbiased)


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
                    agop_b=None, no_a: str = ""):
    """Alignments, zero counts, trace ratios, balance and NFA of one layer, and its float64
    (H, G, Z) per side.

    g_b (and g_a, computed as W^T g_b per sample when not given) may come as +dl/dh with
    g_sign = -1 (no negated copy of the samples): every matrix but the cross term and the
    balance is the same for g and -g. `weight_decay` (K,): each member's gamma, for balance.
    `no_a`: why the row has no input side (an attention head's output: `h_a` is ignored, may
    be None): every a-side matrix and column, balance and NFA are NaN, n_zero_*_a 0, and the
    NaN reasons say `no_a`.
    """
    h_b, g_b, W = (t.detach() for t in (h_b, g_b, W))
    nan = lambda: torch.full(W.shape[:-2], torch.nan, dtype=torch.float64, device=W.device)  # noqa: E731
    out: dict[str, torch.Tensor] = {c: nan() for c in NC_COLUMNS + BASELINE_COLUMNS}
    if no_a:
        h_a = g_a = None
        out["balance"] = nan()
    else:
        h_a = h_a.detach()
        g_a = g_b @ W if g_a is None else g_a.detach()  # (K, N, d_in)
        out["balance"] = balance(h_a, g_sign * g_b, W, weight_decay)
    W = W.to(torch.float64)
    if agop_b is None or no_a:
        out["nfa"], out["nfa_cos"] = nan(), nan()
    else:  # d f / d h_a = (d f / d h_b) W, so the AGOP w.r.t. h_a is W^T AGOP_b W
        out["nfa"], out["nfa_cos"] = nfa(W, W.transpose(-1, -2) @ agop_b.to(torch.float64) @ W)
    mats = {}
    if no_a:  # 1x1 NaN matrices (no d_in x d_in work): NaN alignments, spectra and fits
        H = torch.full((*W.shape[:-2], 1, 1), torch.nan, dtype=torch.float64, device=W.device)
        mats["a"] = (H, H.clone(), H.clone())
        for c in ("r_h_a", "r_g_a", "rga_a", "rwa_a", "gwa_a"):
            out[c] = nan()
        for c in ("n_zero_h_a", "n_zero_g_a", "degenerate_h_a", "degenerate_g_a"):
            out[c] = torch.zeros(W.shape[:-2], dtype=torch.long, device=W.device)
        unit = (H.flatten(-2), torch.zeros(W.shape[:-2], dtype=torch.bool, device=W.device))
        out["_unit_h_a"], out["_unit_h_a_ok"] = unit
        out["_unit_g_a"], out["_unit_g_a_ok"] = unit
    sides = [("b", h_b, g_b, W @ W.transpose(1, 2))]
    if not no_a:
        sides.insert(0, ("a", h_a, g_a, W.transpose(1, 2) @ W))
    for side, h, g, Z in sides:
        norms_g = g.norm(dim=-1, keepdim=True)  # (K, N, 1), for the trace ratio and the covariance
        H, u_h, zero_h, out[f"r_h_{side}"] = _shared_second_moment(h, covariance)
        out[f"r_g_{side}"] = trace_ratio(g, norms_g)
        # sample-sized maths in the activations' dtype; the (d, d) matrices in float64
        G, u_g, zero_g = second_moment(g, covariance, norms_g)
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
    mats["W"], mats["kind"], mats["no_a"], mats["head"] = W, covariance, no_a, False
    return out, mats


def head_baselines(group: list[tuple[dict, dict]]) -> None:
    """The paper's Fig. 5 baseline between heads: for each head row of one layer (its
    _layer_matrices), `heads_h_b` = the mean alignment of its H_b with each other head's H_b
    (NaN where none is defined). Marks the rows as head rows (`init_h_b` is kept for them)."""
    units = [(out["_unit_h_b"], out["_unit_h_b_ok"]) for out, _ in group]
    for i, (out, mats) in enumerate(group):
        mats["head"] = True
        others = [_aligned(units[i], u) for j, u in enumerate(units) if j != i]
        out["heads_h_b"] = torch.stack(others).nanmean(0) if others else out["heads_h_b"]


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
                          batch_dims: int = 1, rows: list | None = None) -> list[torch.Tensor]:
    """Per tensor h_b in `output`'s graph: the AGOP of the output with respect to it, the mean
    over its samples of J^T J, float64 (*batch, d, d). The first `batch_dims` dimensions of h_b
    are kept (a pack's K), every other but the last counts as samples (tokens too), unless
    `rows` gives per tensor a function from a tensor of its shape to (*batch, samples, d) (a
    convolution's (N, C, H, W) output: one sample per image and position). `shape`: one
    member's output shape, for output_directions. The graph is kept for a later backward."""
    if rows is None:
        rows = [lambda t: t.reshape(*t.shape[:batch_dims], -1, t.shape[-1])] * len(h_bs)
    grams: list = [None] * len(h_bs)
    counts = [0] * len(h_bs)
    for u in output_directions(shape, shape[-1], output.device):
        js = torch.autograd.grad(output, h_bs, grad_outputs=u.to(output.dtype).expand_as(output), retain_graph=True)
        for l, j in enumerate(js):
            j = rows[l](j)
            counts[l] = j.shape[-2]
            gram = (j.transpose(-1, -2) @ j).to(torch.float64)
            grams[l] = gram if grams[l] is None else grams[l] + gram
    return [g / n for g, n in zip(grams, counts)]


class Stationarity:
    """The H and G matrices of each layer at the previous probe, for the relative change
    |M_t - M_t'| / |M_t| (Frobenius) since then: the `stat_*` columns (paper Fig. 21); and of
    each head row (per_head) its H_b at the first probe, float64, for `init_h_b`: the alignment
    of H_b with it (paper Fig. 5's baseline; 1 at the first probe, NaN where either is undefined).

    Keeps K * 4 * d^2 float32 values per layer (fc1, K = 8: 6.4 MB); `state()`/`load()` carry
    them through a checkpoint so that a resumed run records what an uninterrupted one does.
    """

    def __init__(self):
        self.previous: dict = {}
        # layers resumed from a checkpoint that kept their H_b but not its first probe's (written
        # before init_h_b existed): their baseline is unknown, so init_h_b stays NaN
        self.first_unknown: set = set()

    def update(self, layer, out: dict, mats: dict) -> None:
        """Set out["stat_{h,g}_{a,b}"] (K,) from this probe's matrices; remember them."""
        for side in "ab":
            for name, M in zip("hg", mats[side][:2]):
                if side == "a" and mats.get("no_a"):  # nothing to keep
                    out[f"stat_{name}_a"] = torch.full(M.shape[:-2], torch.nan, dtype=torch.float64, device=M.device)
                    continue
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
        if mats.get("head") and layer in self.first_unknown:
            out["init_h_b"] = torch.full(mats["b"][0].shape[:-2], torch.nan, dtype=torch.float64,
                                         device=mats["b"][0].device)
        elif mats.get("head"):  # the paper's Fig. 5 baseline: H_b against its first probe's
            H = mats["b"][0]
            first = self.previous.get((layer, "h_b_first"))
            if first is None or first.shape != H.shape:
                first = self.previous[(layer, "h_b_first")] = H.clone()
            out["init_h_b"] = _aligned(_unit_entries(H), _unit_entries(first.to(H.device, H.dtype)))

    def state(self) -> dict:
        return {key: M.cpu() for key, M in self.previous.items()}

    @classmethod
    def stacked(cls, trackers: list["Stationarity"]) -> "Stationarity":
        """One tracker batched over the members of `trackers` (one member each, as `measure`
        keeps them): a matrix that some member lacks, or has in another shape, is left out
        (its change is NaN, as at a first probe). `unstack` hands the update back."""
        joined = cls()
        joined.first_unknown = set().union(*(t.first_unknown for t in trackers))
        for key, M in trackers[0].previous.items() if trackers else ():
            ms = [t.previous.get(key) for t in trackers]
            if all(m is not None and m.shape == M.shape and m.shape[0] == 1 for m in ms):
                joined.previous[key] = torch.cat(ms)
        return joined

    def unstack(self, trackers: list["Stationarity"]) -> None:
        """Each member's matrices back into its own tracker (the reverse of `stacked`)."""
        for key, M in self.previous.items():
            for t, m in zip(trackers, M.split(1)):
                t.previous[key] = m

    def load(self, state: dict, device=None) -> None:
        self.previous = {key: M.to(device) for key, M in state.items()}
        kept = {key[0] for key in state if key[1] == "h_b"}
        self.first_unknown = kept - {key[0] for key in state if key[1] == "h_b_first"}


def _shared_second_moment(h: torch.Tensor, covariance: str):
    """second_moment of h (K, N, d) and its trace_ratio; computed once when h is one input
    broadcast to all K.

    The first layer's input is the probe set itself, the same for every member of a pack.
    """
    K = h.shape[0]
    shared = K > 1 and h.stride(0) == 0
    if shared:
        h = h[:1]
    norms = h.norm(dim=-1, keepdim=True)
    C, u, zero = second_moment(h, covariance, norms)
    ratio = trace_ratio(h, norms)
    if shared:
        return C.expand(K, -1, -1), u.expand(K, -1, -1), zero.expand(K), ratio.expand(K)
    return C, u, zero, ratio


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
        Z = Z_a if Z_a.shape[-1] <= Z_b.shape[-1] and not mats.get("no_a") else Z_b
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
        sides = {}
        if mats.get("no_a"):  # no input side: its 1x1 NaN matrices' spectra, Z's from Z_b
            z_vectors = {"b": v_z, "a": torch.full_like(v_ga, torch.nan)}
            sides["a"] = {"eig": torch.stack([e_ha, e_ga, torch.full_like(e_ha, torch.nan)], 1), "vec_g": v_ga,
                          "vec_z": z_vectors["a"]}
        else:
            small = "a" if mats["a"][2].shape[-1] <= mats["b"][2].shape[-1] else "b"
            other = W @ v_z if small == "a" else W.transpose(1, 2) @ v_z  # (K, d_other, r)
            other = other / other.norm(dim=-2, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
            z_vectors = {small: v_z, "b" if small == "a" else "a": other}
        for side, e_h, e_g, v_g in (("a", e_ha, e_ga, v_ga), ("b", e_hb, e_gb, v_gb)):
            if side in sides:
                continue
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
    if mats.get("no_a"):
        notes.append(f"rga_a, rwa_a, gwa_a: {mats['no_a']}")
    for side in "b" if mats.get("no_a") else "ab":
        H, G, Z = mats[side]
        bad = {name: DEGENERATE.get(int(out[f"degenerate_{name.lower()}_{side}"][k]), "")
               for name in ("H", "G") if f"degenerate_{name.lower()}_{side}" in out}
        for col, pair in ((f"rga_{side}", "HG"), (f"rwa_{side}", "HZ"), (f"gwa_{side}", "GZ")):
            if torch.isnan(out[col][k]):
                why = [f"{m}_{side} {bad[m]}" for m in pair if bad.get(m)]
                why += [r for r in (alignment_reason({"H": H, "G": G, "Z": Z}[m][k]) for m in pair) if r]
                notes.append(f"{col}: {why[0] if why else 'undefined'}")
    return "; ".join(notes)


def _stationarity(tracker: Stationarity | None, layer, out: dict, mats: dict) -> None:
    if tracker is None:
        for c in ("stat_h_a", "stat_g_a", "stat_h_b", "stat_g_b"):
            out[c] = torch.full(mats["W"].shape[:-2], torch.nan, dtype=torch.float64, device=mats["W"].device)
    else:
        tracker.update(layer, out, mats)
