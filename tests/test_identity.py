"""Member identity and storage, without Ray: every config field in the records, one network per
config when reading, growing a grid, leases, compaction and injected storage faults."""

import dataclasses
import json
import os
import threading
import time
import typing

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from phasemap import SCHEMA, load, parse_config, sql, train_pack
from phasemap import records
from phasemap.records import leases
from phasemap.cli import main
from phasemap.config import ConfigError, RunConfig
from phasemap.sweep import expand, members, objective, parse_sweep
from phasemap.train import run_id_of

from faults import full_disk

SECTIONS = ("task", "model", "optimizer", "train", "probe")


def small(**over):
    data = {
        "name": "t",
        "task": {"name": "fc1", "input_dim": 6, "teacher_width": 6},
        "model": {"depth": 2, "width": 6},
        "optimizer": {"name": "sgd", "lr": 0.05},
        "train": {"steps": 20, "batch_size": 8, "device": "cpu", "check_every": 5, "checkpoint_every": 10},
        "probe": {"n_samples": 32, "steps": [10]},
    }
    for key, value in over.items():
        section, name = key.split("__")
        data.setdefault(section, {})[name] = value
    return parse_config(data)


def leaf_paths():
    """Every field of the run config's sections, as config paths ([i] for the items of pairs)."""
    hints = typing.get_type_hints(RunConfig)
    for section in SECTIONS:
        cls = hints[section]
        for f in dataclasses.fields(cls):
            default = getattr(cls(), f.name)
            if dataclasses.is_dataclass(default):  # a sub-spec (train.stop): each of its fields
                yield from (f"{section}.{f.name}.{g.name}" for g in dataclasses.fields(default))
            elif f.name == "betas":
                yield from (f"{section}.betas[{i}]" for i in range(len(default)))
            else:
                yield f"{section}.{f.name}"


def test_every_config_field_is_a_column_with_the_members_value(tmp_path):
    paths = {p: c for p, c, _ in records.CONFIG_COLUMNS}
    assert set(leaf_paths()) == set(paths)  # a field added to the config must get a column
    assert set(paths.values()) <= set(SCHEMA.names) and len(set(paths.values())) == len(paths)
    cfg = small(task__phi=0.25, task__teacher_seed=7, optimizer__weight_decay=[0.0, 1e-3], train__seed=[3])
    recs = train_pack(cfg, root=str(tmp_path)).records
    for k, member in enumerate(cfg.members):
        single = cfg.member_config(member)
        row = recs[recs["member"] == k].iloc[0]
        for path, column in paths.items():
            assert row[column] == records.config_value(single, path), column
    row = recs.iloc[0]
    assert (row["phi"], row["teacher_seed"], row["probe_steps"], row["beta2"]) == (0.25, 7, "10", 0.999)
    assert sorted(recs["weight_decay"].unique()) == [0.0, 1e-3]


def _write_v1(root, recs, run="old"):
    """Records as schema version 1 wrote them: without the columns v1 lacked."""
    folder = root / "sweep=s" / f"run={run}"
    folder.mkdir(parents=True)
    table = pa.Table.from_pandas(recs.drop(columns=list(records.V1_DEFAULTS)), preserve_index=False)
    pq.write_table(table.replace_schema_metadata({"phasemap_schema_version": "1"}), folder / "part-000000001.parquet")


def test_version_1_files_are_read_with_their_values_filled_in(tmp_path):
    recs = train_pack(small(), root=str(tmp_path / "new")).records
    _write_v1(tmp_path / "v1", recs.assign(schema_version=1))
    old = load(str(tmp_path / "v1"))
    assert len(old) == len(recs) and old["phi"].tolist() == [0.5] * len(recs)
    assert old["probe_steps"].unique().tolist() == [""] and old["bias"].all() and old["n_samples"].eq(1000).all()
    assert load(str(tmp_path / "v1"), filters={"phi": 0.5}).shape == old.shape  # filters see the filled value
    got = sql(str(tmp_path / "v1"), "SELECT min(phi) AS p, count(*) AS n, any_value(device) AS d FROM records")
    assert got.iloc[0].tolist() == [0.5, len(recs), "auto"]


