"""From records to figures: pick axes, aggregate, draw; `write_report` does every kind.

The choices a person would make by hand: x is weight decay when it varies, y is depth;
a third varying axis becomes panels (facets); layer and curve figures show one depth.
"""

from __future__ import annotations

import html
import logging
import os
from dataclasses import dataclass

import pandas as pd

from .. import records
from ..analysis import aggregate
from . import KINDS, plots

log = logging.getLogger(__name__)


class NotApplicable(ValueError):
    """A figure kind that these records cannot have (learning phases without a classification
    task, spectra of a family that writes none): the report says so, with no warning."""


PREFERRED_X = ("weight_decay", "lr", "batch_size", "width", "momentum", "depth", "optimizer")
PREFERRED_Y = ("depth", "train_fraction", "batch_size", "width", "optimizer", "lr", "weight_decay", "momentum")


@dataclass
class FigureOptions:
    x: str | None = None
    y: str | None = None
    facet: str | None = None
    layer: int | float | str = "last"
    tau: float = 0.9
    against: str = "raw"  # phases and critical depth judged on raw alignment, or on its excess over the null
    relation: str = "rga_b"
    run_id: str | None = None
    member: int = 0
    threshold: float = 0.9  # learning phases: the accuracy that counts as learnt
    soon: float = 2.0  # learning phases: held-out within `soon` x the train step is comprehension


def choose_axes(df: pd.DataFrame, opts: FigureOptions) -> tuple[str, str, str | None]:
    varying = aggregate.varying_axes(df)
    # x: a preferred axis, else any varying one; depth only when nothing else varies (it is y's)
    order = [a for a in (*PREFERRED_X, *varying) if a != "depth"] + ["depth"]
    x = opts.x or next((a for a in order if a in varying), None) or "weight_decay"
    y = opts.y or next((a for a in (*PREFERRED_Y, *varying) if a in varying and a != x), None) or "depth"
    if y == x:  # one axis varies and it was asked for as x
        y = "depth" if x != "depth" else "weight_decay"
    if x == y:
        raise ValueError(f"`x != y` must hold, but got x={x!r}, y={y!r}")
    several = "sweep_id" in df and df["sweep_id"].nunique() > 1  # several sweeps: a panel each, never pooled
    facet = opts.facet or ("sweep_id" if several else next((a for a in varying if a not in (x, y)), None))
    for name in (x, y, facet):
        if name is not None and name not in df:
            raise ValueError(f"`axis is a record column` must hold, but got {name!r}")
    return x, y, facet


