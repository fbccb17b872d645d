"""Synthetic records with planted answers (phases, critical depths, missing cells).

Every network of a grid over depth x weight decay x seed gets, at its last step, alignment
HIGH for the relations in `phase_sets(depth, wd)` on layers at or after its planted critical
depth `l_star(depth, wd)` (None: no layer aligns), and LOW everywhere else. Earlier steps
carry LOW everywhere. Rows are built with numpy, so a million take about a second.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from phasemap.measure import METRIC_COLUMNS
from phasemap.records import SCHEMA, SCHEMA_VERSION

HIGH, LOW = 0.97, 0.3
REL = ["rga_a", "rwa_a", "gwa_a", "rga_b", "rwa_b", "gwa_b"]


def default_l_star(depth, wd):
    return None if wd == 0 else max(1, depth - int(np.log10(wd) + 5))  # wd 1e-4 -> depth-1, 1e-2 -> depth-3


def default_phase_sets(depth, wd):
    if wd >= 1e-3:
        return {"rga_a", "rwa_a", "gwa_a", "rga_b", "rwa_b", "gwa_b"}  # CRH
    return {"rga_a", "rga_b"}  # phase 1


def synthetic_records(
    depths=(2, 4, 8),
    weight_decays=(0.0, 1e-4, 1e-3, 1e-2),
    seeds=(0, 1, 2),
    steps=(0, 100, 1000),
    widths=(64,),
    missing=(),
    l_star=default_l_star,
    phase_sets=default_phase_sets,
    diverged=(),
) -> pd.DataFrame:
    """Records of a planted grid; `missing` (depth, wd) cells have no rows, `diverged`
    (depth, wd, seed) networks end diverged at their last step."""
    blocks = []
    run = 0
    for width in widths:
        for depth in depths:
            for wd in weight_decays:
                if (depth, wd) in missing:
                    continue
                run += 1
                layers = np.arange(1, depth + 2)
                n_seeds, n_steps, n_layers = len(seeds), len(steps), len(layers)
                n = n_seeds * n_steps * n_layers
                seed_col = np.repeat(np.asarray(seeds), n_steps * n_layers)
                step_col = np.tile(np.repeat(np.asarray(steps), n_layers), n_seeds)
                layer_col = np.tile(layers, n_seeds * n_steps)
                block = {
                    "sweep_id": np.full(n, "syn"), "run_id": np.full(n, f"run{run}-w{width}"),
                    "member": seed_col.astype(np.int32), "seed": seed_col, "depth": np.full(n, depth),
                    "width": np.full(n, width), "weight_decay": np.full(n, wd), "step": step_col,
                    "layer": layer_col, "status": np.full(n, "ok", dtype=object),
                }
                final = step_col == max(steps)
                star = l_star(depth, wd)
                aligned = final & (layer_col >= (star if star is not None else depth + 2)) & (layer_col <= depth)
                chosen = phase_sets(depth, wd)
                for col in REL:
                    block[col] = np.where(aligned & (col in chosen), HIGH, LOW)
                for d_seed in [s for (dd, w, s) in diverged if dd == depth and w == wd]:
                    block["status"] = np.where(final & (seed_col == d_seed), "diverged", block["status"])
                blocks.append(pd.DataFrame(block))
    df = pd.concat(blocks, ignore_index=True)
    return _fill_schema(df)


def _fill_schema(df: pd.DataFrame) -> pd.DataFrame:
    """Give every SCHEMA column a plausible constant where the grid did not set it."""
    defaults = {"schema_version": SCHEMA_VERSION, "phasemap_version": "test", "trial_id": df["run_id"],
                "config_hash": df["run_id"] + "-" + df["member"].astype(str), "task": "fc1", "input_dim": 100,
                "output_dim": 1, "activation": "relu", "batch_size": 100, "optimizer": "sgd", "lr": 0.01,
                "momentum": 0.9, "data_seed": 0, "steps": df["step"].max(), "covariance": "centered",
                "dim_in": df["width"], "dim_out": df["width"], "train_loss": 0.1, "probe_loss": 0.1,
                "nan_reason": ""}
    filled = {}
    for name in SCHEMA.names:
        if name not in df:
            if name in defaults:
                filled[name] = defaults[name]
            elif name in METRIC_COLUMNS:
                filled[name] = 0 if (name.startswith("n_zero") or name.endswith("_n")) else 0.5
            else:
                filled[name] = np.nan
    df = pd.concat([df, pd.DataFrame(filled, index=df.index)], axis=1)  # at once: no fragmented frame
    return df[SCHEMA.names]


def million_rows() -> pd.DataFrame:
    """About a million rows: 6 depths x 8 weight decays x 8 widths x 20 seeds x 16 steps."""
    return synthetic_records(
        depths=(2, 4, 6, 8, 10, 12),
        weight_decays=(0.0, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
        seeds=tuple(range(20)),
        steps=tuple(int(s) for s in np.unique(np.geomspace(1, 100000, 16).round())),
        widths=(32, 48, 64, 96, 128, 192, 256, 384),
    )
