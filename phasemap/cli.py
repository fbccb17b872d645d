"""phasemap's command line: `phasemap validate CONFIG`, `phasemap run CONFIG`.

Exit codes: 0 done; 2 bad input (config problems are all listed, one line each, nothing starts);
1 anything else (a failed trial, a storage fault; `run` prints the traceback); 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

# light imports only: every command (--help too) pays for what is imported here; pandas, torch,
# Ray, matplotlib and DuckDB are imported inside the commands that use them
from .config import ConfigError, RunConfig, load_config, parse_config, read_yaml, replace
from .figures import KINDS


EPILOG = """examples:
  phasemap validate configs/fc1.yaml
  phasemap run configs/default.yaml --out results
  phasemap run configs/fc1.yaml --steps 2000 --set optimizer.weight_decay=[0,1e-3]
  phasemap sweep configs/quick.yaml            # the main job: a grid on a local Ray
  phasemap status results                      # every sweep under a root, from storage alone
  phasemap status configs/quick.yaml           # a sweep config: its missing packs too
  phasemap query results "SELECT depth, weight_decay, avg(rga_b) FROM last_records
    WHERE layer = n_layers - 1 GROUP BY ALL"     # each network's last step, last hidden layer
  phasemap plot results phase-diagram --out phases.png
  phasemap report results --sweep quick --out report   # several sweeps: --sweep NAME or --all
  phasemap query results results-old "SELECT sweep_id, count(*) FROM records GROUP BY ALL"   # two roots

