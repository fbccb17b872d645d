"""Reading the dataset (load, SQL, bad files) and drawing every figure kind."""

import matplotlib
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from synthetic import synthetic_records

from phasemap import load, parse_config, sql, train_pack
from phasemap.analysis.aggregate import phase_grid
from phasemap.cli import main
from phasemap.figures.plots import NO_DATA_HATCH, PHASE_COLORS, phase_diagram, phase_color
from phasemap.measure import power_law_fit
from phasemap.analysis.query import DatasetError
from phasemap.records import SCHEMA, read_spectra


def write_dataset(root, df):
    for (sweep, run), part in df.groupby(["sweep_id", "run_id"]):
        folder = root / f"sweep={sweep}" / f"run={run}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pandas(part, schema=SCHEMA, preserve_index=False), folder / "part-000000001.parquet")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("records")
    df = synthetic_records(missing={(8, 1e-4)})
    write_dataset(root, df)
    other = synthetic_records(depths=(2,), weight_decays=(0.0,)).assign(sweep_id="other", run_id="o1")
    write_dataset(root, other)
    return root


def test_load_reads_filters_and_columns(root):
    everything = load(str(root))
    assert set(everything["sweep_id"]) == {"syn", "other"}
    some = load(str(root), filters={"sweep_id": "syn", "layer": [1, 2]}, columns=["depth", "layer", "rga_b"])
    assert list(some.columns) == ["depth", "layer", "rga_b"]
    assert set(some["layer"]) == {1, 2}
    assert len(some) == ((everything["sweep_id"] == "syn") & everything["layer"].isin([1, 2])).sum()


def test_sql_over_the_records_view(root):
    got = sql(str(root), "SELECT depth, count(*) AS n, avg(rga_b) AS m FROM records WHERE sweep = 'syn' "
                         "GROUP BY depth ORDER BY depth")
    df = load(str(root), filters={"sweep_id": "syn"})
    expected = df.groupby("depth").agg(n=("rga_b", "size"), m=("rga_b", "mean")).reset_index()
    assert got["depth"].tolist() == expected["depth"].tolist() and got["n"].tolist() == expected["n"].tolist()
    assert np.allclose(got["m"], expected["m"])


def test_bad_files_are_reported_by_name_and_skipped_or_fatal(tmp_path, root, caplog):
    write_dataset(tmp_path, synthetic_records(depths=(2,), weight_decays=(0.0,)))
    bad = tmp_path / "sweep=syn" / "run=broken" / "part-000000001.parquet"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not parquet at all")
    old = tmp_path / "sweep=syn" / "run=old" / "part-000000001.parquet"
    old.parent.mkdir(parents=True)
    pq.write_table(pa.table({"x": [1]}).replace_schema_metadata({"phasemap_schema_version": "0"}), old)
    df = load(str(tmp_path))
    assert len(df) > 0 and "broken" not in set(df["run_id"])
    assert "run=broken" in caplog.text and "unknown schema version '0'" in caplog.text
    with pytest.raises(DatasetError, match="run=broken.*unreadable"):
        load(str(tmp_path), strict=True)


def test_cli_query_prints_writes_and_rejects_bad_sql(root, tmp_path, capsys):
    assert main(["query", str(root), "SELECT count(DISTINCT run_id) AS runs FROM records"]) == 0
    assert "runs" in capsys.readouterr().out
    out = tmp_path / "q.csv"
    assert main(["query", str(root), "SELECT depth, layer FROM records LIMIT 5", "--out", str(out)]) == 0
    assert pd.read_csv(out).shape == (5, 2)
    assert main(["query", str(root), "SELEC nonsense"]) == 2
    assert "error" in capsys.readouterr().err


def test_phase_colours_are_fixed_and_distinct():
    assert len(set(PHASE_COLORS.values())) == len(PHASE_COLORS)
    assert phase_color("a:RGA+RWA|b:-") == PHASE_COLORS["other"] and phase_color(float("nan")) == "#FFFFFF"