def test_version_2_power_laws_are_read_as_the_sorted_fits_they_were(tmp_path):
    recs = train_pack(small(), root=str(tmp_path / "new")).records
    old = recs.assign(schema_version=2)
    for paired, sorted_ in records.SORTED_BEFORE_V3.items():  # v2 wrote the sorted fit under the plain name
        old[paired] = recs[sorted_]
    folder = tmp_path / "v2" / "sweep=s" / "run=old"
    folder.mkdir(parents=True)
    table = pa.Table.from_pandas(old.drop(columns=list(records.SORTED_BEFORE_V3.values()) + ["n_layers"]),
                                 preserve_index=False)
    pq.write_table(table.replace_schema_metadata({"phasemap_schema_version": "2"}), folder / "part-000000001.parquet")
    got = load(str(tmp_path / "v2"))
    assert got["pah_hg_b"].isna().all() and got["pah_hg_b_n"].isna().all()  # no paired fit in v2
    assert (got["n_layers"] == got["depth"] + 1).all()  # every v2 network was an MLP
    assert got["pah_hg_b_sorted"].tolist() == pytest.approx(recs["pah_hg_b_sorted"].tolist(), nan_ok=True)
    only = load(str(tmp_path / "v2"), columns=["pah_gz_a_sorted"])  # one column asked for: still moved
    assert only["pah_gz_a_sorted"].tolist() == pytest.approx(recs["pah_gz_a_sorted"].tolist(), nan_ok=True)
    q = sql(str(tmp_path / "v2"), "SELECT count(pah_hg_b) AS paired, sum(pah_hg_b_sorted) AS s FROM records")
    assert q["paired"].iloc[0] == 0
    assert q["s"].iloc[0] == pytest.approx(recs["pah_hg_b_sorted"].sum())
    new = load(str(tmp_path / "new"))  # version 3 rows are read as written
    assert new["pah_hg_b"].tolist() == pytest.approx(recs["pah_hg_b"].tolist(), nan_ok=True)


def _copy_run(src_root, dst_root, sweep, run_from, run_to):
    src = src_root / f"sweep={sweep}" / f"run={run_from}"
    dst = dst_root / f"sweep={sweep}" / f"run={run_to}"
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name.endswith(".parquet") or f.name == "_COMPLETE.json":
            table = pq.read_table(f) if f.suffix == ".parquet" else None
            if table is not None and "run_id" in table.column_names:
                table = table.set_column(table.column_names.index("run_id"), "run_id",
                                         pa.array([run_to] * len(table), pa.string()))
                pq.write_table(table, dst / f.name)
            else:
                (dst / f.name).write_bytes(f.read_bytes())


def test_a_root_with_duplicates_is_read_one_network_per_config(tmp_path):
    """An older version packed the same config into several runs: readers keep one of them.

    Rule: a complete run beats an unfinished one; among complete runs the latest marker wins."""
    cfg = small(optimizer__weight_decay=[0.0, 1e-3])
    first = train_pack(cfg, root=str(tmp_path / "a"))
    sweep = cfg.storage.sweep_id
    root = tmp_path / "dup"
    _copy_run(tmp_path / "a", root, sweep, first.run_id, "old-pack")
    _copy_run(tmp_path / "a", root, sweep, first.run_id, "new-pack")
    _copy_run(tmp_path / "a", root, sweep, first.run_id, "unfinished")
    (root / f"sweep={sweep}" / "run=unfinished" / "_COMPLETE.json").unlink()
    old, new = (root / f"sweep={sweep}" / f"run={r}" / "_COMPLETE.json" for r in ("old-pack", "new-pack"))
    marker = json.loads(old.read_text())
    del marker["members"]  # as versions before member identity wrote it: the pack config only
    old.write_text(json.dumps(marker))
    os.utime(old, (time.time() - 100, time.time() - 100))
    raw = sql(str(root), "SELECT count(*) AS n FROM all_records").iloc[0, 0]
    assert raw == 3 * len(first.records)
    recs = load(str(root))
    assert len(recs) == len(first.records) and set(recs["run_id"]) == {"new-pack"}
    assert not recs.duplicated(["config_hash", "step", "layer"]).any()
    got = sql(str(root), "SELECT run_id, count(DISTINCT config_hash) AS c, count(*) AS n FROM records GROUP BY ALL")
    assert got.values.tolist() == [["new-pack", 2, len(first.records)]]
    os.utime(new, (time.time() - 200, time.time() - 200))  # now the other complete run is the latest
    assert set(load(str(root))["run_id"]) == {"old-pack"}
    assert set(sql(str(root), "SELECT DISTINCT run_id FROM records")["run_id"]) == {"old-pack"}
    assert records.complete_members(str(root), sweep) == {h: "old-pack" for h in recs["config_hash"].unique()}