A run config describes one pack: members are the product of the lists given for
optimizer.lr, optimizer.momentum, optimizer.weight_decay and train.seed; they train as one
stacked computation. Records go to <out>/sweep=<sweep_id>/run=<run_id>/part-*.parquet.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="phasemap",
        description="Measure CRH alignments and phases of neural networks during training.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"phasemap {_version()}")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level, Ray's own logs included")
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="check a config; list every problem with its field path")
    v.add_argument("config", help="YAML run config")
    v.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field, e.g. train.steps=500")

    r = sub.add_parser("run", help="train a pack with probes and write Parquet records")
    r.add_argument("config", help="YAML run config")
    r.add_argument("--out", help="storage root (folder or s3:// URI); default: the config's storage.root")
    r.add_argument("--steps", type=int, help="override train.steps (the probe schedule follows)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field, e.g. model.depth=6")
    r.add_argument("--tau", type=float, default=0.9, help="threshold for the phase summary printed at the end (default 0.9)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")

    s = sub.add_parser(
        "sweep",
        help="run a sweep config on Ray Tune (local Ray by default, or a cluster)",
        description="Expand a sweep config into packs and run one Ray Tune trial per pack. With no "
        "--address and no RAY_ADDRESS, Ray starts on this machine.",
    )
    s.add_argument("config", help="YAML sweep config (base + axes)")
    s.add_argument("--out", help="storage root (folder or s3:// URI); default: the config's storage.root")
    s.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    s.add_argument("--resume", action="store_true", help="train only the configs not complete in storage (what every "
                   "grid sweep does: a rerun, or a sweep file grown by new values, trains only what is new)")
    s.add_argument("--overwrite", action="store_true", help="discard this grid's earlier records and train every config again")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field, e.g. base.train.steps=500")
    s.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")

    q = sub.add_parser("query", help="run SQL over the records (DuckDB view `records`)",
                       description="Run DuckDB SQL over every record under ROOT, exposed as the view `records` "
                       "(hive columns `sweep` and `run` included).",
                       epilog='views: records (one network per config), last_records (each network\'s whole-layer '
                       'rows at its last step), all_records (every stored row)\nexample:\n  phasemap query results "SELECT '
                       'weight_decay, layer, avg(rga_b) FROM last_records GROUP BY ALL ORDER BY ALL"',
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("root", nargs="+", help="storage root (folder or s3:// URI); several: the union of their records")
    q.add_argument("sql", help="a SQL query over the view `records`")
    q.add_argument("--out", help="write the result to a .csv or .parquet file instead of printing it")
    q.add_argument("--strict", action="store_true", help="fail on unreadable files instead of skipping them")

    pl = sub.add_parser("plot", help="draw one figure from the records", description="Draw one figure kind from "
                        "the records under ROOT. Axes default to the sweep's varying columns (x: weight decay, "
                        "y: depth, a third varying column as panels).")
    pl.add_argument("root", nargs="+", help="storage root; several: the union of their records (sweeps side by side)")
    pl.add_argument("kind", choices=KINDS)
    pl.add_argument("--out", required=True, help="figure file: .png, .svg or .pdf")
    _figure_options(pl)

    rp = sub.add_parser("report", help="every figure of a sweep plus an index.html",
                        description="Every figure kind of one sweep (--sweep NAME) or of every sweep under the "
                        "roots side by side (--all: a panel per sweep), as PNG and PDF, and an index.html.")
    rp.add_argument("root", nargs="+", help="storage root; several: the union of their records")
    rp.add_argument("--out", default="report", help="output folder (default: report)")
    _figure_options(rp)

    pr = sub.add_parser("predict", help="every cell's phase in a sweep: measured, or inferred by a boundary search",
                        description="One row per grid cell: its axes (named as in the records), `phase` (the "
                        "measured majority, more than half of its networks, else 'no majority'; or the boundary "
                        "search's model's label where no network of the cell was trained), `measured` (networks "
                        "measured in it) and `confidence` (measured: the most frequent phase's share; inferred: the "
                        "probability, under the model, that the label is right). "
                        "A grid or optuna sweep gives its measured cells.")
    pr.add_argument("root", help="storage root (folder or s3:// URI)")
    pr.add_argument("--sweep", help="sweep id (default: the only one under the root)")
    pr.add_argument("--layer", help="layer: index, fraction of the hidden layers (0.5), last, output (default: a "
                    "boundary search's own, else last)")
    pr.add_argument("--tau", type=float, help="alignment threshold for phases (default: a boundary search's own, else 0.9)")
    pr.add_argument("--against", choices=("raw", "null"),
                    help="judge alignments raw (the paper) or as their excess over the null (default: a boundary "
                    "search's own, else raw)")
    pr.add_argument("--out", help="write the cells to this .csv file (default: print them)")

    st = sub.add_parser("status", help="what of a sweep is complete, running, failed or missing (from storage)",
                        description="Each pack of a sweep: its state, last step, and configs (the fields that vary). "
                        "Given a storage root, from storage alone (every sweep there, or --sweep; with the packs "
                        "not started yet of a grid sweep whose driver stored its config, _SWEEP.json); given a sweep "
                        "config, the packs not started yet of that config.")
    st.add_argument("config", metavar="ROOT|CONFIG", help="storage root (folder or s3:// URI), or a YAML sweep config")
    st.add_argument("--sweep", help="with a root: only this sweep id")
    st.add_argument("--out", help="with a config: storage root; default: the config's storage.root")

    sv = sub.add_parser("serve", help="watch sweeps in the browser: progress and figures, updated as records land",
                        description="Serve a storage root as a web page: per sweep, its progress (networks complete, "
                        "running, missing, failed; each pack's last step; time left), the phase diagram, "
                        "critical-depth map and learning-phase grid, redrawn as records land; a click on a cell "
                        "shows its networks; a read-only SQL box. A JSON API for scripts: /api/status, "
                        "/api/phase-grid, /api/figure, /api/networks, POST /api/sql. Ctrl-C stops it.")
    sv.add_argument("root", help="storage root (folder or s3:// URI)")
    sv.add_argument("--sweep", help="the sweep the page opens on (default: the only one, else a list)")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only; "
                    "any other needs a token)")
    sv.add_argument("--port", type=int, default=8050, help="port (default 8050; 0: any free port)")
    sv.add_argument("--token", help="a token every request must carry (default: none on 127.0.0.1, else a new one, "
                    "printed in the URL)")
    return p


