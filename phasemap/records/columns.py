"""The metric columns of a record, declared beside the schema: one list for the schema, the
measurements that fill them and the sweep spec (naming them needs no torch)."""

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
    # per-head rows only (probe.per_head; NaN elsewhere), the paper's Fig. 5 baselines: the mean
    # alignment of this head's H_b with the other heads' H_b of its layer, and of H_b with its
    # H_b at the run's first probe
    + ["heads_h_b", "init_h_b"]
)
BASELINE_COLUMNS = ("heads_h_b", "init_h_b")
NC_COLUMNS = ("nc1", "nc2", "nc2_norms", "nc3", "nc4")