def sweep_cfg(root, wds=(0.0, 1e-3), widths=(6,), **over):
    data = {"name": "g", "storage": {"root": str(root)},
            "base": {"task": {"name": "fc1", "input_dim": 6, "teacher_width": 6}, "model": {"depth": 2},
                     "train": {"steps": 20, "batch_size": 8, "device": "cpu"}, "probe": {"n_samples": 32, "count": 2}},
            "axes": {"model.width": list(widths), "optimizer.weight_decay": list(wds)}}
    data.update(over)
    return parse_sweep(data)


def test_a_grown_grid_packs_only_its_new_members(tmp_path):
    before = sweep_cfg(tmp_path, wds=(0.0, 1e-3), widths=(6, 8))
    after = sweep_cfg(tmp_path, wds=(0.0, 1e-3, 1e-2), widths=(6, 8))
    done = {m.config_hash() for m in members(before)}
    assert len(members(after)) == 6 and len(done) == 4
    packs = expand(after, done=done)
    new = [p.member_config(m) for p in packs for m in p.members]
    assert sorted((c.model.width, c.optimizer.weight_decay[0]) for c in new) == [(6, 1e-2), (8, 1e-2)]
    assert {c.config_hash() for c in new}.isdisjoint(done)
    # the same missing members always form the same packs (a resumed pack keeps its id)
    assert [run_id_of(p) for p in expand(after, done=done)] == [run_id_of(p) for p in packs]


def test_an_optuna_objective_that_is_not_a_column_is_a_config_error(tmp_path, capsys):
    data = {"name": "o", "axes": {"optimizer.lr": {"low": 1e-3, "high": 1e-1}},
            "search": {"mode": "optuna", "objective": "rgb_b", "trials": 2}}
    with pytest.raises(ConfigError, match=r"search.objective: .* but got 'rgb_b' \(did you mean `rga_b`.*valid: train_loss, probe_loss, "):
        parse_sweep(data)
    f = tmp_path / "o.yaml"
    f.write_text(json.dumps(data))
    assert main(["sweep", str(f), "--out", str(tmp_path)]) == 2  # before Ray starts: nothing was written
    assert "rgb_b" in capsys.readouterr().err and not list(tmp_path.glob("*/"))


def test_a_diverged_member_scores_the_worst_value():
    rows = []
    for member, status, value in [(0, "ok", 0.8), (1, "ok", 0.6), (2, "diverged", float("nan"))]:
        for layer in (1, 2, 3):  # depth 2: layer 3 is the output and does not count
            rows.append({"member": member, "step": 10, "layer": layer, "depth": 2, "status": status,
                         "rga_b": value if layer < 3 else 99.0, "sweep_id": "s", "run_id": "r"})
    table = pd.DataFrame(rows)
    ok = table[table["member"] < 2]
    assert objective(ok, "rga_b", "max") == pytest.approx(0.7)
    assert objective(table, "rga_b", "max") == float("-inf")
    assert objective(table, "rga_b", "min") == float("inf")


def test_the_objective_averages_every_hidden_layer_of_any_family():
    """A depth-2 transformer measures 13 layers (12 hidden, then the output) and per-head rows:
    the objective is the mean over layers 1..n_layers-1 of the layer rows, whatever `depth` is."""
    rows = []
    for member, offset in [(0, 0.0), (1, 0.1)]:
        for layer in range(1, 14):
            rows.append({"member": member, "step": 10, "layer": layer, "n_layers": 13, "head": None, "depth": 2,
                         "status": "ok", "rga_b": 99.0 if layer == 13 else layer / 100 + offset,
                         "sweep_id": "s", "run_id": "r"})
            rows.append({"member": member, "step": 10, "layer": layer, "n_layers": 13, "head": 0, "depth": 2,
                         "status": "ok", "rga_b": -5.0, "sweep_id": "s", "run_id": "r"})  # per-head: not a layer
        rows.append({"member": member, "step": 5, "layer": 1, "n_layers": 13, "head": None, "depth": 2,
                     "status": "ok", "rga_b": 7.0, "sweep_id": "s", "run_id": "r"})  # an earlier probe
    table = pd.DataFrame(rows)
    # member 0: mean of 0.01..0.12 = 0.065; member 1: 0.165
    assert objective(table, "rga_b", "max") == pytest.approx(0.115)
    # an MLP without `n_layers` (schema before version 3): layers 1..depth
    mlp = table[(table["head"].isna()) & (table["layer"] <= 3) & (table["step"] == 10)].drop(columns=["n_layers", "head"])
    assert objective(mlp, "rga_b", "min") == pytest.approx((0.015 + 0.115) / 2)


