"""The README runs: every ```python block and every command of its ```bash blocks (and the
`phasemap ...` lines of jobs/README.md) is executed here on a small root built once, and what
it printed or wrote is checked by value, so an example cannot rot (STYLE.md, item 14).

The root (`<tmp>/results`, the README's `results`: tests run in `<tmp>`) holds the sweeps the
README names, trained with `phasemap.train_pack` on tiny copies of their configs (same names,
sweep ids and axes, seconds of work): `quick` (8 configs, 4 packs), `cnn-quick` (4 CNNs on
digits, 2 packs), a pack with a diverged member (`blowup`) and a `Recorder` run (`mine`);
`<tmp>/results-old`, the README's second root, one more `Recorder` run (sweep `old`).
Commands run in-process through `phasemap.cli.main`, their config paths mapped to the tiny
copies (`TINY`) and `--steps 5000` to `--steps 20`; `phasemap validate` checks the real file.
The sweep commands find their tiny grid complete, so they start no Ray (the "second time" of
`make demo`); tests/test_sweep_ray.py and tests/test_matrix.py train sweeps on a real Ray.

Every README command is either in `CHECKS` (run and checked) or in `SKIP` (with the reason);
one in neither, or an entry the README no longer has, fails `test_every_command_is_handled`.
"""

from __future__ import annotations

import ast
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds
import pytest
import yaml

import phasemap
from phasemap.cli import main

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
JOBS_README = REPO / "jobs" / "README.md"
NETWORK = ["sweep_id", "run_id", "member"]

# ----------------------------------------------------------------------------- the README's examples


def fenced(path: Path, lang: str) -> list[tuple[int, str]]:
    """(first line number, text) of every ```lang block of a Markdown file."""
    found, block, start = [], None, 0
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if block is None and line.strip() == f"```{lang}":
            block, start = [], i + 1
        elif block is not None and line.strip() == "```":
            found.append((start, "\n".join(block) + "\n"))
            block = None
        elif block is not None:
            block.append(line)
    return found


def readme_commands() -> dict[str, tuple[list[str], list[str]]]:
    """Each command of README.md's bash blocks (`a && b` is two) and each `phasemap` command of
    jobs/README.md's (the others drive cluster tools: kubectl, ray up, sbatch): its words
    joined by spaces (comments dropped, quotes resolved) -> (its words, where it appears)."""
    found: dict[str, tuple[list[str], list[str]]] = {}
    for path, only_phasemap in ((README, False), (JOBS_README, True)):
        for start, text in fenced(path, "bash"):
            for i, line in enumerate(text.replace("\\\n", " ").splitlines()):
                words = shlex.split(line, comments=True)
                while words:
                    cut = words.index("&&") if "&&" in words else len(words)
                    command, words = words[:cut], words[cut + 1 :]
                    if command and (not only_phasemap or command[0] == "phasemap"):
                        found.setdefault(" ".join(command), (command, []))[1].append(
                            f"{path.relative_to(REPO)}:{start + i}")
    return found


PY_BLOCKS = fenced(README, "python")
COMMANDS = readme_commands()

# ----------------------------------------------------------------------------- the root


def _tiny_sweep(data: dict, axes: dict) -> dict:
    data["base"]["train"] = {"steps": 30, "batch_size": 16, "check_every": 10, "checkpoint_every": 30}
    data["base"]["probe"] = {"n_samples": 64, "count": 1}
    data["axes"] = {**axes, "optimizer": data["axes"]["optimizer"]}  # its sgd and adam, as given
    return data


def _tiny_run(data: dict) -> dict:
    data["task"].update(input_dim=8, **({"teacher_width": 8} if "teacher_width" in data["task"] else {}))
    data["model"]["width"] = 8
    data["train"].update(batch_size=16, check_every=10, checkpoint_every=20)
    data["train"]["steps"] = min(data["train"]["steps"], 20)
    data["probe"] = {"n_samples": 64, "count": 1}
    return data