def _version() -> str:
    try:
        return version("phasemap")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _figure_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sweep", help="only this sweep id")
    p.add_argument("--all", action="store_true", help="every sweep under the roots, a panel per sweep (a report of "
                   "several sweeps needs --sweep or --all)")
    p.add_argument("--where", help="SQL condition on records, e.g. \"optimizer = 'sgd' AND width = 64\"")
    p.add_argument("--x", help="column on the x axis (default: weight_decay if it varies)")
    p.add_argument("--y", help="column on the y axis (default: depth if it varies)")
    p.add_argument("--facet", help="column whose values become panels")
    p.add_argument("--layer", default="last", help="layer: index, fraction of depth (0.5), last, output, each")
    p.add_argument("--tau", type=float, default=0.9, help="alignment threshold for phases (default 0.9)")
    p.add_argument("--against", choices=("raw", "null"), default="raw",
                   help="judge relations on raw alignment (the paper's rule, default) or on the excess over the "
                   "null, (alpha - alpha_null) / (1 - alpha_null), which discounts alignment that the spectra alone give")
    p.add_argument("--relation", default="rga_b", help="alignment column for critical depth and evolution")
    p.add_argument("--run", help="spectra: run id (default: the first run)")
    p.add_argument("--member", type=int, default=0, help="spectra: member of the run (default 0)")
    p.add_argument("--threshold", type=float, default=0.9,
                   help="learning-phase: the train / held-out accuracy that counts as learnt (default 0.9)")
    p.add_argument("--soon", type=float, default=2.0,
                   help="learning-phase: held-out reaching the threshold within SOON x the step train did is "
                   "comprehension, later is grokking (default 2)")
    p.add_argument("--strict", action="store_true", help="fail on unreadable files instead of skipping them")


def _records_for_figures(args):
    from .analysis.query import load, sql

    if args.sweep and args.all:
        raise ValueError(f"`--sweep or --all, not both` must hold, but got --sweep {args.sweep} --all")
    if args.where:
        sweep = f" AND sweep_id = '{args.sweep}'" if args.sweep else ""
        df = sql(args.root, f"SELECT * FROM records WHERE ({args.where}){sweep}", strict=args.strict)
    else:
        df = load(args.root, filters={"sweep_id": args.sweep} if args.sweep else None, strict=args.strict)
    sweeps = sorted(df["sweep_id"].unique())
    if args.command == "report" and len(sweeps) > 1 and not args.all:
        raise ValueError(f"`one sweep, --sweep NAME or --all` must hold, but the records hold {len(sweeps)} sweeps "
                         f"({', '.join(sweeps)}): --sweep NAME reports one, --all reports them side by side "
                         f"(a panel per sweep)")
    return df


def _data_command(args) -> int:
    import duckdb
    import pandas as pd

    from .analysis.aggregate import parse_layer
    from .figures.plots import save
    from .analysis.query import DatasetError, sql
    from .figures.report import FigureOptions, make_figure, write_report

    try:
        if args.command == "query":
            table = sql(args.root[0] if len(args.root) == 1 else args.root, args.sql, strict=args.strict)
            if args.out:
                if args.out.endswith(".parquet"):
                    table.to_parquet(args.out, index=False)
                else:
                    table.to_csv(args.out, index=False)
                print(f"{len(table)} rows -> {args.out}")
            else:
                with pd.option_context("display.max_rows", 200, "display.width", 200):
                    print(table.to_string(index=False, max_rows=200))
            return 0
        df = _records_for_figures(args)
        opts = FigureOptions(x=args.x, y=args.y, facet=args.facet, layer=parse_layer(args.layer), tau=args.tau,
                             against=args.against, relation=args.relation, run_id=args.run, member=args.member,
                             threshold=args.threshold, soon=args.soon)
        root = args.root[0] if len(args.root) == 1 else args.root  # several: spectra looks in each
        if args.command == "plot":
            fig, _, caption = make_figure(df, args.kind, opts, root)
            print(f"{save(fig, args.out)}: {caption}")
        else:
            print(f"report: {write_report(df, root, args.out, opts)}")
        return 0
    except (DatasetError, ValueError, duckdb.Error) as e:  # DuckDB's errors (bad SQL) name the problem
        print(f"error: {e}", file=sys.stderr)
        return 2


