"""Figures: draw the tables of `aggregate` (and the spectra beside the records), nothing else.

One fixed colour per phase in every figure, from Paul Tol's colour-blind-safe schemes;
cells with no data are hatched, never coloured as a phase. Save as PNG, SVG or PDF.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from ..analysis.aggregate import has_majority, log_spaced  # noqa: E402
from ..measure.phases import NUMBERED_PHASES, RELATIONS  # noqa: E402

PHASE_COLORS = {
    "CRH": "#332288",
    "backward-CRH": "#4477AA",
    "forward-CRH": "#88CCEE",
    "1": "#117733",
    "2": "#44AA99",
    "3": "#999933",
    "4": "#DDCC77",
    "5": "#CC6677",
    "6": "#882255",
    "7": "#AA4499",
    "8": "#EE7733",
    "9": "#CCBB44",
    "other": "#BBBBBB",  # combinations outside Table 1, e.g. a:RGA+RWA|b:-
    "none": "#F2F2F2",
    "diverged": "#000000",
}
NO_DATA_HATCH = "////"
NO_MAJORITY_HATCH = ".."  # no phase holds more than half of the cell's networks
# the two sides as `phases.phase_of` names them
SIDES = "a: backward, b: forward"
_NUMBERED = {number: pair for pair, number in NUMBERED_PHASES.items()}
PHASE_MEANINGS = {
    "CRH": "all three relations, both sides",
    "backward-CRH": "all three relations on a",
    "forward-CRH": "all three relations on b",
    **{n: f"{a}, both sides" if a == b else f"{a} on a, {b} on b" for n, (a, b) in _NUMBERED.items()},
    "none": "no relation holds",
    "diverged": "training diverged",
}
LEARNING_MEANINGS = {
    "comprehension": "train and held-out accuracy together",
    "grokking": "held-out much later (mean step written in)",
    "unresolved": "probes too sparse to tell",
    "memorisation": "train only, never held-out",
    "confusion": "neither",
    "other": "another outcome",
}
# one colour per line, colour-blind safe (Tol bright)
LINE_COLORS = ["#4477AA", "#EE6677", "#228833", "#CCBB44", "#66CCEE", "#AA3377", "#BBBBBB", "#000000"]
RELATION_NAMES = {"rga": "RGA (H~G)", "rwa": "RWA (H~Z)", "gwa": "GWA (G~Z)"}
AXIS_LABELS = {
    "weight_decay": "weight decay γ",
    "lr": "learning rate η",
    "batch_size": "batch size B",
    "depth": "depth D",  # model.depth: hidden layers of an MLP, conv layers, ResNet layers or blocks
    "width": "width d",
    "momentum": "momentum",
    "optimizer": "optimizer",
    "activation": "activation",
    "step": "training step",
    "layer": "layer l",
    "sweep_id": "sweep",
}
FORMATS = (".png", ".svg", ".pdf")
SPECTRUM_FLOOR = 1e-8


# learning outcomes (aggregate.learning_phases): colour-blind-safe, fixed in every figure
# unresolved (probes too sparse to tell grokking from comprehension) in a pale grey, not a phase colour
LEARNING_COLORS = {"comprehension": "#117733", "grokking": "#332288", "unresolved": "#DDDDDD",
                   "memorisation": "#DDCC77", "confusion": "#882255", "other": "#BBBBBB"}


def phase_meaning(phase: str) -> str:
    """A phase's legend entry: its name and the relations that hold ("3: GWA, both sides",
    "4: RGA on a, RWA on b"); a label outside Table 1 ("a:RGA+GWA|b:-") spelt out."""
    if phase in PHASE_MEANINGS:
        return f"{phase}: {PHASE_MEANINGS[phase]}"
    if isinstance(phase, str) and phase.startswith("a:") and "|b:" in phase:  # phases.phase_of's a:RGA+RWA|b:-
        a, b = (" and ".join(r for r in part.split(":", 1)[1].split("+") if r in RELATIONS) or "none"
                for part in phase.split("|"))
        return f"{phase} ({a} on a, {b} on b)"
    return str(phase)


def _legend_label(phase, colors: dict) -> str:
    if colors is PHASE_COLORS:
        return phase_meaning(phase)
    if colors is LEARNING_COLORS and phase in LEARNING_MEANINGS:
        return f"{phase}: {LEARNING_MEANINGS[phase]}"
    return str(phase)


def phase_color(phase) -> str:
    if phase is None or (isinstance(phase, float) and math.isnan(phase)):
        return "#FFFFFF"
    return PHASE_COLORS.get(str(phase), PHASE_COLORS["other"])


def _style() -> None:
    plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
                         "figure.dpi": 150, "savefig.bbox": "tight", "axes.spines.top": False,
                         "axes.spines.right": False})


def axis_label(name: str, values: Sequence | None = None) -> str:
    label = AXIS_LABELS.get(name, name.replace("_", " "))
    if values is not None and log_spaced(values):
        label += " (log scale)"
    return label


def _tick(v, scientific: bool | None = None) -> str:
    """A tick label; scientific (1e-3) for small or large floats, or when told to."""
    if isinstance(v, (float, np.floating)):
        if v == 0:
            return "0"
        if scientific or (scientific is None and (abs(v) < 1e-2 or abs(v) >= 1e4)):
            mant, exp = f"{v:.1e}".split("e")
            mant = mant.rstrip("0").rstrip(".")
            return f"{mant}e{int(exp)}"
        return f"{v:g}"
    return str(v)


def _ticks(values) -> list[str]:
    """Tick labels in one style per axis: all scientific if any value needs it."""
    nonzero = [abs(float(v)) for v in values if isinstance(v, (float, np.floating)) and v != 0]
    sci = bool(nonzero) and (min(nonzero) < 1e-2 or max(nonzero) >= 1e4)
    return [_tick(v, sci) for v in values]


def save(fig, path: str) -> str:
    if not str(path).endswith(FORMATS):
        raise ValueError(f"`figure file ends with one of {FORMATS}` must hold, but got {path!r}")
    fig.savefig(path)
    plt.close(fig)
    return path


def _facet_axes(table: pd.DataFrame, facet: str | None, width: float = 3.6, height: float = 3.0):
    values = list(pd.unique(table[facet])) if facet else [None]
    values = sorted(values, key=lambda v: (str(type(v)), v)) if facet else values
    fig, axes = plt.subplots(1, len(values), figsize=(width * len(values) + 1.2, height), squeeze=False)
    return fig, list(zip(values, axes[0]))


def _grid_cells(sub: pd.DataFrame, x: str, y: str):
    xs = sorted(sub[x].dropna().unique())
    ys = sorted(sub[y].dropna().unique())
    return xs, ys, {(r[x], r[y]): r for _, r in sub.iterrows()}


def _cells(table: pd.DataFrame, x: str, y: str, facet: str | None, panels):
    """Every cell of every panel as (ax, i, j, its row, or None where there is no data)."""
    for value, ax in panels:
        sub = table if facet is None else table[table[facet] == value]
        xs, ys, cells = _grid_cells(sub, x, y)
        for i, xv in enumerate(xs):
            for j, yv in enumerate(ys):
                r = cells.get((xv, yv))
                yield ax, i, j, (None if r is None or (r["n"] == 0 and not r.get("inferred", False)) else r)
        _label_grid(ax, xs, ys, x, y, facet, value)


def _cell(ax, i: int, j: int, color, empty: bool, alpha: float = 1.0, hatch: str | None = None,
          gid: str | None = None) -> None:
    """A grid cell; `gid` names its element in an SVG (the live view finds a clicked cell by it)."""
    ax.add_patch(plt.Rectangle((i - 0.5, j - 0.5), 1, 1, facecolor=matplotlib.colors.to_rgba(color, alpha),
                               edgecolor="#888888", linewidth=0.5, hatch=NO_DATA_HATCH if empty else hatch, gid=gid))


def _label_grid(ax, xs, ys, x: str, y: str, facet: str | None, value) -> None:
    """Limits, ticks and labels of a grid of cells; the panel's facet value as its title."""
    ax.set_xlim(-0.5, len(xs) - 0.5)
    ax.set_ylim(-0.5, len(ys) - 0.5)
    ax.set_xticks(range(len(xs)), _ticks(xs), rotation=45 if len(xs) > 4 else 0)
    ax.set_yticks(range(len(ys)), _ticks(ys))
    ax.set_xlabel(axis_label(x, xs))
    ax.set_ylabel(axis_label(y, ys))
    if facet:
        ax.set_title(f"{axis_label(facet)} = {_tick(value)}")