# README config -> its tiny copy (same name, sweep id and axis names; a few steps, tiny networks)
TINY = {
    "configs/quick.yaml": lambda d: _tiny_sweep(
        {**d, "base": {**d["base"], "task": {**d["base"]["task"], "input_dim": 8}}},
        {"model.depth": [2, 4], "model.width": [8], "train.batch_size": [16], "optimizer.weight_decay": [0.0, 1.0e-2]}),
    "configs/cnn-quick.yaml": lambda d: _tiny_sweep(
        d, {"model.depth": [2], "model.width": [4], "train.batch_size": [16], "optimizer.weight_decay": [0.0, 1.0e-2]}),
    "configs/default.yaml": _tiny_run,
    "configs/fc1.yaml": _tiny_run,
}
STEPS = {"5000": "20"}  # --steps in the README -> here


@dataclass
class Root:
    work: Path  # the folder the README's commands run in
    root: Path  # <work>/results
    tiny: dict[str, Path]  # README config path -> tiny copy
    quick_runs: list[str]  # run ids of the quick sweep's packs

    def argv(self, words: list[str]) -> list[str]:
        """A README command's arguments as run here: `validate` checks the real file; every
        other command gets the tiny configs, tiny --steps and a real run id for <run_id>."""
        args = words[1:]
        if args[0] == "validate":
            return [str(REPO / a) if a in self.tiny else a for a in args]
        out = []
        for prev, a in zip([None, *args], args):
            if a in self.tiny:
                a = str(self.tiny[a])
            elif prev == "--steps":
                a = STEPS[a]
            elif a == "<run_id>":
                a = self.quick_runs[0]
            out.append(a)
        return out


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny networks: one torch thread (two threads on a busy 2-core machine made the root 4x slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Root:
    import torch

    from phasemap.config import parse_config
    from phasemap.sweep.spec import expand, parse_sweep

    work = tmp_path_factory.mktemp("readme")
    root = work / "results"
    tiny = {}
    for name, shrink in TINY.items():
        tiny[name] = work / "tiny" / name
        tiny[name].parent.mkdir(parents=True, exist_ok=True)
        tiny[name].write_text(yaml.safe_dump(shrink(yaml.safe_load((REPO / name).read_text())), sort_keys=False))
    quick_runs = []
    for name in ("configs/quick.yaml", "configs/cnn-quick.yaml"):  # what `phasemap sweep` would write
        for pack in expand(parse_sweep(yaml.safe_load(tiny[name].read_text()), str(tiny[name]))):
            result = phasemap.train_pack(pack, root=str(root))
            assert result.status == ["ok"] * len(pack.members), (name, result.status)
            if name == "configs/quick.yaml":
                quick_runs.append(result.run_id)
    blowup = parse_config({  # one member's SGD at lr 1e4 diverges: the diverged-records query finds it
        "name": "blowup", "task": {"name": "fc1", "input_dim": 8}, "model": {"depth": 2, "width": 8},
        "optimizer": {"name": "sgd", "lr": [0.01, 1.0e4]}, "train": {"steps": 30, "batch_size": 16, "check_every": 10},
        "probe": {"n_samples": 64, "count": 1}, "storage": {"root": str(root), "sweep_id": "blowup"}})
    assert phasemap.train_pack(blowup).status == ["ok", "diverged"]
    torch.manual_seed(1)  # a Recorder run (no `steps` column): the README's query must find its last step too
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    x, y = torch.randn(64, 6), torch.randn(64, 1)
    with phasemap.Recorder(str(root), sweep_id="mine", run_id="fixture", config={"weight_decay": 0.0}) as rec:
        for step in (0, 7):
            rec.probe(net, x, y, lambda out, t: ((out - t) ** 2).sum(1), step)
    with phasemap.Recorder(str(work / "results-old"), sweep_id="old", run_id="fixture",  # a second root
                           config={"weight_decay": 1e-3}) as rec:
        rec.probe(net, x, y, lambda out, t: ((out - t) ** 2).sum(1), 5)
    return Root(work, root, tiny, sorted(quick_runs))


def stored(root: Path, **where) -> pd.DataFrame:
    """Every stored row, read with pyarrow alone (not phasemap's readers)."""
    table = ds.dataset(str(root), format="parquet", partitioning="hive", exclude_invalid_files=True).to_table()
    df = table.to_pandas()
    for column, value in where.items():
        df = df[df[column] == value]
    return df


def last_hidden(df: pd.DataFrame) -> pd.DataFrame:
    """Each network's last hidden layer at its last step, finished networks only: by hand."""
    df = df[df["head"].isna()]
    last = df[df["step"] == df.groupby(NETWORK)["step"].transform("max")]
    return last[(last["layer"] == last["n_layers"] - 1) & (last["status"] != "diverged")]


# ----------------------------------------------------------------------------- the commands

SKIP = {
    ". .venv/bin/activate": "shell set-up: the tests already run in the venv",
    "make demo": "installs, then trains the 48-config quick sweep on a real Ray (minutes); its two phasemap "
                 "commands (sweep, report) run here on the tiny root",
    "make test": "runs the whole test suite, this file included",
    "phasemap sweep configs/cluster.yaml --address auto": "needs a running Ray cluster (and its S3 storage)",
    "phasemap serve results": "serves until Ctrl-C: tests/test_serve.py and tests/test_browser.py start it as a "
                              "process and use its API and page",
}


def _ok(rc, out, err, ctx):
    assert rc == 0, err


def check_validate(rc, out, err, ctx):
    _ok(rc, out, err, ctx)  # the README's own numbers for the real quick.yaml
    assert out.strip() == f"{REPO / 'configs/quick.yaml'}: ok (grid sweep 'quick': 48 configs in 16 packs)"


def sweep_found_complete(n_configs):
    def check(rc, out, err, ctx):
        _ok(rc, out, err, ctx)  # every config already complete: nothing trains, no Ray starts
        assert f"0 trial(s) run (0 configs), {n_configs} configs already complete, 0 failed" in out
    return check


def check_status(rc, out, err, ctx):
    _ok(rc, out, err, ctx)
    assert "sweep 'quick' under results: 4 complete, 0 running, 0 interrupted, 0 failed, 0 missing of 4 packs" in out
    assert "members (networks): 8 complete, 0 running, 0 interrupted, 0 failed, 0 missing of 8" in out
    lines = [line.split() for line in out.splitlines() if line.startswith("complete ")]
    assert sorted(line[-1] for line in lines) == ctx.quick_runs
    assert all(line[1] == "30/30" and line[2] == "2" for line in lines)  # last step / steps, members


def check_last_step_query(rc, out, err, ctx):
    _ok(rc, out, err, ctx)
    header, *rows = [line.split() for line in out.strip().splitlines()]
    assert header == ["sweep_id", "depth", "weight_decay", "avg(rga_b)"]
    got = {(s, int(d), float(w)): float(v) for s, d, w, v in rows}
    expected = last_hidden(stored(ctx.root)).groupby(["sweep_id", "depth", "weight_decay"])["rga_b"].mean()
    assert got == pytest.approx({(s, int(d), float(w)): v for (s, d, w), v in expected.items()}, abs=1e-5)
    keys = {k[:2] for k in got}  # sweep and Recorder runs alike (a Recorder run has no `steps`)
    assert {("quick", 2), ("quick", 4), ("cnn-quick", 2), ("blowup", 2), ("mine", 1)} <= keys
    assert len([k for k in got if k[0] == "quick"]) == 4


def check_predict(rc, out, err, ctx):
    _ok(rc, out, err, ctx)  # a grid sweep: every cell measured, each its networks' majority label
    cells = pd.read_csv(ctx.work / "cells.csv", dtype={"phase": str})
    nets = last_hidden(stored(ctx.root, sweep_id="quick"))
    assert f"sweep quick: {len(cells)} cells, {len(cells)} measured, 0 inferred" in out
    assert list(cells.columns[-3:]) == ["phase", "measured", "confidence"]
    assert cells["measured"].sum() == len(nets) == 8 and cells["phase"].notna().all()


def check_all_sweeps(rc, out, err, ctx):
    figure("sweeps.png", "Majority phase", PNG)(rc, out, err, ctx)
    assert out.rstrip().endswith("; a panel per sweep."), out  # the root's sweeps side by side, not pooled


def check_two_roots(rc, out, err, ctx):
    _ok(rc, out, err, ctx)  # the union of both roots' records: every sweep of each, counted as by hand
    header, *rows = [line.split() for line in out.strip().splitlines()]
    assert header == ["sweep_id", "n"]
    expected = {}
    for folder in (ctx.root, ctx.work / "results-old"):
        rows_here = stored(folder)
        rows_here = rows_here[rows_here["head"].isna()]
        last = rows_here[rows_here["step"] == rows_here.groupby(NETWORK)["step"].transform("max")]
        expected.update(last.groupby("sweep_id").size().to_dict())
    assert {s: int(n) for s, n in rows} == expected and "old" in expected and "quick" in expected


def check_diverged_query(rc, out, err, ctx):
    _ok(rc, out, err, ctx)
    table = pd.read_csv(ctx.work / "diverged.csv")
    expected = stored(ctx.root, status="diverged")
    assert out.strip() == f"{len(expected)} rows -> diverged.csv" and len(expected) > 0
    assert set(table["sweep_id"]) == {"blowup"} and (table["status"] == "diverged").all()
    assert sorted(table["step"]) == sorted(expected["step"])


def check_run(sweep_id, weight_decays, steps):
    def check(rc, out, err, ctx):
        _ok(rc, out, err, ctx)
        df = stored(ctx.root, sweep_id=sweep_id)
        assert f"{len(weight_decays)} member(s), 0 diverged" in out
        assert f"records: results/sweep={sweep_id}/run=" in out
        assert sorted(df.groupby("member")["weight_decay"].first()) == weight_decays
        assert set(df["step"]) == {0, steps} and set(df["steps"]) == {steps}
        assert (ctx.root / f"sweep={sweep_id}" / f"run={df['run_id'].iloc[0]}" / "_COMPLETE.json").exists()
    return check


def figure(out_name, caption_start, magic):
    def check(rc, out, err, ctx):
        _ok(rc, out, err, ctx)
        assert out.startswith(f"{out_name}: {caption_start}"), out
        assert (ctx.work / out_name).read_bytes().lstrip()[: len(magic)] == magic
    return check


def report(folder, kinds, sweep=None):
    def check(rc, out, err, ctx):
        _ok(rc, out, err, ctx)
        assert out.strip() == f"report: {folder}/index.html"
        index = (ctx.work / folder / "index.html").read_text()
        rows = stored(ctx.root, **({"sweep_id": sweep} if sweep else {}))
        assert f"<h1>phasemap report: {', '.join(sorted(set(rows['sweep_id'])))}</h1>" in index
        assert f"<p>{len(rows):,} records, {rows.groupby(NETWORK).ngroups} networks," in index
        for kind in kinds:
            assert f'src="{kind}.png"' in index, kind
            for ext, magic in ((".png", PNG), (".pdf", PDF)):
                assert (ctx.work / folder / f"{kind}{ext}").read_bytes()[:4] == magic
    return check


PNG, PDF, SVG = b"\x89PNG", b"%PDF", b"<?xml"
LAST_STEP_QUERY = (
    "phasemap query results SELECT sweep_id, depth, weight_decay, avg(rga_b) FROM last_records "
    "WHERE layer = n_layers - 1 AND status <> 'diverged' GROUP BY ALL ORDER BY ALL")
FIGURES = ["phase-diagram", "critical-depth", "layers", "evolution"]
CHECKS = {
    "phasemap validate configs/quick.yaml": check_validate,
    "phasemap sweep configs/quick.yaml": sweep_found_complete(8),
    "phasemap status configs/quick.yaml": check_status,
    "phasemap status results --sweep quick": check_status,
    "phasemap sweep configs/quick.yaml --resume": sweep_found_complete(8),
    "phasemap sweep configs/cnn-quick.yaml": sweep_found_complete(4),
    "phasemap report results --sweep cnn-quick --out report-cnn": report("report-cnn", FIGURES + ["learning-phase"],
                                                                           sweep="cnn-quick"),
    "phasemap run configs/default.yaml --out results": check_run("default", [0.0, 1e-4, 1e-3, 1e-2], 20),
    "phasemap run configs/fc1.yaml --steps 5000 --set optimizer.weight_decay=[0,1e-3]": check_run("paper", [0.0, 1e-3], 20),
    LAST_STEP_QUERY: check_last_step_query,
    "phasemap predict results --sweep quick --out cells.csv": check_predict,
    "phasemap query results SELECT * FROM records WHERE status = 'diverged' --out diverged.csv": check_diverged_query,
    "phasemap plot results phase-diagram --layer last --tau 0.9 --out phases.pdf": figure("phases.pdf", "Majority phase", PDF),
    "phasemap plot results critical-depth --relation rga_b --facet optimizer --out lstar.png":
        figure("lstar.png", "Critical depth", PNG),
    "phasemap plot results layers --where optimizer = 'sgd' --out layers.svg": figure("layers.svg", "Alignment by layer", SVG),
    "phasemap plot results evolution --relation rga_b --out evolution.png": figure("evolution.png", "rga_b at layer", PNG),
    "phasemap plot results spectra --run <run_id> --member 0 --out spectra.png": figure("spectra.png", "Eigenvalues", PNG),
    "phasemap report results --sweep quick --out report": report("report", FIGURES + ["spectra"], sweep="quick"),
    "phasemap plot results phase-diagram --all --out sweeps.png": check_all_sweeps,
    "phasemap query results results-old SELECT sweep_id, count(*) AS n FROM last_records GROUP BY ALL ORDER BY ALL":
        check_two_roots,
}


def test_the_boundary_search_block_is_a_valid_sweep():
    from phasemap.sweep import boundary, parse_sweep

    (block,) = [code for _, code in fenced(README, "yaml") if "mode: boundary" in code]
    data = yaml.safe_load(block)
    cfg = parse_sweep({"name": "b", "base": {"task": {"name": "fc1"}}, **data})
    cells = boundary.grid_cells(cfg)
    assert len(cells) == 6 * 8 and all(len(c.members) == 2 for c in cells)  # the seeds are a cell's networks
    assert cfg.search.budget == 24 and boundary.design_size(cfg, len(cells)) == 4


def test_every_command_is_handled():
    unhandled = {c: where for c, where in COMMANDS.items() if c not in CHECKS and c not in SKIP}
    assert not unhandled, f"README commands neither run here (CHECKS) nor skipped with a reason (SKIP): {unhandled}"
    stale = sorted((set(CHECKS) | set(SKIP)) - set(COMMANDS))
    assert not stale, f"entries for commands the READMEs no longer have: {stale}"
    assert not set(CHECKS) & set(SKIP)


@pytest.mark.parametrize("command", list(COMMANDS), ids=[where[0] for _, where in COMMANDS.values()])
def test_command(command, built, monkeypatch, capsys):
    if command in SKIP:
        pytest.skip(SKIP[command])
    if command not in CHECKS:
        pytest.fail(f"{command!r} ({COMMANDS[command][1]}): add it to CHECKS or SKIP")
    words = COMMANDS[command][0]
    assert words[0] == "phasemap", f"{command!r}: a command CHECKS runs is a phasemap command"
    monkeypatch.chdir(built.work)
    rc = main(built.argv(words))
    out, err = capsys.readouterr()
    CHECKS[command](rc, out, err, built)


# ----------------------------------------------------------------------------- the Python blocks


def run_block(code: str, where: str) -> dict:
    """Execute a block as a user would paste it; the value of a last bare expression (what a
    notebook shows) is kept as `_`."""
    tree = ast.parse(code, where)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    ns: dict = {"__name__": "__readme__"}
    exec(compile(tree, where, "exec"), ns)
    if last is not None:
        ns["_"] = eval(compile(ast.Expression(last.value), where, "eval"), ns)
    return ns


def check_aggregate(ns, out, ctx):
    df, grid, lstar = ns["df"], ns["grid"], ns["lstar"]
    assert set(df["sweep_id"]) == {"quick"} and len(df) == len(stored(ctx.root, sweep_id="quick"))
    assert df.groupby(NETWORK).ngroups == 8 and df["phase"].notna().all()
    hidden = last_hidden(df)  # the grid's means are those of each network's last hidden layer, by hand
    expected = hidden.groupby(["optimizer", "depth", "weight_decay"])["rga_b"].mean()
    got = grid.set_index(["optimizer", "depth", "weight_decay"])["rga_b_mean"]
    assert got.sort_index().to_dict() == pytest.approx(expected.sort_index().to_dict())
    assert (grid["n"] == 1).all() and len(grid) == 8  # 2 optimizers x 2 depths x 2 weight decays
    assert sorted(zip(lstar["depth"], lstar["weight_decay"])) == [(2, 0.0), (2, 0.01), (4, 0.0), (4, 0.01)]
    assert (lstar["n"] == 2).all() and (lstar["n_diverged"] == 0).all()
    assert ns["_"].iloc[0, 0] == len(stored(ctx.root))  # count(*) of the whole root


def check_measure(ns, out, ctx):
    table = ns["table"]
    assert list(table["name"]) == ["0", "2"] and list(table["layer"]) == [1, 2]
    assert table["rga_b"].between(-1, 1).all() and table["nc1"].notna().all()
    assert table["nc4"].isna().tolist() == [True, False] and (table["nan_reason"] == "").all()  # NC4: the output
    assert out.splitlines()[0].split() == ["name", "layer", "rga_b", "gwa_b", "nc1", "nc4", "nan_reason"]


def check_recorder(ns, out, ctx):
    rows = stored(ctx.root, sweep_id="mine", run_id="mlp-wd1e-3")
    assert sorted(set(rows["step"])) == [0, 100, 200] and sorted(set(rows["layer"])) == [1, 2, 3]
    assert set(rows["depth"]) == {2} and set(rows["weight_decay"]) == {1e-3} and rows["steps"].isna().all()
    assert set(rows["covariance"]) == {"centered"} and set(rows["null_samples"]) == {8}
    assert (ctx.root / "sweep=mine" / "run=mlp-wd1e-3" / "_COMPLETE.json").exists()
    read = phasemap.load(str(ctx.root), filters={"sweep_id": "mine"})  # read back: null stays null
    assert read[read["run_id"] == "mlp-wd1e-3"]["steps"].isna().all()
    assert read[read["run_id"] == "mlp-wd1e-3"]["train_loss"].notna().all()


# a text each block holds -> the check of what it did
PY_CHECKS = {
    "aggregate.phase_grid(": check_aggregate,
    "phasemap.measure(net": check_measure,
    "phasemap.Recorder(": check_recorder,
}


def test_every_python_block_is_checked():
    for start, code in PY_BLOCKS:
        assert sum(marker in code for marker in PY_CHECKS) == 1, f"README.md:{start}: one PY_CHECKS entry per block"
    assert all(any(marker in code for _, code in PY_BLOCKS) for marker in PY_CHECKS), "a PY_CHECKS entry matches no block"


@pytest.mark.parametrize("start,code", PY_BLOCKS, ids=[f"README.md:{start}" for start, _ in PY_BLOCKS])
def test_python_block(start, code, built, monkeypatch, capsys):
    monkeypatch.chdir(built.work)
    ns = run_block(code, f"README.md:{start}")
    out, _ = capsys.readouterr()
    (check,) = [c for marker, c in PY_CHECKS.items() if marker in code]
    check(ns, out, built)


# ----------------------------------------------------------------------------- names and paths


def test_named_api_and_files_exist():
    """Every `phasemap.x.y` the READMEs name resolves; every repository file they name exists."""
    text = README.read_text() + JOBS_README.read_text()
    for dotted in sorted(set(re.findall(r"\bphasemap(?:\.[A-Za-z_]\w*)+", text)) - {"phasemap.sif"}):
        import importlib

        parts = dotted.split(".")
        for i in range(len(parts), 0, -1):  # the longest module prefix, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:i]))
                break
            except ModuleNotFoundError:
                continue
        for part in parts[i:]:
            obj = getattr(obj, part)
    files = set(re.findall(r"\b(?:configs|benchmarks|phasemap|jobs|docker|tests)/[\w/.-]+\.(?:py|yaml|sbatch|md)\b", text))
    assert files and not [f for f in sorted(files) if not (REPO / f).exists()]