def test_phase_diagram_hatches_cells_without_data(root):
    grid = phase_grid(load(str(root), filters={"sweep_id": "syn"}), "weight_decay", "depth")
    fig = phase_diagram(grid, "weight_decay", "depth")
    ax = fig.axes[0]
    hatched = [p for p in ax.patches if p.get_hatch() == NO_DATA_HATCH]
    assert len(hatched) == 1  # the one missing (depth 8, wd 1e-4) cell
    crh = [p for p in ax.patches if matplotlib.colors.to_hex(p.get_facecolor()) == PHASE_COLORS["CRH"].lower()]
    assert len(crh) == (grid["phase"] == "CRH").sum()
    assert ax.get_xlabel().startswith("weight decay") and ax.get_ylabel().startswith("depth")


@pytest.mark.parametrize("kind,suffix", [("phase-diagram", "png"), ("critical-depth", "svg"), ("layers", "pdf"),
                                         ("evolution", "png")])
def test_cli_plot_every_kind(root, tmp_path, kind, suffix):
    out = tmp_path / f"fig.{suffix}"
    assert main(["plot", str(root), kind, "--sweep", "syn", "--out", str(out)]) == 0
    assert out.stat().st_size > 1000


def test_cli_plot_with_where_and_bad_options(root, tmp_path, capsys):
    out = tmp_path / "f.png"
    assert main(["plot", str(root), "phase-diagram", "--where", "depth >= 4", "--sweep", "syn", "--out", str(out)]) == 0
    assert main(["plot", str(root), "phase-diagram", "--x", "colour", "--out", str(out)]) == 2
    assert "'colour'" in capsys.readouterr().err
    assert main(["plot", str(root), "phase-diagram", "--out", str(tmp_path / "f.bmp")]) == 2


def test_spectra_are_written_and_match_the_recorded_exponents(tmp_path, capsys):
    cfg = parse_config({"task": {"name": "fc2", "input_dim": 12, "output_dim": 6}, "model": {"depth": 2, "width": 10},
                        "optimizer": {"weight_decay": [0.0, 1e-2]}, "train": {"steps": 30, "batch_size": 16},
                        "probe": {"n_samples": 200, "count": 2}})
    result = train_pack(cfg, root=str(tmp_path))
    spectra = read_spectra(str(tmp_path))
    dims = [12, 10, 10, 6]
    assert len(spectra) == 2 * sum(3 * (dims[l] + dims[l + 1]) for l in range(3))
    rec = result.records[result.records["step"] == 30]
    for (member, layer), row in rec.set_index(["member", "layer"]).iterrows():
        s = spectra[(spectra["member"] == member) & (spectra["layer"] == layer) & (spectra["side"] == "b")]
        h = s[s["matrix"] == "H"].sort_values("rank")["eigenvalue"].to_numpy()
        g = s[s["matrix"] == "G"].sort_values("rank")["eigenvalue"].to_numpy()
        import torch

        k, r2, n = power_law_fit(torch.tensor(h), torch.tensor(g), cfg.probe.pah_floor)
        assert int(n) == row["pah_hg_b_sorted_n"]  # the figure's spectra give the sorted fit
        assert (np.isnan(row["pah_hg_b_sorted"]) and np.isnan(k.item())) or k.item() == pytest.approx(row["pah_hg_b_sorted"])
    out = tmp_path / "spectra.png"
    assert main(["plot", str(tmp_path), "spectra", "--out", str(out)]) == 0
    assert out.stat().st_size > 1000


def test_report_writes_every_figure_and_an_index(root, tmp_path, caplog):
    out = tmp_path / "report"
    assert main(["report", str(root), "--sweep", "syn", "--out", str(out)]) == 0
    index = (out / "index.html").read_text()
    for kind in ("phase-diagram", "critical-depth", "layers", "evolution"):
        assert (out / f"{kind}.png").exists() and (out / f"{kind}.pdf").exists() and f"{kind}.png" in index
    # figures these records cannot have are said to be so, with no warning
    assert "<p>not applicable: no classification task (learning phases need train and held-out accuracy)</p>" in index
    assert "<p>not applicable: no spectra under the root" in index  # synthetic records have no spectra files
    assert [r for r in caplog.records if r.levelno >= 30] == []


