"""The paper's llm measurements (Fig. 3 and 5) from a sweep's records with probe.per_head: per
block, the PAH exponent of each head output's H_b against its G_b (paired eigenvalues and
sorted ones, their fit R^2), and RGA of the head outputs over training against Fig. 5's two
baselines (`heads_h_b`: H_b of the other heads of the layer; `init_h_b`: the head's own H_b
at the first probe).

    python benchmarks/paper_llm.py results --sweep llm-cpu
"""

from __future__ import annotations

import argparse

import pandas as pd

from phasemap import load


def heads(root: str, sweep: str) -> pd.DataFrame:
    """The head-output rows (`<attn>.head<h>.out`) of a sweep, with their block."""
    df = load(root, filters={"sweep_id": sweep, "layer_kind": "attention.head_out"})
    if df.empty:
        raise SystemExit(f"no head-output rows in sweep {sweep!r} under {root} (probe.per_head: true writes them)")
    return df.assign(block=df["layer_name"].str.extract(r"block(\d+)", expand=False).astype(int))


def exponents(df: pd.DataFrame) -> pd.DataFrame:
    """Per weight decay and block at the last step: the heads' PAH exponents of H_b vs G_b
    (paired, sorted) as mean and range over heads and members, and the fits' R^2."""
    last = df[df["step"] == df.groupby(["run_id", "member"])["step"].transform("max")]
    out = last.groupby(["weight_decay", "block"]).agg(
        heads=("head", "size"),
        paired=("pah_hg_b", "mean"), paired_min=("pah_hg_b", "min"), paired_max=("pah_hg_b", "max"),
        paired_r2=("pah_hg_b_r2", "mean"),
        sorted=("pah_hg_b_sorted", "mean"), sorted_min=("pah_hg_b_sorted", "min"),
        sorted_max=("pah_hg_b_sorted", "max"), sorted_r2=("pah_hg_b_sorted_r2", "mean"))
    return out.round(2)


def rga_over_training(df: pd.DataFrame) -> pd.DataFrame:
    """Per weight decay, block and step: RGA of the head outputs (mean over heads and members)
    and the two baselines."""
    return df.groupby(["weight_decay", "block", "step"])[["rga_b", "heads_h_b", "init_h_b"]].mean().round(3)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root")
    p.add_argument("--sweep", default="llm-cpu")
    args = p.parse_args()
    df = heads(args.root, args.sweep)
    with pd.option_context("display.width", 200, "display.max_rows", 500):
        print("PAH exponent of H_b against G_b per head output, at the last step (paper Fig. 3: ~3 in the first "
              "block, ~2 in the second, ~1 after)")
        print(exponents(df).to_string())
        print("\nRGA of the head outputs over training against the baselines (paper Fig. 5: RGA above both)")
        print(rga_over_training(df).to_string())


if __name__ == "__main__":
    main()
