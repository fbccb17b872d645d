"""What the live view's JSON API answers, as plain functions of the records (no HTTP here).

Every figure and table comes from `figures.report.make_figure` and `analysis.aggregate`,
the same code as `phasemap report`: one definition of every figure. Nothing here imports
torch.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .. import records
from ..analysis import aggregate
from ..analysis.query import LiveRecords
from ..figures import report
from ..measure.phases import ALIGNMENT_COLUMNS
from ..sweep import boundary
from ..sweep import status as sweep_status

# the figures the page shows for a sweep, in its order; a cell of the first and last is clickable
PAGE_KINDS = ("phase-diagram", "critical-depth", "learning-phase")
ROW_CAP = 10_000  # most rows a query returns


class BadRequest(ValueError):
    """A request the API refuses, with a message that says why (HTTP 400)."""


def jsonable(df: pd.DataFrame) -> list[dict]:
    """Rows as JSON-ready dicts: NaN and NaT as null, numpy scalars as Python numbers."""
    return json.loads(df.to_json(orient="records", double_precision=15, date_format="iso"))


def options(params: dict, frame: pd.DataFrame, default: dict) -> report.FigureOptions:
    """Figure options from query parameters (`x`, `y`, `facet`, `layer`, `tau`, `against`; those
    not given from `default`, `boundary.judging`'s), each checked against the records with the
    parameter and the value named."""
    opts = report.FigureOptions()
    for name in ("x", "y", "facet"):
        value = params.get(name) or None
        if value is not None and value not in frame:
            raise BadRequest(f"{name}: `a record column` must hold, but got {value!r}")
        setattr(opts, name, value)
    try:
        opts.layer = aggregate.parse_layer(str(params.get("layer") or default["layer"]))
        opts.tau = float(params.get("tau") or default["tau"])
    except ValueError as e:
        raise BadRequest(f"layer or tau: {e}") from None
    if not 0 < opts.tau <= 1:
        raise BadRequest(f"tau: `0 < tau <= 1` must hold, but got {opts.tau!r}")
    opts.against = params.get("against") or default["against"]
    if opts.against not in ("raw", "null"):
        raise BadRequest(f"against: `raw or null` must hold, but got {opts.against!r}")
    try:
        x, y, facet = report.choose_axes(frame, opts)
        if facet in (x, y):
            raise ValueError(f"facet: `a column other than x and y` must hold, but got {facet!r} (x={x!r}, y={y!r})")
        boundary.check_measurable(frame, opts.layer, opts.against)  # a layer the networks have; a null measured
    except ValueError as e:
        raise BadRequest(str(e).lstrip("-")) from None
    return opts


def svg(fig) -> str:
    """A matplotlib figure as inline SVG (text kept as text), and closed."""
    import matplotlib
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]  # no XML prolog: it goes inside the page


def figure(live: LiveRecords, sweep: str, kind: str, params: dict) -> dict:
    """One figure of a sweep: its SVG and caption (and for a phase grid the table it draws,
    `cells`, with each row's SVG element id in `ids`), or why it is not drawn (`missing`)."""
    if kind not in PAGE_KINDS + ("layers",):
        raise BadRequest(f"kind: `one of {', '.join(PAGE_KINDS + ('layers',))}` must hold, but got {kind!r}")
    df = live.frame(sweep)
    if df.empty:
        return {"kind": kind, "missing": "no records yet"}
    opts = options(params, df, judged(live, sweep))
    try:
        fig, table, caption = report.make_figure(df, kind, opts, root=live.root)
    except report.NotApplicable as e:
        return {"kind": kind, "missing": f"not applicable: {e}"}
    except ValueError as e:  # a layer the networks lack, too few records for this figure yet
        return {"kind": kind, "missing": f"not drawn: {e}"}
    x, y, facet = report.choose_axes(df, opts)
    out = {"kind": kind, "svg": svg(fig), "caption": caption, "x": x, "y": y, "facet": facet}
    if kind in ("phase-diagram", "learning-phase"):  # row i of cells is the SVG element ids[i]
        out.update(cells=jsonable(table), ids=[f"cell-{label}" for label in table.index])
    return out


def phase_grid(live: LiveRecords, sweep: str, params: dict) -> dict:
    """The phase diagram's cells: the axes' values, `phase`, `share` of its networks in it and
    `n` networks (0 and phase null where none was measured; a boundary search's inferred cells
    have `inferred` true and `share` the model's confidence)."""
    out = figure(live, sweep, "phase-diagram", params)
    if "missing" in out:
        raise BadRequest(f"sweep {sweep!r}: {out['missing']}")
    keys = [k for k in (out["facet"], out["y"], out["x"]) if k]
    cells = [{**{k: c[k] for k in keys}, "phase": c["phase"], "share": c["share"], "networks": c["n"],
              "inferred": bool(c.get("inferred") or False)} for c in out["cells"]]
    return {"x": out["x"], "y": out["y"], "facet": out["facet"], "cells": cells}


def judged(live: LiveRecords, sweep: str) -> dict:
    """The sweep's default layer, tau and against (`boundary.judging`: a boundary search's own)."""
    return boundary.judging(boundary.read_state(live.root, sweep))


def _match(df: pd.DataFrame, cell: dict) -> pd.DataFrame:
    """The records of one cell: {column: value}, numbers compared to 1e-9 relative."""
    keep = np.ones(len(df), dtype=bool)
    for column, value in cell.items():
        if column not in df:
            raise BadRequest(f"cell: `a record column` must hold, but got {column!r}")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and pd.api.types.is_numeric_dtype(df[column]):
            keep &= np.isclose(df[column].to_numpy(dtype=float), float(value), rtol=1e-9, atol=0.0)
        else:
            keep &= (df[column].astype(str) == str(value)).to_numpy()
    return df[keep]


def networks(live: LiveRecords, sweep: str, cell: dict, params: dict) -> dict:
    """The networks of one cell ({column: value}) at the chosen layer and their last step: a
    table (config, status, phase, the six alignments, losses) and their layer figure."""
    df = _match(live.frame(sweep), cell)
    if df.empty:
        return {"columns": [], "rows": [], "svg": None, "caption": "no networks in this cell"}
    opts = options(params, df, judged(live, sweep))
    rows = aggregate.labelled(df, opts.tau, opts.layer, opts.against)
    keep = [*aggregate.NETWORK, *(c for c in aggregate.SEEDS if c in rows), "step", "layer", "status", "phase",
            *ALIGNMENT_COLUMNS, "train_loss", "probe_loss", "train_accuracy", "probe_accuracy"]
    rows = rows[[c for c in keep if c in rows and not (c.endswith("accuracy") and rows[c].isna().all())]]
    rows = rows.sort_values(aggregate.NETWORK).reset_index(drop=True)
    fig, _, caption = report.make_figure(df, "layers", opts, root=live.root)
    return {"columns": list(rows.columns), "rows": jsonable(rows), "svg": svg(fig), "caption": caption}


@dataclass
class Progress:
    """A sweep's progress over the server's own observations: member-steps done at each
    status, so the time left is from the rate seen in the last minutes; its packs, read again
    only when the sweep's files change or `every` seconds pass (a lease expires unseen); and
    what its records say, again only when they change."""

    seen: deque = field(default_factory=lambda: deque(maxlen=600))
    every: float = 15.0
    _packs: tuple = (None, -float("inf"), [])  # (listing, time read, packs)
    _facts: tuple = (None, {})  # (the records' stamp, facts)

    def time_left(self, done: float, remaining: float, window: float = 300.0) -> float | None:
        now = time.monotonic()
        self.seen.append((now, done))
        while len(self.seen) > 2 and now - self.seen[0][0] > window:
            self.seen.popleft()
        t0, d0 = self.seen[0]
        if remaining <= 0:
            return 0.0
        if now - t0 < 2.0 or done <= d0:
            return None  # not measured yet, or nothing moving
        return remaining / ((done - d0) / (now - t0))

    def facts(self, live: LiveRecords, sweep: str) -> dict:
        """What the records say of the sweep (networks with records, records, the axes that vary,
        the most hidden layers), worked out again only when its records change."""
        stamp = live.stamp(sweep)
        if self._facts[0] != stamp:
            df = live.frame(sweep)
            self._facts = (stamp, {
                "measured": len(df.drop_duplicates(aggregate.NETWORK)) if len(df) else 0,
                "records": len(df),
                "axes": aggregate.varying_axes(df) if len(df) else [],
                "hidden_layers": int(aggregate.n_hidden(df).max()) if len(df) else 0})
        return self._facts[1]

    def packs(self, root: str, sweep: str) -> list[dict]:
        """`status.storage_status`, from the last read while the sweep's files are as they were."""
        listing = tuple((i.path, i.mtime_ns, i.size) for i in records.sweep_files(root, sweep))
        seen, when, packs = self._packs
        if listing != seen or time.monotonic() - when >= self.every:
            packs = sweep_status.storage_status(root, sweep)
            self._packs = (listing, time.monotonic(), packs)
        return packs


def status(live: LiveRecords, sweep: str, progress: Progress) -> dict:
    """Where a sweep stands: members per state, each pack (state, its configs by the fields that
    vary, last step), the time left at the rate seen, and what the controls can choose."""
    packs = progress.packs(live.root, sweep)
    counts = sweep_status.member_counts(packs)
    done = remaining = 0.0
    for p in packs:
        n, steps = p["members"] or 0, p["steps"] or 0
        at = steps if p["state"] == "complete" else (p["last_step"] or 0)
        done += n * at
        remaining += 0 if p["state"] == "complete" else n * max(steps - at, 0)
    left = progress.time_left(done, remaining)
    facts = progress.facts(live, sweep)
    state = boundary.read_state(live.root, sweep)
    return {
        "sweep": sweep,
        "stamp": str(hash(live.stamp(sweep))),
        "counts": counts,
        "networks": sum(counts.values()),
        **facts,
        "time_left_s": None if left is None or math.isinf(left) else round(left, 1),
        "packs": [{"run_id": p["run_id"], "state": p["state"], "members": p["members"], "configs": label,
                   "last_step": p["last_step"], "steps": p["steps"]}
                  for p, label in zip(packs, sweep_status.pack_labels(packs))],
        "boundary": None if state is None else {k: state[k] for k in ("round", "budget", "used", "cells", "measured",
                                                                      "uncertain", "finished")},
        "judged": boundary.judging(state),  # the controls' defaults: layer, tau, against
    }
