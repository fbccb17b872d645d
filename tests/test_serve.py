"""`phasemap serve`: the incremental reader, the JSON API by value, read-only SQL and the token.

The API runs in-process on aiohttp's test server (a real HTTP server on loopback) over
synthetic records with planted phases; one test starts `phasemap serve` as a process
(integration) for the host and token rules.
"""

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiohttp.test_utils import TestClient, TestServer

from phasemap import load
from phasemap.analysis import aggregate
from phasemap.analysis.query import LiveRecords
from phasemap.records import SCHEMA
from phasemap.serve.app import Server
from synthetic import synthetic_records

DEPTHS, WDS, SEEDS = (2, 4), (0.0, 1e-2), (0, 1, 2)


def write_runs(root: Path, df: pd.DataFrame, part: int = 1) -> list[Path]:
    paths = []
    for (sweep, run), rows in df.groupby(["sweep_id", "run_id"]):
        folder = root / f"sweep={sweep}" / f"run={run}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"part-{part:09d}.parquet"
        pq.write_table(pa.Table.from_pandas(rows, schema=SCHEMA, preserve_index=False), path)
        paths.append(path)
    return paths


@pytest.fixture
def root(tmp_path):
    write_runs(tmp_path, synthetic_records(depths=DEPTHS, weight_decays=WDS, seeds=SEEDS))
    return tmp_path


def api(root, *calls, **server):
    """Run `calls` (async functions of a client) against a Server on loopback; their results."""
    async def main():
        async with TestClient(TestServer(Server(str(root), **server).app())) as client:
            return [await call(client) for call in calls]

    return asyncio.run(main())


def get(path, status=200):
    async def call(client):
        response = await client.get(path)
        assert response.status == status, await response.text()
        return await response.json()
    return call


def post(query, status=200, **extra):
    async def call(client):
        response = await client.post("/api/sql", json={"query": query, **extra})
        assert response.status == status, await response.text()
        return await response.json() if extra.get("format") != "csv" else await response.text()
    return call


# ----------------------------------------------------------------------------- the incremental reader


def test_live_records_read_only_what_changed_and_equal_load(tmp_path):
    first = synthetic_records(depths=(2,), weight_decays=WDS, seeds=SEEDS)
    write_runs(tmp_path, first)
    live = LiveRecords(str(tmp_path))
    assert len(live.refresh()) == 2  # one file per run
    assert live.refresh() == []  # nothing new: nothing read
    # a run lands, another gets a second part
    more = synthetic_records(depths=(2, 4), weight_decays=WDS, seeds=SEEDS)
    new = write_runs(tmp_path, more[more["depth"] == 4].assign(run_id=lambda d: d["run_id"] + "x",
                                                                config_hash=lambda d: d["config_hash"] + "x"))
    assert sorted(live.refresh()) == sorted(str(p) for p in new)
    want = load(str(tmp_path), filters={"sweep_id": "syn"}, columns=aggregate.FIGURE_COLUMNS)
    key = ["run_id", "member", "step", "layer"]
    got = live.frame("syn")
    pd.testing.assert_frame_equal(got.sort_values(key).reset_index(drop=True), want.sort_values(key).reset_index(drop=True))
    assert live.frame("syn") is got  # unchanged files: the same frame, not rebuilt
    os.remove(new[0])
    assert live.refresh() == [] and len(live.frame("syn")) == len(want) - (more["depth"] == 4).sum() // 2


def test_live_records_one_network_per_config(tmp_path):
    """A config in two runs (an interrupted one retrained elsewhere): the complete run wins, as in load."""
    df = synthetic_records(depths=(2,), weight_decays=(0.0,), seeds=(0,))
    write_runs(tmp_path, df)
    write_runs(tmp_path, df.assign(run_id="other", rga_b=0.123))
    (tmp_path / "sweep=syn" / "run=other" / "_COMPLETE.json").write_text("{}")
    live = LiveRecords(str(tmp_path))
    live.refresh()
    assert set(live.frame("syn")["run_id"]) == {"other"}
    assert set(load(str(tmp_path))["run_id"]) == {"other"}


# ----------------------------------------------------------------------------- the JSON API


def test_phase_grid_api_is_the_reports_grid_with_planted_phases(root):
    (grid,) = api(root, get("/api/phase-grid?sweep=syn&x=weight_decay&y=depth&layer=last&tau=0.9"))
    want = aggregate.phase_grid(load(str(root)), "weight_decay", "depth", tau=0.9)
    assert grid["x"] == "weight_decay" and grid["y"] == "depth" and grid["facet"] is None
    got = {(c["depth"], c["weight_decay"]): (c["phase"], c["share"], c["networks"]) for c in grid["cells"]}
    assert got == {(r.depth, r.weight_decay): (r.phase, r.share, r.n) for r in want.itertuples()}
    # planted: wd 1e-2 aligns all six relations at the last hidden layer (CRH), wd 0 none
    assert {k: v[0] for k, v in got.items()} == {(2, 0.0): "none", (4, 0.0): "none", (2, 0.01): "CRH", (4, 0.01): "CRH"}
    assert all(v[1:] == (1.0, len(SEEDS)) for v in got.values())