def test_a_missing_root_is_an_error_not_an_empty_table(tmp_path, capsys):
    with pytest.raises(DatasetError, match="does not exist"):
        load(str(tmp_path / "nope"))
    assert main(["query", str(tmp_path / "nope"), "SELECT count(*) FROM records"]) == 2
    assert "does not exist" in capsys.readouterr().err


# ----------------------------------------------------------------------------- figures a reader need not decode


def _texts(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def _legend_texts(fig):
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def test_the_phase_legend_names_every_phase_by_its_relations():
    phases = ["CRH", "backward-CRH", "forward-CRH", *map(str, range(1, 10)), "none", "diverged", "a:RGA+GWA|b:-"]
    grid = pd.DataFrame({"weight_decay": [float(i) for i in range(len(phases))], "depth": 2, "phase": phases,
                         "n": 3, "share": 1.0})
    fig = phase_diagram(grid, "weight_decay", "depth")
    assert _legend_texts(fig) == [
        "CRH: all three relations, both sides", "backward-CRH: all three relations on a",
        "forward-CRH: all three relations on b",
        "1: RGA, both sides", "2: RWA, both sides", "3: GWA, both sides", "4: RGA on a, RWA on b",
        "5: RWA on a, RGA on b", "6: RGA on a, GWA on b", "7: GWA on a, RGA on b", "8: RWA on a, GWA on b",
        "9: GWA on a, RWA on b", "none: no relation holds", "diverged: training diverged",
        "a:RGA+GWA|b:- (RGA and GWA on a, none on b)", "no data"]
    assert fig.legends[0].get_title().get_text() == "phase (a: backward, b: forward)"
    assert "a:RGA+GWA\nb:-\n3 of 3" in _texts(fig)  # the label outside Table 1 is written in its cell


def test_cells_give_their_count_and_say_no_majority_where_none_holds_more_than_half():
    # shares 3/4, 2/4 (a tie), 2/5 (a plurality), 1/1; and a boundary search's inferred cell (n = 0)
    grid = pd.DataFrame({"weight_decay": [0.0, 1e-3, 1e-2, 1e-1, 1.0], "depth": 2,
                         "phase": ["3", "1", "4", "CRH", "6"], "n": [4, 4, 5, 1, 0],
                         "share": [0.75, 0.5, 0.4, 1.0, 0.73], "inferred": [False, False, False, False, True]})
    fig = phase_diagram(grid, "weight_decay", "depth")
    assert _texts(fig) == ["3\n3 of 4", "no majority\n1: 2 of 4", "no majority\n4: 2 of 5", "CRH\n1 of 1", "6\n~73%"]
    ax = fig.axes[0]
    dotted = [p for p in ax.patches if p.get_hatch() == ".."]
    assert len(dotted) == 2 and all(matplotlib.colors.to_hex(p.get_facecolor()) == "#ffffff" for p in dotted)
    legend = _legend_texts(fig)
    assert "no majority: no phase holds\nmore than half the networks" in legend
    assert "1: RGA, both sides" in legend and "4: RGA on a, RWA on b" in legend  # named in the dotted cells


def test_alignment_axes_span_the_data_and_say_what_the_bars_are_over():
    from phasemap.figures.plots import evolution_figure, layers_figure

    cols = ["rga_a", "rwa_a", "gwa_a", "rga_b", "rwa_b", "gwa_b"]
    profile = pd.DataFrame({"layer": [1, 2, 3], **{f"{c}_mean": [0.2, 0.5, 0.9] for c in cols},
                            **{f"{c}_std": [0.1, 0.1, 0.0] for c in cols}})
    fig = layers_figure(profile, [], spread="mean ± std over 3 seeds")
    assert fig.axes[0].get_ylim() == pytest.approx((-0.05, 1.05))  # all positive: 0 to 1
    assert "mean ± std over 3 seeds" in [t.get_text() for t in fig.legends[0].get_texts()]
    profile.loc[0, "gwa_b_mean"] = -0.3  # one negative mean, less its std: -0.4
    fig = layers_figure(profile, [])
    assert all(ax.get_ylim() == pytest.approx((-0.45, 1.05)) for ax in fig.axes)
    evo = pd.DataFrame({"step": [10, 100, 1000], "rga_b_mean": [-0.2, 0.4, 0.8], "rga_b_std": [0.05, 0.0, 0.3]})
    fig = evolution_figure(evo, "rga_b", [], spread="mean ± std over the pooled depth (one seed)")
    assert fig.axes[0].get_ylim() == pytest.approx((-0.3, 1.15))  # -0.2 - 0.05 and 0.8 + 0.3, each less/plus 0.05
    assert "band: mean ± std over the pooled depth (one seed)" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_captions_say_what_the_spread_is_over():
    from phasemap.figures.report import _spread

    df = synthetic_records(depths=(2,), weight_decays=(0.0, 1e-3), seeds=(0, 1, 2))
    assert _spread(df, ["weight_decay"]) == "mean ± std over 3 seeds"
    assert _spread(df, []) == "mean ± std over 3 seeds and the pooled weight_decay"
    one = df[df["seed"] == 0]
    assert _spread(one, []) == "mean ± std over the pooled weight_decay (one seed)"
    assert _spread(one, ["weight_decay"]) == "one network per line: no spread"


def test_a_report_of_several_sweeps_asks_for_sweep_or_all(root, tmp_path, capsys):
    from phasemap.figures.report import FigureOptions, make_figure

    assert main(["report", str(root), "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: `one sweep, --sweep NAME or --all` must hold, but the records hold 2 sweeps (other, syn): --sweep NAME "
        "reports one, --all reports them side by side (a panel per sweep)")
    assert not (tmp_path / "r").exists()
    assert main(["report", str(root), "--sweep", "syn", "--all", "--out", str(tmp_path / "r")]) == 2
    assert "`--sweep or --all, not both` must hold, but got --sweep syn --all" in capsys.readouterr().err
    fig, table, caption = make_figure(load(str(root)), "phase-diagram", FigureOptions())  # what --all draws
    assert [ax.get_title() for ax in fig.axes] == ["sweep = other", "sweep = syn"]
    assert set(table["sweep_id"]) == {"other", "syn"}


def test_query_and_plot_read_several_roots_as_one(root, tmp_path, capsys):
    second = tmp_path / "second"
    write_dataset(second, synthetic_records(depths=(4,), weight_decays=(1e-2,), seeds=(0,)).assign(sweep_id="third",
                                                                                               run_id="t1"))
    assert main(["query", str(root), str(second), "SELECT sweep_id, count(*) AS n FROM records GROUP BY ALL ORDER BY ALL",
                 "--out", str(tmp_path / "n.csv")]) == 0
    got = pd.read_csv(tmp_path / "n.csv")
    expected = pd.concat([load(str(root)), load(str(second))]).groupby("sweep_id").size()
    assert dict(zip(got["sweep_id"], got["n"])) == expected.to_dict() and set(got["sweep_id"]) == {"syn", "other", "third"}
    both = load([str(root), str(second)], filters={"layer": 1})
    # layer-1 rows: networks x 3 steps; syn 11 cells x 3 seeds, other 1 x 3, third 1 x 1
    assert both.groupby("sweep_id").size().to_dict() == {"other": 9, "syn": 99, "third": 3}
    # a sweep id under both roots would make two networks one: refused, named
    write_dataset(tmp_path / "copy", synthetic_records(depths=(2,), weight_decays=(0.0,)).assign(sweep_id="other"))
    capsys.readouterr()
    assert main(["query", str(root), str(tmp_path / "copy"), "SELECT 1"]) == 2
    assert f"but got sweep 'other' under {root} and {tmp_path / 'copy'}" in capsys.readouterr().err


def test_evolution_leaves_out_a_config_whose_networks_diverged_at_step_0():
    from phasemap.figures import plots

    evo = pd.DataFrame({"lr": [0.1, 0.1, 0.1, 100.0], "step": [0, 10, 20, 0],
                        "rga_b_mean": [0.2, 0.5, 0.8, float("nan")], "rga_b_std": [0.0, 0.1, 0.1, float("nan")]})
    fig = plots.evolution_figure(evo, "rga_b", ["lr"])  # raised IndexError on the empty lr = 100 group
    (line,) = fig.axes[0].get_lines()
    assert list(line.get_xdata()) == [10, 20] and list(line.get_ydata()) == [0.5, 0.8]