def cell_text(r, colors: dict) -> str:
    """What a cell of a phase grid says: its phase over how many of its networks are in it
    ("2 of 3"); "no majority" when no phase holds more than half of them (a tie included),
    with the largest phase's count ("1: 2 of 4"; ties: the name first in sort order); a
    boundary search's inferred cell (no network measured) its label and the model's
    confidence ("~73%"). A label outside `colors` (a:...|b:...) is written out on two lines."""
    phase = r["phase"]
    name = phase if phase in colors else str(phase).replace("|", "\n")
    if bool(r.get("inferred", False)):
        return f"{name}\n~{r['share']:.0%}"
    n = int(r["n"])
    k = int(round(float(r["share"]) * n))
    if not has_majority(float(r["share"])):
        return f"no majority\n{name}: {k} of {n}"
    text = f"{name}\n{k} of {n}"
    if phase == "grokking" and not pd.isna(r.get("grok_step_mean")):
        text += f"\nat {r['grok_step_mean']:.0f}"
    return text


def phase_diagram(grid: pd.DataFrame, x: str, y: str, facet: str | None = None, title: str = "",
                  colors: dict | None = None, legend: str = "phase"):
    """A phase grid (from aggregate.phase_grid, or learning_phase_grid with LEARNING_COLORS) as
    coloured cells, each with its phase and count ("2 of 3", `cell_text`); a cell where no phase
    holds more than half of the networks is white, dotted, and says "no majority". The legend
    names every phase drawn by the relations that hold (`phase_meaning`).

    Cells of a boundary search that were inferred, not measured (`inferred` true, `share` the
    model's confidence), are drawn lighter, the lighter the less sure, with "~" before it. In
    an SVG a cell with data is the element `cell-<its index label in grid>`."""
    _style()
    colors = colors or PHASE_COLORS
    fig, panels = _facet_axes(grid, facet)
    seen, any_inferred, any_split = set(), False, False
    for ax, i, j, r in _cells(grid, x, y, facet, panels):
        phase = None if r is None else r["phase"]
        known = phase in colors
        inferred = r is not None and bool(r.get("inferred", False))
        split = r is not None and not inferred and not has_majority(float(r["share"]))
        any_inferred |= inferred
        any_split |= split
        color = "#FFFFFF" if phase is None or split else colors[phase] if known else colors["other"]
        _cell(ax, i, j, color, empty=r is None, alpha=0.15 + 0.45 * float(r["share"]) if inferred else 1.0,
              hatch=NO_MAJORITY_HATCH if split else None, gid=None if r is None else f"cell-{r.name}")
        if r is not None:
            seen.add(phase)  # named in its cell, coloured or not: the legend decodes it
            dark = not inferred and not split and phase in (
                "CRH", "backward-CRH", "6", "diverged", "1", "grokking", "confusion", "comprehension")
            ax.text(i, j, cell_text(r, colors), ha="center", va="center", fontsize=7,
                    color="white" if dark else "black",
                    bbox=dict(facecolor="white", edgecolor="none", pad=1.0) if split else None)
    drawn = [p for p in colors if p in seen] + sorted(str(p) for p in seen if p not in colors)  # then a:..|b:..
    handles = [Patch(facecolor=colors.get(p, colors["other"]), edgecolor="#888888", label=_legend_label(p, colors))
               for p in drawn]
    if any_split:
        handles.append(Patch(facecolor="white", edgecolor="#888888", hatch=NO_MAJORITY_HATCH,
                             label="no majority: no phase holds\nmore than half the networks"))
    handles.append(Patch(facecolor="white", edgecolor="#888888", hatch=NO_DATA_HATCH, label="no data"))
    if any_inferred:
        handles.append(Patch(facecolor=matplotlib.colors.to_rgba("#888888", 0.3), edgecolor="#888888",
                             label="lighter, ~: inferred\n(model's confidence)"))
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
               title=f"{legend} ({SIDES})" if colors is PHASE_COLORS else legend)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def critical_depth_figure(cd: pd.DataFrame, x: str, y: str, facet: str | None = None, title: str = ""):
    """A critical-depth map (from aggregate.critical_depth_map): l*/D as colour, l* written in."""
    _style()
    fig, panels = _facet_axes(cd, facet, height=3.4)
    fig.set_layout_engine("constrained")
    cmap = plt.get_cmap("viridis")
    for ax, i, j, r in _cells(cd, x, y, facet, panels):
        frac = None if r is None else r["l_star_frac_mean"]
        aligned = frac is not None and not math.isnan(frac)
        _cell(ax, i, j, cmap(frac) if aligned else "#FFFFFF" if r is None else "#DDDDDD", empty=r is None)
        if aligned:
            ax.text(i, j, f"{r['l_star_mean']:.1f}\n({int(r['n_aligned'])}/{int(r['n'])})", ha="center",
                    va="center", fontsize=7, color="white" if frac < 0.6 else "black")
        elif r is not None:
            ax.text(i, j, "none", ha="center", va="center", fontsize=7, color="#444444")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, 1))
    fig.colorbar(sm, ax=[a for _, a in panels], label="critical depth l*/D (cells: mean l*, aligned/all)")
    handles = [Patch(facecolor="#DDDDDD", edgecolor="#888888", label="no aligned suffix"),
               Patch(facecolor="white", edgecolor="#888888", hatch=NO_DATA_HATCH, label="no data")]
    fig.legend(handles=handles, loc="outside lower center", ncol=2, frameon=False)
    if title:
        fig.suptitle(title)
    return fig