def test_figure_cells_are_clickable_svg_elements_and_networks_of_a_cell(root):
    figure, nets, status = api(root, get("/api/figure?sweep=syn&kind=phase-diagram"),
                               get('/api/networks?sweep=syn&cell={"depth": 4, "weight_decay": 0.01}'),
                               get("/api/status?sweep=syn"))
    assert figure["svg"].startswith("<svg") and "Majority phase" in figure["caption"]
    assert len(figure["ids"]) == len(figure["cells"]) == 4
    for element in figure["ids"]:
        assert f'id="{element}"' in figure["svg"]
    assert "CRH" in figure["svg"] and f"{len(SEEDS)} of {len(SEEDS)}" in figure["svg"]  # text stays text
    rows = pd.DataFrame(nets["rows"])
    assert len(rows) == len(SEEDS) and set(rows["phase"]) == {"CRH"} and set(rows["layer"]) == {4}
    assert np.allclose(rows["rga_b"], 0.97) and nets["svg"].startswith("<svg")
    # synthetic runs have no completion markers and no lease: interrupted, with their networks measured
    assert status["measured"] == len(DEPTHS) * len(WDS) * len(SEEDS) and status["records"] > 0
    assert status["counts"]["interrupted"] == status["networks"] == status["measured"]
    assert status["axes"] == ["depth", "weight_decay"] and status["hidden_layers"] == 4


def test_bad_requests_are_400_with_the_field_named(root):
    out = api(root, get("/api/status?sweep=nope", 400), get("/api/figure?sweep=syn&tau=7", 400),
              get("/api/figure?sweep=syn&layer=first", 400), get("/api/figure?sweep=syn&kind=pie", 400),
              get("/api/figure?sweep=syn&x=colour", 400), get("/api/networks?sweep=syn&cell=[1", 400),
              get("/api/nothing", 404), get("/api/phase-grid?sweep=syn&layer=99", 400),
              get("/api/phase-grid?sweep=syn&layer=0", 400), get("/api/figure?sweep=syn&facet=depth", 400),
              get("/api/status?sweep=syn"))
    assert "sweeps there: syn" in out[0]["error"]
    assert out[1]["error"].startswith("tau:") and "7" in out[1]["error"]
    assert out[2]["error"].startswith("layer") and "first" in out[2]["error"]
    assert out[3]["error"].startswith("kind:") and out[4]["error"].startswith("x:")
    assert out[5]["error"].startswith("cell:") and "404" in out[6]["error"]
    assert out[7]["error"].startswith("layer: `a layer of the networks` must hold, but got 99")  # as predict says
    assert "layer is an index >= 1" in out[8]["error"] and out[9]["error"].startswith("facet:")
    assert out[10]["sweep"] == "syn" and out[10]["judged"] == {"layer": "last", "tau": 0.9, "against": "raw"}


def test_a_boundary_searchs_own_layer_tau_and_against_are_the_defaults(root):
    from phasemap.serve.api import options

    frame = load(str(root))
    opts = options({}, frame, {"layer": "2", "tau": 0.25, "against": "raw"})
    assert (opts.layer, opts.tau, opts.against) == (2, 0.25, "raw")
    given = options({"layer": "last", "tau": "0.8"}, frame, {"layer": "2", "tau": 0.25, "against": "raw"})
    assert (given.layer, given.tau) == ("last", 0.8)


def test_a_sweep_whose_runs_have_not_written_yet_is_listed_with_its_missing_members(tmp_path):
    """A driver that has just started: its folder holds only the stored config."""
    from phasemap.sweep import parse_sweep
    from phasemap.sweep.spec import write_stored

    cfg = parse_sweep({"name": "fresh", "storage": {"root": str(tmp_path)}, "base": {"task": {"name": "fc1"}},
                       "axes": {"model.depth": [1, 2], "optimizer.weight_decay": [0.0, 0.1]}})
    write_stored(cfg)
    sweeps, status, figure = api(tmp_path, get("/api/sweeps"), get("/api/status?sweep=fresh"),
                                 get("/api/figure?sweep=fresh"))
    assert sweeps["sweeps"] == ["fresh"] and figure["missing"] == "no records yet"
    assert status["counts"]["missing"] == status["networks"] == 4 and len(status["packs"]) == 2
    assert status["measured"] == status["records"] == 0


# ----------------------------------------------------------------------------- read-only SQL