def _one_depth(df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    if df["depth"].nunique() > 1:
        depth = int(df["depth"].max())
        return df[df["depth"] == depth], f"depth {depth}"
    return df, f"depth {int(df['depth'].iloc[0])}"


def _judged(opts: FigureOptions) -> str:
    return " on the excess over the null, (α - α_null) / (1 - α_null)" if opts.against == "null" else ""


def _pooled(df: pd.DataFrame, kept) -> str:
    """The caption's note of every varying config column a figure does not show: it pools over them."""
    others = [a for a in _varying(df) if a not in kept]
    return f"; pooled over {', '.join(others)}" if others else ""


def _varying(df: pd.DataFrame) -> list[str]:
    """The config columns that vary, and the sweep id where the records hold several sweeps."""
    several = "sweep_id" in df and df["sweep_id"].nunique() > 1
    return aggregate.varying_axes(df) + (["sweep_id"] if several else [])


def _spread(df: pd.DataFrame, kept) -> str:
    """What a figure's error bars are over: the networks of each line, that is its seeds and
    every varying config column the figure does not show (pooled)."""
    seeds = [c for c in aggregate.SEEDS if c in df]
    n_seeds = max(1, len(df[seeds].drop_duplicates().dropna(how="all"))) if seeds else 1
    pooled = ", ".join(a for a in _varying(df) if a not in kept)
    if n_seeds > 1:
        return f"mean ± std over {n_seeds} seeds" + (f" and the pooled {pooled}" if pooled else "")
    if pooled:
        return f"mean ± std over the pooled {pooled} (one seed)"
    return "one network per line: no spread"


def _sparse_probes(grid: pd.DataFrame, soon: float) -> str:
    """The learning-phase caption's warning when some networks are `unresolved` (and a log
    warning): their probes bracket the train or the held-out crossing too coarsely to tell
    grokking from comprehension at this `soon`."""
    unresolved, n = int(grid["n_unresolved"].fillna(0).sum()), int(grid["n"].sum())
    if not unresolved:
        return ""
    warning = (f"{unresolved} of {n} networks unresolved: the probes are too sparse for --soon {soon:g} (the "
               f"train and held-out crossings each lie between two probes, and the held-out one may be "
               f"within {soon:g}x the train one or beyond it); probe more often around the train crossing "
               f"and between the two, or choose another --soon")
    log.warning("learning phases: %s", warning)
    return f" Warning: {warning}."


def _roots(root: str | list[str]) -> list[str]:
    return [root] if isinstance(root, str) else list(root)


def _spectra(root: str | list[str], run_id: str | None = None) -> pd.DataFrame:
    """The spectra files under the root (or roots) of every run, or of one."""
    return pd.concat([records.read_spectra(r, run_id) for r in _roots(root)], ignore_index=True)


def _boundary_grid(df: pd.DataFrame, root: str | list[str] | None, opts: FigureOptions, keys: list[str]) -> pd.DataFrame | None:
    """A boundary search's cells (measured and inferred) as a phase grid over `keys`; None for
    any other sweep, or when its axes are not all among the keys (nothing to draw them on)."""
    if root is None or df["sweep_id"].nunique() != 1:
        return None
    from ..sweep import boundary

    sweep = df["sweep_id"].iloc[0]
    for root in _roots(root):  # the root that holds the sweep (one only: query._check_disjoint)
        state = boundary.read_state(root, sweep)
        if state is not None:
            break
    else:
        return None
    table = boundary.read_records(root, sweep)
    if "config_hash" in df and set(table["config_hash"]) - set(df["config_hash"]):
        return None  # the records were filtered (--where): draw what was asked for, measured cells only
    cells = boundary.stored_map(root, state, table, opts.tau, opts.layer, opts.against)
    axes = [c for c in cells.columns if c not in ("phase", "measured", "confidence")]
    if set(axes) != set(keys):  # another facet or axis asked for, or one the map does not have
        log.info("sweep %s: a boundary search over %s drawn from its measured cells only (the figure's axes: %s)",
                 sweep, axes, keys)
        return None
    cells = cells.rename(columns={"measured": "n", "confidence": "share"})
    cells["inferred"] = (cells["n"] == 0) & cells["phase"].notna() & cells["share"].notna()
    return cells


def make_figure(df: pd.DataFrame, kind: str, opts: FigureOptions, root: str | list[str] | None = None):
    """The figure of one kind from records; returns (figure, the table it draws, caption)."""
    if kind not in KINDS:
        raise ValueError(f"`kind in {KINDS}` must hold, but got {kind!r}")
    if df.empty:
        raise ValueError("no records to draw (check the root and --where)")
    x, y, facet = choose_axes(df, opts)
    pooled = _pooled(df, (x, y, facet)) + (f"; a panel per {plots.axis_label(facet)}" if facet else "")
    facets = [facet] if facet else []
    if kind == "phase-diagram":
        table = _boundary_grid(df, root, opts, [*facets, y, x])
        inferred = table is not None
        if table is None:
            table = aggregate.phase_grid(df, x, y, layer=opts.layer, tau=opts.tau, facets=facets, against=opts.against)
        caption = (f"Majority phase (paper Table 1) at layer {opts.layer!r}, τ = {opts.tau}{_judged(opts)}, over {y} × {x}; "
                   f"each cell: its phase and how many of its networks are in it; \"no majority\" (white, dotted) "
                   f"where no phase holds more than half of them, a tie included{pooled}.")
        if inferred:
            caption += (" A boundary search: cells where no network was trained are inferred from the Gaussian "
                        "processes of the alignments, drawn lighter with the model's confidence in the label (~).")
        where = {"last": "the last hidden layer", "output": "the output layer", "each": "every layer"}.get(
            opts.layer, f"layer {opts.layer}")
        return plots.phase_diagram(table, x, y, facet, title=f"Phases at {where}, τ = {opts.tau}"), table, caption
    if kind == "critical-depth":
        table = aggregate.critical_depth_map(df, x, y, relation=opts.relation, tau=opts.tau, facets=facets,
                                             against=opts.against)
        caption = (f"Critical depth l* for {opts.relation} ≥ {opts.tau}{_judged(opts)}: the first hidden layer from which every "
                   f"later hidden layer aligns; colour l*/D{pooled}.")
        fig = plots.critical_depth_figure(table, x, y, facet, title=f"Critical depth ({opts.relation} ≥ {opts.tau})")
        return fig, table, caption
    if kind == "learning-phase":
        if "train_accuracy" not in df or df["train_accuracy"].isna().all():
            raise NotApplicable("no classification task (learning phases need train and held-out accuracy)")
        table = aggregate.learning_phase_grid(df, x, y, facets=facets, threshold=opts.threshold, soon=opts.soon)
        caption = (f"Majority learning outcome over {y} × {x}: train and held-out accuracy reach {opts.threshold} "
                   f"together (comprehension, held-out within {opts.soon:g}x the train step), much later "
                   f"(grokking: mean step of it written in), never held out (memorisation) or never (confusion); "
                   f"share of networks{pooled}.{_sparse_probes(table, opts.soon)}")
        fig = plots.phase_diagram(table, x, y, facet, title=f"Learning phases (accuracy ≥ {opts.threshold})",
                                  colors=plots.LEARNING_COLORS, legend="learning phase")
        return fig, table, caption
    if kind == "layers":
        sub, which = _one_depth(df)
        keys = [k for k in (x, facet) if k and k != "depth" and sub[k].nunique() > 1]
        table = aggregate.layer_profile(sub, by=keys)
        spread = _spread(sub, keys)
        caption = (f"Alignment by layer at the last step, {which}; {spread}. "
                   f"Dotted: the null, the alignment expected by chance for the same spectra.")
        fig = plots.layers_figure(table, keys, title=f"Alignment by layer ({which})", spread=spread)
        return fig, table, caption
    if kind == "evolution":
        keys = [k for k in (x, facet) if k and df[k].nunique() > 1]
        table = aggregate.evolution(df, opts.relation, layer=opts.layer, by=keys)
        spread = _spread(df, keys)
        caption = f"{opts.relation} at layer {opts.layer!r} over training; {spread}."
        fig = plots.evolution_figure(table, opts.relation, keys, title=f"{opts.relation} over training", spread=spread)
        return fig, table, caption
    # spectra: one network's eigenvalues at its last probe
    if root is None:
        raise ValueError("spectra need the storage root")
    run_id, member = opts.run_id, opts.member
    if run_id is None:  # the most aligned network with spectra (MLPs write them): the ones worth a look
        written = set(_spectra(root)[["run_id", "member"]].itertuples(index=False, name=None))
        if not written:  # no network here has them: mlp runs write them at their last probe, Recorder runs never
            families = sorted(set(df["family"].dropna())) if "family" in df else []
            raise NotApplicable(f"no spectra under the root (written at the last probe of an mlp sweep or run; "
                                f"families here: {', '.join(families) or 'unknown'})")
        scores = aggregate.last_hidden(df).groupby(["run_id", "member"])[opts.relation].mean()
        with_spectra = scores[[key in written for key in scores.index]]
        scores = with_spectra if len(with_spectra) else scores  # none: the error below says why
        best = scores.idxmax()
        run_id, member = best[0], int(best[1])
    spectra = _spectra(root, run_id)
    spectra = spectra[spectra["member"] == member]
    if spectra.empty:
        families = set(df.loc[df["run_id"] == run_id, "family"].dropna()) if "family" in df else set()
        if families and "mlp" not in families:
            raise NotApplicable(f"no spectra: they are written for the mlp family only, and run {run_id!r} is "
                                f"{', '.join(sorted(families))}")
        raise ValueError(f"`run {run_id!r} member {member} has spectra` must hold (they are written at the "
                         f"last probe of a finished run), but none were found under {root}")
    net = df[(df["run_id"] == run_id) & (df["member"] == member)]
    net = net[net["step"] == net["step"].max()]
    side = opts.relation[-1] if opts.relation[-1] in "ab" else "b"
    row = net.iloc[0]
    title = f"{run_id} member {member}: depth {row['depth']}, width {row['width']}, γ = {row['weight_decay']:g}"
    caption = (f"Eigenvalues of H_{side} against G_{side} per layer (log-log) for one network, the fitted PAH exponent "
               f"k (red) and reference slopes 1/3, 1/2, 1, 2, 3 (grey).")
    return plots.spectra_figure(spectra, net, side=side, title=title), spectra, caption


def write_report(df: pd.DataFrame, root: str | list[str], out_dir: str, opts: FigureOptions) -> str:
    """Every figure kind as PNG and PDF plus an index.html; returns the index's path."""
    os.makedirs(out_dir, exist_ok=True)
    entries = []
    for kind in KINDS:
        try:
            fig, _, caption = make_figure(df, kind, opts, root)
        except NotApplicable as e:  # not a fault: these records cannot have this figure
            log.info("report: no %s figure: not applicable: %s", kind, e)
            entries.append((kind, None, f"not applicable: {e}"))
            continue
        except ValueError as e:
            log.warning("report: no %s figure: %s", kind, e)
            entries.append((kind, None, f"not drawn: {e}"))
            continue
        png = os.path.join(out_dir, f"{kind}.png")
        fig.savefig(os.path.join(out_dir, f"{kind}.pdf"))
        plots.save(fig, png)
        entries.append((kind, f"{kind}.png", caption))
    sweeps = ", ".join(sorted(df["sweep_id"].unique()))
    body = [f"<h1>phasemap report: {html.escape(sweeps)}</h1>",
            f"<p>{len(df):,} records, {df.groupby(aggregate.NETWORK).ngroups} networks, "
            f"varying: {html.escape(', '.join(aggregate.varying_axes(df)) or 'nothing')}. τ = {opts.tau}.</p>"]
    for kind, png, caption in entries:
        body.append(f"<h2>{kind}</h2>")
        if png:
            body.append(f'<p><a href="{kind}.pdf"><img src="{png}" style="max-width:100%"></a></p>')
        body.append(f"<p>{html.escape(caption)}</p>")
    index = os.path.join(out_dir, "index.html")
    with open(index, "w") as f:
        f.write("<!doctype html><meta charset='utf-8'><title>phasemap report</title>"
                "<body style='font-family:sans-serif;max-width:1100px;margin:auto'>" + "\n".join(body) + "</body>")
    return index