SYMBOLS = {"weight_decay": "γ", "lr": "η", "batch_size": "B", "depth": "D", "width": "d", "sweep_id": "sweep"}


def _series_label(row: pd.Series, keys: Sequence[str]) -> str:
    return ", ".join(f"{SYMBOLS.get(k, k)} = {_tick(row[k])}" for k in keys) or "all"


def alignment_limits(values) -> tuple[float, float]:
    """y limits of an alignment axis: 0 to 1, reaching below 0 only for a drawn value (a mean
    less its spread, a null band) that is negative and above 1 only for one beyond it; a margin
    of 0.05 each side."""
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    low, high = (min(0.0, v.min()), max(1.0, v.max())) if v.size else (0.0, 1.0)
    return low - 0.05, high + 0.05


def layers_figure(profile: pd.DataFrame, keys: Sequence[str], title: str = "", spread: str = "mean ± std over seeds"):
    """Alignment by layer (aggregate.layer_profile): six panels, one line per config, each
    with its null (dotted, a band of ± one std) where the records have one. `spread` says what
    the error bars are over (a legend entry); the y axis spans the data (`alignment_limits`)."""
    _style()
    fig, axes = plt.subplots(2, 3, figsize=(10, 5.6), sharex=True, sharey=True)
    groups = list(profile.groupby(list(keys), sort=True)) if keys else [((), profile)]
    drawn = []  # every value drawn, for the y limits
    for (gi, (name, sub)) in enumerate(groups[: len(LINE_COLORS) * 2]):
        row = sub.iloc[0]
        for si, side in enumerate("ba"):
            for ri, rel in enumerate(("rga", "rwa", "gwa")):
                ax = axes[si, ri]
                col = f"{rel}_{side}"
                color = LINE_COLORS[gi % len(LINE_COLORS)]
                mean, std = sub[f"{col}_mean"], sub[f"{col}_std"].fillna(0)
                ax.errorbar(sub["layer"], mean, yerr=std, color=color, linestyle="-" if gi < len(LINE_COLORS) else "--",
                            marker="o", markersize=3, capsize=2, label=_series_label(row, keys) if (si, ri) == (0, 0) else None)
                drawn += [mean - std, mean + std]
                if f"{col}_null_mean" in sub and sub[f"{col}_null_mean"].notna().any():
                    # the chance level: alignment of the same spectra with unrelated eigenvectors
                    null, band = sub[f"{col}_null_mean"], sub[f"{col}_null_std"].fillna(0)
                    ax.plot(sub["layer"], null, color=color, linestyle=":", linewidth=1)
                    if (gi, si, ri) == (0, 0, 0):  # one legend entry, in grey: it stands for every colour
                        ax.plot([], [], color="#666666", linestyle=":", linewidth=1, label="null (chance level)")
                    ax.fill_between(sub["layer"], null - band, null + band, color=color, alpha=0.12, linewidth=0)
                    drawn += [null - band, null + band]
                ax.set_title(f"{RELATION_NAMES[rel]}, {'forward (b)' if side == 'b' else 'backward (a)'}")
    axes[0, 0].set_ylim(*alignment_limits(np.concatenate([np.asarray(d, dtype=float) for d in drawn]) if drawn else []))
    if axes[0, 0].get_ylim()[0] < -0.05:  # a negative value: mark zero
        for ax in axes.ravel():
            ax.axhline(0, color="#CCCCCC", linewidth=0.5)
    named = profile.drop_duplicates("layer").sort_values("layer") if "layer_name" in profile else None
    for ax in axes[1]:
        ax.set_xlabel("layer l (last = output)")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # layers are whole numbers
        if named is not None and named["layer_name"].notna().all() and \
                named["layer_name"].tolist() != [f"fc{i}" for i in named["layer"]]:
            ax.set_xticks(named["layer"], named["layer_name"], rotation=45, ha="right")  # the model's names
    for ax in axes[:, 0]:
        ax.set_ylabel("alignment α")
    axes[0, 0].errorbar([], [], yerr=[], color="#666666", marker="o", markersize=3, capsize=2, label=spread)
    fig.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def evolution_figure(evo: pd.DataFrame, column: str, keys: Sequence[str], title: str = "",
                     spread: str = "mean ± std over seeds"):
    """One alignment column over training steps (aggregate.evolution), one line per config,
    with a band of ± one std; `spread` says what it is over (a legend entry); the y axis spans
    the data (`alignment_limits`)."""
    _style()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    groups = list(evo.groupby(list(keys), sort=True)) if keys else [((), evo)]
    drawn = []
    for gi, (_, sub) in enumerate(groups[: len(LINE_COLORS) * 2]):
        sub = sub[sub["step"] > 0] if (evo["step"] > 0).any() else sub
        if sub.empty:  # a config whose every network diverged at step 0: nothing on a log axis
            continue
        color = LINE_COLORS[gi % len(LINE_COLORS)]
        mean, std = sub[f"{column}_mean"], sub[f"{column}_std"].fillna(0)
        ax.plot(sub["step"], mean, color=color, marker="o", markersize=3,
                linestyle="-" if gi < len(LINE_COLORS) else "--", label=_series_label(sub.iloc[0], keys))
        ax.fill_between(sub["step"], mean - std, mean + std, color=color, alpha=0.15, linewidth=0)
        drawn += [mean - std, mean + std]
    ax.set_xscale("log")
    ax.set_xlabel("training step (log scale)")
    ax.set_ylabel(f"alignment α ({column})")
    ax.set_ylim(*alignment_limits(np.concatenate([np.asarray(d, dtype=float) for d in drawn]) if drawn else []))
    if ax.get_ylim()[0] < -0.05:
        ax.axhline(0, color="#CCCCCC", linewidth=0.5)
    ax.fill_between([], [], [], color="#666666", alpha=0.15, linewidth=0, label=f"band: {spread}")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    if title:
        ax.set_title(title)
    return fig