def test_sql_answers_selects_over_the_records_views(root):
    counts, last, cut, csv = api(
        root, post("SELECT depth, count(*) AS n, sum(1.5) AS s FROM records GROUP BY depth ORDER BY depth"),
        post("SELECT count(*) AS n FROM last_records"), post("SELECT * FROM range(20000)"),
        post("SELECT 1 AS a, 'x' AS b", format="csv"))
    per_depth = synthetic_records(depths=DEPTHS, weight_decays=WDS, seeds=SEEDS).groupby("depth").size()
    assert counts["columns"] == ["depth", "n", "s"]
    assert counts["rows"] == [[d, int(n), 1.5 * n] for d, n in per_depth.items()]
    assert last["rows"] == [[sum((d + 1) * len(WDS) * len(SEEDS) for d in DEPTHS)]]
    assert len(cut["rows"]) == 10_000 and cut["truncated"] is True
    assert csv == "a,b\n1,x\n"


ATTEMPTS = {
    "COPY (SELECT 1) TO '{tmp}/out.csv'": "one SELECT statement",
    "ATTACH '{tmp}/other.db'": "one SELECT statement",
    "INSTALL httpfs": "one SELECT statement",
    "LOAD httpfs": "one SELECT statement",
    "SET enable_external_access = true": "one SELECT statement",
    "CREATE TABLE t AS SELECT 1": "one SELECT statement",
    "SELECT 1; DROP VIEW records": "one SELECT statement",
    "SELECT * FROM read_csv('/etc/passwd')": "file system operations are disabled",
    "SELECT * FROM read_parquet('{tmp}/sweep=syn/*/*.parquet')": "file system operations are disabled",
    "SELECT * FROM glob('/*')": "file system operations are disabled",
    "SELECT count(*) FROM range(1000000000000) a": "time limit",
    "": "non-empty",
}


def test_sql_refuses_everything_but_reading_the_records_and_keeps_serving(root):
    out = api(root, *(post(q.format(tmp=root), 400) for q in ATTEMPTS), post("SELECT 42 AS answer"),
              sql_timeout=1.0)
    for (query, reason), answer in zip(ATTEMPTS.items(), out):
        assert reason in answer["error"], (query, answer)
    assert out[-1]["rows"] == [[42]]
    assert not (root / "out.csv").exists() and not (root / "other.db").exists()


@pytest.mark.integration
def test_serve_process_on_another_host_needs_its_token(root):
    """`phasemap serve --host 0.0.0.0` makes a token and prints it in the URL; requests without it
    get a 401 with a message, with it the API."""
    import urllib.error
    import urllib.request

    proc = subprocess.Popen([sys.executable, "-m", "phasemap.cli", "serve", str(root), "--host", "0.0.0.0",
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "token=" in line, line + proc.stderr.read()
        url = line.split(" at ")[1].split()[0]
        port, token = url.split(":")[2].split("/")[0], url.split("token=")[1]
        base = f"http://127.0.0.1:{port}"
        for headers, path in [({}, "/api/status"), ({"X-Phasemap-Token": "wrong"}, "/api/status"), ({}, "/")]:
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(urllib.request.Request(base + path, headers=headers), timeout=10)
            assert refused.value.code == 401 and "token" in json.loads(refused.value.read())["error"]
        with urllib.request.urlopen(f"{base}/api/status?sweep=syn&token={token}", timeout=10) as ok:
            assert json.loads(ok.read())["sweep"] == "syn"
        request = urllib.request.Request(f"{base}/api/status", headers={"X-Phasemap-Token": token})
        with urllib.request.urlopen(request, timeout=10) as ok:
            assert json.loads(ok.read())["sweep"] == "syn"  # the only sweep: no ?sweep= needed
    finally:
        proc.terminate()
        proc.wait(timeout=10)



def test_serve_refuses_a_missing_root_and_a_bad_port(root, capsys):
    from phasemap.cli import main

    assert main(["serve", str(root / "nope")]) == 2
    assert "root: `a folder of records` must hold" in capsys.readouterr().err
    assert main(["serve", str(root), "--port", "70000"]) == 2
    assert "--port: `0 <= port <= 65535` must hold, but got 70000" in capsys.readouterr().err


def test_time_left_from_the_rate_seen(monkeypatch):
    from phasemap.serve.api import Progress

    clock = iter([0.0, 1.0, 10.0])
    monkeypatch.setattr(time, "monotonic", lambda: next(clock))
    p = Progress()
    assert p.time_left(done=0, remaining=100) is None  # one observation: no rate yet
    assert p.time_left(done=5, remaining=95) is None  # under 2 s of observations
    assert p.time_left(done=50, remaining=50) == pytest.approx(10.0)  # 50 member-steps in 10 s