# ----------------------------------------------------------------------------- leases


@pytest.mark.parametrize("store", ["local", "object store"])
def test_of_trainers_racing_for_a_run_exactly_one_gets_it(tmp_path, store):
    """Local: exclusive create. Object store (a filesystem pyarrow does not know as local):
    write, settle, read back: the documented best effort."""
    root = str(tmp_path)
    if store == "object store":
        records.mount("store://", pafs.SubTreeFileSystem("/", pafs.LocalFileSystem()))
        root = f"store://{tmp_path}"
    try:
        won, barrier = [], threading.Barrier(6)

        def race():
            barrier.wait()
            lease, _ = leases.try_acquire(root, "s", "r", ttl=30, settle=0.5)
            if lease is not None:
                won.append(lease)

        threads = [threading.Thread(target=race) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1
        holder = leases.current(root, "s", "r")
        assert holder.token == won[0].token and holder.live()
        won[0].release()
        assert not leases.current(root, "s", "r").live()
    finally:
        records.mount("store://", None)


def test_an_expired_lease_is_taken_over_and_its_holder_stops(tmp_path):
    root = str(tmp_path)
    first, _ = leases.try_acquire(root, "s", "r", ttl=0.4)
    first._stop.set()  # the holder hangs: no more heartbeats
    first._thread.join()
    second, holder = leases.try_acquire(root, "s", "r", ttl=30)
    assert second is None and holder.generation == 1  # still live
    time.sleep(0.5)
    second, _ = leases.try_acquire(root, "s", "r", ttl=30)
    assert second is not None and second.generation == 2
    first.lost = False
    first._stop.clear()
    first._thread = threading.Thread(target=first._beat, daemon=True)
    first._thread.start()  # the zombie wakes up, sees generation 2 and gives up
    first._thread.join(timeout=5)
    assert first.lost
    first.release()
    assert leases.current(root, "s", "r").token == second.token  # the zombie did not touch the new lease
    second.release()


def test_a_lease_of_a_dead_process_on_this_host_is_free_at_once(tmp_path):
    import subprocess
    import sys

    root = str(tmp_path)
    code = f"from phasemap.records import leases; l, _ = leases.try_acquire({root!r}, 's', 'r', ttl=600); print(l.generation)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "1"
    holder = leases.current(root, "s", "r")
    assert not holder.released and holder.expires > time.time() + 500 and not holder.live()
    lease, _ = leases.try_acquire(root, "s", "r")
    assert lease.generation == 2
    lease.release()


def test_a_second_trainer_waits_and_reuses_instead_of_training_again(tmp_path):
    cfg = small()
    root = str(tmp_path)
    lease, _ = leases.try_acquire(root, cfg.storage.sweep_id, run_id_of(cfg))
    said = []
    results = {}
    t = threading.Thread(target=lambda: results.setdefault("b", train_pack(cfg, root=root, waiting=said.append)))
    os.environ["PHASEMAP_LEASE_SECONDS"] = "2"
    try:
        t.start()
        time.sleep(1.0)
        assert "b" not in results and said and "being trained by another trainer" in said[0]
        lease.release()  # the holder gave up without finishing: the waiter trains it
        t.join(timeout=60)
    finally:
        del os.environ["PHASEMAP_LEASE_SECONDS"]
    assert not results["b"].reused and len(said) == 1
    again = train_pack(cfg, root=root)
    assert again.reused and len(load(root)) == len(results["b"].records)


# ----------------------------------------------------------------------------- files


def test_a_reader_sees_the_parts_or_the_compacted_file_never_both(tmp_path):
    cfg = small(train__steps=40, probe__steps=[10, 20, 30])
    result = train_pack(cfg, root=str(tmp_path))
    folder = next(tmp_path.rglob("records.parquet")).parent
    assert sorted(p.name for p in folder.glob("*.parquet")) == ["_spectra.parquet", "records.parquet"]
    # a crash between the compacted file's rename and the parts' removal: both on disk
    table = pq.read_table(folder / "records.parquet")
    for step in (0, 10):
        pq.write_table(table.filter(pa.compute.equal(table["step"], step)), folder / f"part-{step:09d}.parquet")
    assert len(load(str(tmp_path))) == len(result.records)
    assert sql(str(tmp_path), "SELECT count(*) FROM records").iloc[0, 0] == len(result.records)
    records.compact(str(tmp_path), cfg.storage.sweep_id, result.run_id)  # the next compaction clears them
    assert not list(folder.glob("part-*"))


def test_a_full_disk_fails_naming_the_error_leaves_no_temp_file_and_a_rerun_completes(tmp_path):
    fs, disk = full_disk(budget=60_000)
    records.mount("full://", fs)
    cfg = small(optimizer__weight_decay=[0.0, 1e-3], train__steps=40, probe__steps=[5, 10, 20, 30],
                train__checkpoint_every=10)
    try:
        with pytest.raises(OSError, match="No space left on device"):
            train_pack(cfg, root=f"full://{tmp_path / 'a'}")
    finally:
        records.mount("full://", None)
    assert disk.written == disk.budget  # it did fill up part-way
    assert list(tmp_path.rglob("part-*")) and not list(tmp_path.rglob("_tmp-*"))
    assert not list(tmp_path.rglob("_COMPLETE.json"))
    # space freed: the same run (a real local root now) resumes and completes, every row once
    result = train_pack(cfg, root=str(tmp_path / "a"))
    straight = train_pack(cfg, root=str(tmp_path / "b"))
    recs = load(str(tmp_path / "a"))
    assert len(recs) == len(straight.records) == len(result.records)
    assert not recs.duplicated(["config_hash", "step", "layer"]).any()


def test_a_sweep_over_task_phi_gives_a_phase_grid_with_phi_as_an_axis(tmp_path):
    from phasemap.analysis import aggregate
    from phasemap.figures.report import FigureOptions, choose_axes, make_figure

    cfg = parse_sweep({
        "name": "phi", "storage": {"root": str(tmp_path)},
        "base": {"task": {"name": "fc2", "input_dim": 6, "output_dim": 3, "teacher_width": 6}, "model": {"width": 6},
                 "train": {"steps": 10, "batch_size": 8, "device": "cpu"}, "probe": {"n_samples": 32, "count": 2}},
        "axes": {"task.phi": [0.1, 0.9], "model.depth": [1, 2]}})
    for pack in expand(cfg):  # what each trial of the sweep runs
        train_pack(pack, root=str(tmp_path))
    df = load(str(tmp_path))
    assert sorted(df["phi"].unique()) == [0.1, 0.9] and aggregate.varying_axes(df) == ["phi", "depth"]
    grid = aggregate.phase_grid(df, x="phi", y="depth")
    assert sorted(zip(grid["depth"], grid["phi"])) == [(1, 0.1), (1, 0.9), (2, 0.1), (2, 0.9)]
    assert grid["n"].tolist() == [1, 1, 1, 1]
    assert choose_axes(df, FigureOptions()) == ("phi", "depth", None)
    _, _, caption = make_figure(df, "phase-diagram", FigureOptions())
    assert "over depth × phi" in caption and "pooled" not in caption
    from phasemap.figures.report import _pooled

    assert _pooled(df, ("depth",)) == "; pooled over phi"  # what a caption says of an axis it does not show


def test_temp_files_left_by_a_storage_fault_are_removed_by_the_next_sweep_unless_the_run_is_held(tmp_path):
    from phasemap.sweep.driver import _remove_stale_temp

    for run in ("free", "held"):
        folder = tmp_path / "sweep=s" / f"run={run}"
        folder.mkdir(parents=True)
        (folder / "_tmp-0123").write_bytes(b"half an upload")
    lease, _ = leases.try_acquire(str(tmp_path), "s", "held")
    try:
        assert sorted(records.temp_files(str(tmp_path), "s")) == ["free", "held"]
        _remove_stale_temp(str(tmp_path), "s", records.temp_files(str(tmp_path), "s"))
        assert list(records.temp_files(str(tmp_path), "s")) == ["held"]  # its trainer may be writing it now
    finally:
        lease.release()
