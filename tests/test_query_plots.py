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


def test_report_writes_every_figure_and_an_index(root, tmp_path):
    out = tmp_path / "report"
    assert main(["report", str(root), "--sweep", "syn", "--out", str(out)]) == 0
    index = (out / "index.html").read_text()
    for kind in ("phase-diagram", "critical-depth", "layers", "evolution"):
        assert (out / f"{kind}.png").exists() and (out / f"{kind}.pdf").exists() and f"{kind}.png" in index
    assert "spectra" in index  # no spectra for synthetic records: said so, not a crash


def test_a_missing_root_is_an_error_not_an_empty_table(tmp_path, capsys):
    with pytest.raises(DatasetError, match="does not exist"):
        load(str(tmp_path / "nope"))
    assert main(["query", str(tmp_path / "nope"), "SELECT count(*) FROM records"]) == 2
    assert "does not exist" in capsys.readouterr().err