def _load(args):
    from .sweep.spec import load_sweep, sweep_key

    data = read_yaml(args.config)  # a missing file or bad YAML is named here, for every command
    marker = sweep_key(data)  # `axes`, `base`, ... or a near miss of one (`axis`)
    sweep_file = marker is not None
    if args.command in ("sweep", "status") and not sweep_file:
        raise ConfigError([f"a run config (no `axes`): `phasemap {args.command}` takes a sweep config; "
                           f"train a run config with `phasemap run {args.config}`"], args.config)
    if args.command == "run" and sweep_file:
        raise ConfigError([f"a sweep config (it has `{marker}`): run it with `phasemap sweep {args.config}`"],
                          args.config)
    if args.command in ("sweep", "status") or sweep_file:
        overrides = list(getattr(args, "set", []))
        if getattr(args, "out", None):
            overrides.append(f"storage.root={args.out}")
        cfg = load_sweep(args.config, overrides)
        if args.command != "status":
            _check_data(cfg)
        return cfg
    overrides = list(args.set)
    if getattr(args, "steps", None) is not None:
        overrides.append(f"train.steps={args.steps}")
    cfg = load_config(args.config, overrides)
    if getattr(args, "out", None):
        cfg = replace(cfg, {"storage.root": args.out})
    _check_data(cfg)
    return cfg


def _check_data(cfg) -> None:
    """Every task's data files read once before anything starts (a bad file: exit 2, named)."""
    from .data import check
    from .sweep import expand

    if isinstance(cfg, RunConfig):
        tasks = [cfg.task]
    elif cfg.search.mode in ("grid", "boundary"):  # a boundary search's candidates are a grid
        tasks = [p.task for p in expand(cfg)]
    else:  # optuna samples its axes as it goes: the base config's task
        tasks = [parse_config(cfg.base).task]
    problems = []
    for spec in dict.fromkeys(tasks):  # each distinct task once
        try:
            check(spec)
        except ConfigError as e:
            problems.extend(e.problems)
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)), "data")