def spectra_figure(spectra: pd.DataFrame, records: pd.DataFrame, side: str = "b", title: str = ""):
    """log-log eigenvalues of H against G per layer of one network, both sorted (paper Fig. 3,
    20), with the sorted fit from the records, the paired exponent in the title (SCIENCE.md: the
    sorted fit is never negative) and reference power laws k = 1/3, 1/2, 1, 2, 3."""
    _style()
    sizes = spectra[(spectra["side"] == side) & (spectra["matrix"] == "H")].groupby("layer").size()
    layers = sorted(sizes[sizes > 1].index)  # a 1x1 matrix has no spectrum to compare
    fig, axes = plt.subplots(1, len(layers), figsize=(2.6 * len(layers) + 0.5, 2.8), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        s = spectra[(spectra["layer"] == layer) & (spectra["side"] == side)]
        h = s[s["matrix"] == "H"].sort_values("rank")["eigenvalue"].to_numpy()
        g = s[s["matrix"] == "G"].sort_values("rank")["eigenvalue"].to_numpy()
        rec = records[records["layer"] == layer]
        k = rec[f"pah_hg_{side}_sorted"].iloc[0] if len(rec) else float("nan")  # this figure's fit
        n = int(rec[f"pah_hg_{side}_sorted_n"].iloc[0]) if len(rec) else 0
        paired = rec[f"pah_hg_{side}"].iloc[0] if len(rec) else float("nan")
        # below ~1e-8 of the largest, eigenvalues of float32 sums are rounding, not spectrum
        keep = (h > SPECTRUM_FLOOR * h.max(initial=0)) & (g > SPECTRUM_FLOOR * g.max(initial=0))
        ax.loglog(g[keep], h[keep], "o", markersize=2.5, color="#4477AA", label="eigenvalues")
        if keep.sum() >= 2:
            g0, h0 = g[keep][0], h[keep][0]
            grid = np.geomspace(g[keep].min(), g0, 20)
            for ref, style in ((1 / 3, ":"), (0.5, "-."), (1, "--"), (2, "-"), (3, (0, (1, 3)))):
                ax.loglog(grid, h0 * (grid / g0) ** ref, linestyle=style, color="#999999", linewidth=0.7)
                ax.annotate(f"{ref:.2g}", (grid[0], h0 * (grid[0] / g0) ** ref), fontsize=6, color="#777777")
            if not math.isnan(k) and n >= 2:
                used = np.arange(len(g)) < n
                gf, hf = g[used & keep], h[used & keep]
                if len(gf):
                    c = np.exp(np.mean(np.log(hf) - k * np.log(gf)))
                    ax.loglog(gf, c * gf**k, color="#EE6677", linewidth=1.2, label=f"sorted fit k = {k:.2f}")
        if keep.any():
            ax.set_ylim(h[keep].min() / 3, h[keep].max() * 3)  # reference lines must not rescale the data
        title = f"layer {layer}: sorted k = {k:.2f}" if not math.isnan(k) else f"layer {layer}"
        if not math.isnan(paired):
            title += f"\npaired k = {paired:.2f}"
        ax.set_title(title)
        ax.set_xlabel(f"λ of G_{side} (log)")
        ax.set_ylabel(f"λ of H_{side} (log)")
    axes[0][0].legend(frameon=False, loc="lower right")
    if title:
        fig.suptitle(title + "  (grey: λ_H ∝ λ_G^k for k = 1/3, 1/2, 1, 2, 3; λ < 1e-8 λ_max not drawn)")
    fig.tight_layout()
    return fig