def summary(table, tau: float) -> str:
    """The last probe of every member: alignments and phase per whole layer (per-head rows of
    attention, probe.per_head, left out: they repeat their layer's index), critical depth."""
    from .measure.phases import critical_depth, label_phases, layer_rows

    table = layer_rows(table)
    last = table[table["step"] == table.groupby("member")["step"].transform("max")].copy()
    last["phase"] = label_phases(last, tau)
    cols = ["member", "lr", "weight_decay", "seed", "layer", "status", "rga_a", "rwa_a", "gwa_a",
            "rga_b", "rwa_b", "gwa_b", "phase"]
    lines = [last[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}")]
    ok = last[last["status"] != "diverged"]  # ok or settled: finished networks
    if len(ok):
        cd = critical_depth(ok, "rga_b", tau, by=["member"])
        lines.append(f"\ncritical depth (rga_b >= {tau}), hidden layers 1..n_layers-1:")
        lines.append(cd.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # phasemap reports failed trials and storage faults itself; -v shows Ray's own logs
        for name in ("ray", "ray.tune", "ray.train", "ray.air"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    if args.command in ("query", "plot", "report"):
        return _data_command(args)
    if args.command == "predict":
        return _predict(args)
    if args.command == "serve":
        return _serve(args)
    if args.command == "status" and not _is_config(args.config):
        return _stored_status(args)
    try:
        cfg = _load(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.command in ("sweep", "status") or (args.command == "validate" and not isinstance(cfg, RunConfig)):
        return _sweep_command(args, cfg)
    if args.command == "validate":
        print(f"{args.config}: ok ({len(cfg.members)} member(s), {cfg.train.steps} steps, "
              f"probes at {len(cfg.probe_steps())} steps)")
        return 0

    from tqdm import tqdm

    from .train import train_pack
    from .train.loop import resolve_device

    try:
        resolve_device(cfg.train.device)  # no CUDA for device 'cuda': said before the progress bar starts
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    bar = tqdm(total=cfg.train.steps, desc=cfg.name, unit="step", disable=args.no_progress,
               mininterval=0.1 if sys.stderr.isatty() else 10.0)
    try:
        result = train_pack(cfg, progress=lambda s: bar.update(1) if s > 0 else None)
    except ConfigError as e:  # met while training: e.g. device='cuda' without CUDA, a token id beyond vocab_size
        bar.close()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception:  # out of memory, an internal bug: the traceback is what finds it
        bar.close()
        traceback.print_exc()
        return 1
    bar.close()
    n_div = result.status.count("diverged")
    if result.reused:
        print(f"run {result.run_id}: already complete under {cfg.storage.root}: its records are shown, not trained "
              f"again (a new storage root or sweep_id trains it afresh)")
    n_settled = result.status.count("settled")
    settled = f"{n_settled} settled (last step {result.last_step}), " if n_settled else ""
    print(f"run {result.run_id}: {len(result.status)} member(s), {n_div} diverged, {settled}"
          f"{len(result.records)} records in {result.seconds:.1f} s (probes {result.probe_seconds:.1f} s)")
    print(f"records: {cfg.storage.root}/sweep={cfg.storage.sweep_id}/run={result.run_id}/")
    if len(result.records):
        print(summary(result.records, args.tau))
    return 0


def _sweep_command(args, cfg) -> int:
    from .sweep import expand, grid_plan, sweep_status

    if args.command == "validate":
        if cfg.search.mode == "grid":
            packs = expand(cfg)
            n = sum(len(p.members) for p in packs)
            print(f"{args.config}: ok (grid sweep {cfg.sweep_id!r}: {n} configs in {len(packs)} packs)")
        elif cfg.search.mode == "boundary":
            from .sweep import boundary

            cells = boundary.grid_cells(cfg)
            n = sum(len(c.members) for c in cells)
            print(f"{args.config}: ok (boundary sweep {cfg.sweep_id!r}: {len(cells)} cells, {n} networks; budget "
                  f"{boundary.budget(cfg, cells)} networks, first design {boundary.design_size(cfg, len(cells))} cells, "
                  f"then {cfg.search.per_round} per round)")
        else:
            print(f"{args.config}: ok (optuna sweep {cfg.sweep_id!r}: {cfg.search.trials} trials)")
        return 0
    if args.command == "status":
        _print_status(cfg.sweep_id, cfg.root, sweep_status(cfg))
        return 0
    from .sweep.driver import StorageError, SweepError, overhead_summary, run_sweep  # Ray and torch: here only

    try:
        result = run_sweep(cfg, address=args.address, resume=args.resume, overwrite=args.overwrite,
                           progress=not args.no_progress, num_cpus=args.num_cpus)
    except StorageError as e:  # one line naming the root and the OS error; complete runs are untouched
        print(f"error: {e}\nfix the storage, then rerun the same command: it trains only what is not complete",
              file=sys.stderr)
        return 1
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before Tune started (it handles one itself while it runs)
        incomplete = len(grid_plan(cfg).packs) if cfg.search.mode == "grid" else None
        return _interrupted(args, cfg, incomplete)
    if result.interrupted:
        return _interrupted(args, cfg, result.incomplete)
    reused = sum(1 for t in result.trials if t.get("reused"))
    print(f"sweep {result.sweep_id}: {result.ran} trial(s) run ({result.trained} configs), {result.skipped} configs "
          f"already complete, {len(result.failed)} failed, {result.wall_seconds:.1f} s")
    if reused:
        print(f"{reused} of those trial(s) found their pack complete (trained by another driver or trial): not trained again")
    print(f"records: {cfg.root}/sweep={cfg.sweep_id}/")
    if result.boundary:
        print(_boundary_line(result.boundary))
        print(f"the whole map (measured and inferred cells): phasemap predict {cfg.root} --sweep {cfg.sweep_id} "
              f"--out cells.csv")
    if result.trials:
        import ray

        slots = max(1.0, min(ray.cluster_resources().get("CPU", 1) / cfg.resources.cpus, result.ran))
        print(overhead_summary(result, slots))
    for err in result.failed:
        print(f"failed trial: {err.splitlines()[0] if err else err}", file=sys.stderr)
    return 1 if result.failed else 0


def _is_config(target: str) -> bool:
    """`phasemap status TARGET`: a YAML file is a sweep config; anything else a storage root."""
    return target.endswith((".yaml", ".yml")) or Path(target).is_file()


def _stored_status(args) -> int:
    """`phasemap status ROOT [--sweep NAME]`: every sweep's packs from storage alone."""
    from .records import resolve_root
    from .sweep.status import storage_status, stored_sweeps

    root = args.config
    found = stored_sweeps(root)
    if args.sweep and args.sweep not in found or not found:
        there = f" (sweeps there: {', '.join(found)})" if found else ""
        what = f"sweep {args.sweep!r}" if args.sweep else "a sweep (a folder sweep=<name>/)"
        print(f"error: {what} not found under {resolve_root(root) if '://' not in root else root}{there}",
              file=sys.stderr)
        return 2
    for i, sweep_id in enumerate([args.sweep] if args.sweep else found):
        if i:
            print()
        _print_status(sweep_id, root, storage_status(root, sweep_id))
    return 0


def _print_status(sweep_id: str, root: str, packs: list[dict]) -> None:
    """A line of counts, then one line per pack: state, last step, members, configs, run id."""
    from .sweep.status import STATES, member_counts, pack_labels

    counts = {s: sum(p["state"] == s for p in packs) for s in STATES}
    print(f"sweep {sweep_id!r} under {root}: " + ", ".join(f"{n} {s}" for s, n in counts.items())
          + f" of {len(packs)} packs")
    from .sweep.boundary import read_state

    state = read_state(root, sweep_id)
    if state is not None:
        print(_boundary_line(state))
    members = member_counts(packs)
    if all(p["members"] is not None for p in packs):
        print("members (networks): " + ", ".join(f"{n} {state}" for state, n in members.items())
              + f" of {sum(members.values())}")
    if not packs:
        return

    def step(p):
        return f"{'-' if p['last_step'] is None else p['last_step']}/{p['steps'] if p['steps'] is not None else '?'}"

    table = [("state", "step", "members", "configs", "run")]
    table += [(p["state"], step(p), "?" if p["members"] is None else str(p["members"]), label, p["run_id"])
              for p, label in zip(packs, pack_labels(packs))]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[4])


def _boundary_line(state: dict) -> str:
    where = "finished" if state["finished"] else f"round {state['round']} under way or interrupted"
    return (f"boundary search ({where}): round {state['round']}, {state['used']} of a budget of {state['budget']} "
            f"networks, {state['measured']} of {state['cells']} cells measured, {state['uncertain']} candidate "
            f"cells still uncertain")


def _serve(args) -> int:
    """`phasemap serve ROOT`: the live view until Ctrl-C."""
    import asyncio

    from .records import filesystem, resolve_root
    from .serve.app import serve

    root = resolve_root(args.root)
    fs, base = filesystem(root)
    if fs.get_file_info(base).type.name != "Directory":
        print(f"error: root: `a folder of records` must hold, but {args.root!r} does not exist", file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535:
        print(f"error: --port: `0 <= port <= 65535` must hold, but got {args.port}", file=sys.stderr)
        return 2

    def ready(url: str) -> None:
        print(f"serving {root} at {url}  (Ctrl-C stops)", flush=True)

    try:
        asyncio.run(serve(root, args.host, args.port, args.token, args.sweep, ready=ready))
    except OSError as e:  # the port is taken, the address is not this machine's
        print(f"error: --host/--port: cannot listen on {args.host}:{args.port}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def _predict(args) -> int:
    """`phasemap predict ROOT --sweep NAME`: every cell's phase, measured or inferred."""
    from .analysis.aggregate import has_majority, parse_layer
    from .analysis.query import load
    from .sweep import boundary
    from .sweep.status import stored_sweeps

    found = stored_sweeps(args.root)
    sweep = args.sweep or (found[0] if len(found) == 1 else None)
    if sweep not in found:
        print(f"error: --sweep: `a sweep under {args.root}` must hold, but got {args.sweep!r} (sweeps there: "
              f"{', '.join(found) or 'none'})", file=sys.stderr)
        return 2
    state = boundary.read_state(args.root, sweep)
    default = boundary.judging(state)  # a boundary search's own settings by default
    layer_text = args.layer or default["layer"]
    tau = args.tau if args.tau is not None else default["tau"]
    against = args.against or default["against"]
    try:
        try:
            layer = parse_layer(layer_text)
        except ValueError:
            layer = None
        if layer is None or layer == "each":
            raise ValueError(f"--layer: `an index >= 1, a fraction in (0, 1], 'last' or 'output'` must hold, but got "
                             f"{layer_text!r}")
        if not 0 < tau < 1:
            raise ValueError(f"--tau: `0 < tau < 1` must hold, but got {tau}")
        table = boundary.read_records(args.root, sweep) if state is not None else \
            load(args.root, filters={"sweep_id": sweep})
        boundary.check_measurable(table, layer, against)
        if state is not None:  # a boundary search: its grid's cells, measured or inferred
            cells = boundary.stored_map(args.root, state, table, tau, layer_text, against)
        else:  # any other sweep: the cells its records hold, every one measured
            cells = boundary.measured_cells(table, tau, layer, against)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"layer {layer_text}, tau {tau}, judged {'as the excess over the null' if against == 'null' else 'raw'}")
    # a measured cell's phase is its majority, as the figures say
    cells.loc[(cells["measured"] > 0) & ~has_majority(cells["confidence"]), "phase"] = "no majority"
    measured = int((cells["measured"] > 0).sum())
    inferred = cells[cells["measured"] == 0]
    print(f"sweep {sweep}: {len(cells)} cells, {measured} measured, {len(inferred)} inferred"
          + (f" (confidence: mean {inferred['confidence'].mean():.2f}, min {inferred['confidence'].min():.2f})"
             if len(inferred) else ""))
    if args.out:
        cells.to_csv(args.out, index=False)
        print(f"{len(cells)} cells -> {args.out}")
    else:
        print(cells.to_string(index=False, max_rows=200))
    return 0


def _interrupted(args, cfg, incomplete: int | None) -> int:
    """Ctrl-C: how much is left, and how to finish it. Exit 130 (128 + SIGINT), as a shell does."""
    what = "trials" if cfg.search.mode == "optuna" else "packs"
    left = f"{incomplete} {what} not complete" if incomplete is not None else f"its {what} not complete"
    print(f"sweep {cfg.sweep_id}: interrupted: {left} (complete ones are kept under {cfg.root}/sweep={cfg.sweep_id}/)\n"
          f"rerun the same command (phasemap sweep {args.config} ...) to finish them: only what is not complete "
          f"trains", file=sys.stderr)
    return 130


if __name__ == "__main__":
    sys.exit(main())
