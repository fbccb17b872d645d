#!/usr/bin/env python3
"""Submit `phasemap sweep CONFIG` to a Ray cluster through the Ray Jobs API.

The job runs on the cluster's head node: `phasemap sweep CONFIG --no-progress [SWEEP ARGS]`.
Ray sets RAY_ADDRESS for the job, so the sweep joins that cluster and its trials run on the
workers; phasemap must be installed on every node (the image in docker/ has it).

What travels with the job (its runtime environment):
  working_dir  a temporary folder holding only CONFIG, at the same relative path, so the
               command reads the same on the cluster as it does here;
  env_vars     the storage credentials set in *this* shell (AWS_ACCESS_KEY_ID,
               AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_DEFAULT_REGION, AWS_REGION,
               AWS_ENDPOINT_URL) and any --env NAME. Never from the config file. They reach
               the driver and every trial, and override the nodes' own values.

Exit codes: 0 the job succeeded (or was submitted, with --no-wait); 1 it failed, was stopped
or ran past --timeout (then it is stopped); 2 bad input or no cluster at the address.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
               "AWS_REGION", "AWS_ENDPOINT_URL")
DEFAULT_ADDRESS = "http://127.0.0.1:8265"

EPILOG = f"""examples:
  python jobs/submit.py configs/cluster.yaml --address http://HEAD:8265
  python jobs/submit.py configs/cluster.yaml -- --resume          # arguments after -- go to phasemap sweep
  python jobs/submit.py configs/quick.yaml --no-wait -- --out s3://phasemap-results/sweeps

The address is the head's dashboard (Ray Jobs API), port 8265 by default: --address, else
$RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS, else {DEFAULT_ADDRESS}. With
`kubectl port-forward service/phasemap-head-svc 8265:8265` or `ray dashboard CLUSTER.yaml`
the head is at {DEFAULT_ADDRESS}. A cluster with token authentication needs RAY_AUTH_MODE=token
and RAY_AUTH_TOKEN in this shell. See jobs/README.md for every target.
"""


class SubmitError(Exception):
    """Bad input: the message names the problem and the value."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jobs/submit.py",
        usage="python jobs/submit.py CONFIG [options] [-- SWEEP ARGS]",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="sweep config (YAML); it travels with the job")
    p.add_argument("--address", help="the Ray Jobs API, http://HEAD:8265 (default: see below)")
    p.add_argument("--env", action="append", default=[], metavar="NAME",
                   help="also forward this environment variable (its value from this shell); repeatable")
    p.add_argument("--submission-id", help="the job's id (default: Ray picks one); Ray refuses a second job with the same id")
    p.add_argument("--no-wait", action="store_true", help="submit, print the job id and return")
    p.add_argument("--quiet", action="store_true", help="do not stream the job's logs (their tail is still printed if it fails)")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="stop the job and exit 1 if it runs longer")
    return p


# ----------------------------------------------------------------------------- the job


def storage_root(config: Path, sweep_args: list[str]) -> str:
    """The storage root the sweep will write to: --out, else the config's storage.root."""
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--out")
    known, _ = extra.parse_known_args(sweep_args)
    if known.out:
        return known.out
    data = yaml.safe_load(config.read_text())
    storage = data.get("storage") if isinstance(data, dict) else None
    root = storage.get("root") if isinstance(storage, dict) else None
    return "results" if root is None else str(root)  # phasemap's default root


def check_config(config: Path, sweep_args: list[str]) -> str:
    """Fail before submitting: a missing file, bad YAML, any config problem (when phasemap is
    installed here), or a relative local storage root. Returns the storage root."""
    if not config.is_file():
        raise SubmitError(f"config file not found: {str(config)!r}")
    try:
        root = storage_root(config, sweep_args)
    except yaml.YAMLError as e:
        raise SubmitError(f"{str(config)!r} is not valid YAML: {e}") from None
    try:
        from phasemap.config import ConfigError
        from phasemap.sweep import load_sweep
    except ImportError:
        print("note: phasemap is not installed here; the config is checked on the cluster", file=sys.stderr)
    else:
        extra = argparse.ArgumentParser(add_help=False)
        extra.add_argument("--set", action="append", default=[])
        known, _ = extra.parse_known_args(sweep_args)
        try:
            load_sweep(str(config), known.set + [f"storage.root={root}"])
        except ConfigError as e:
            raise SubmitError(str(e)) from None
    if "://" not in root and not os.path.isabs(root):
        raise SubmitError(
            f"storage root {root!r} is a relative folder: on a cluster it would land in the job's "
            f"temporary working dir. Use s3://bucket/prefix, or an absolute path every node shares (--out)"
        )
    return root


def forwarded_env(environ: dict[str, str], names: list[str]) -> dict[str, str]:
    """The credentials set in `environ`, and every --env name (which must be set)."""
    for name in names:
        if "=" in name:
            raise SubmitError(f"--env {name!r}: give a name only; the value comes from this shell")
        if name not in environ:
            raise SubmitError(f"--env {name!r}: {name} is not set in this shell")
    return {name: environ[name] for name in (*CREDENTIALS, *names) if name in environ}


def stage_config(config: Path, working_dir: Path) -> str:
    """Copy CONFIG into the job's working dir at its path relative to here (or under its name,
    if it lies outside this folder); returns that path, as the entrypoint names it."""
    try:
        rel = config.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        rel = Path(config.name)
    target = working_dir / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(config, target)
    return rel.as_posix()


def entrypoint(config_in_job: str, sweep_args: list[str]) -> str:
    return shlex.join(["phasemap", "sweep", config_in_job, "--no-progress", *sweep_args])


# ----------------------------------------------------------------------------- waiting


async def _stream_logs(client, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        print(lines, end="", flush=True)


def _wait(client, job_id: str, quiet: bool, timeout: float | None):
    """The job's final status, or None when `timeout` passed first."""
    deadline = None if timeout is None else time.monotonic() + timeout
    if not quiet:
        try:
            asyncio.run(asyncio.wait_for(_stream_logs(client, job_id), timeout))
        except TimeoutError:
            return None
    while True:  # the log stream can end a moment before the status does
        status = client.get_job_status(job_id)
        if status.is_terminal():
            return status
        if deadline is not None and time.monotonic() > deadline:
            return None
        time.sleep(1.0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, sweep_args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    args = _parser().parse_args(ours)
    address = (args.address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
               or DEFAULT_ADDRESS)
    config = Path(args.config)
    try:
        root = check_config(config, sweep_args)
        env_vars = forwarded_env(dict(os.environ), args.env)
    except SubmitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from ray.job_submission import JobStatus, JobSubmissionClient

    # Ray's client lets these variables override its `address` argument: --address must win
    for name in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        os.environ.pop(name, None)
    try:
        client = JobSubmissionClient(address)
    except (ConnectionError, ValueError, RuntimeError) as e:
        print(f"error: no Ray Jobs API at {address!r}: {e}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="phasemap-job-") as working_dir:
        command = entrypoint(stage_config(config, Path(working_dir)), sweep_args)
        try:
            job_id = client.submit_job(
                entrypoint=command,
                submission_id=args.submission_id,
                runtime_env={"working_dir": working_dir, "env_vars": env_vars},
                metadata={"phasemap_config": config.name},
            )
        except RuntimeError as e:  # e.g. a submission id already taken; the last line says why
            reason = [line for line in str(e).splitlines() if line.strip(" .")][-1]
            print(f"error: the cluster at {address} refused the job: {reason}", file=sys.stderr)
            return 2
    print(f"submitted job {job_id} to {address}: {command}", flush=True)
    print(f"storage root: {root}; forwarded: {', '.join(env_vars) or 'no environment variables'}", flush=True)
    if args.no_wait:
        print(f"follow it with: ray job logs --follow {job_id} --address {address}")
        return 0
    try:
        status = _wait(client, job_id, args.quiet, args.timeout)
    except KeyboardInterrupt:
        print(f"\nstopped waiting; job {job_id} keeps running. Stop it with: "
              f"ray job stop {job_id} --address {address}", file=sys.stderr)
        return 130
    if status is None:
        client.stop_job(job_id)
        print(f"error: job {job_id} still running after --timeout {args.timeout:g} s: stopped it", file=sys.stderr)
        return 1
    message = (client.get_job_info(job_id).message or "").split(", last available logs")[0].strip()
    print(f"job {job_id}: {status.value}" + (f" ({message.splitlines()[0]})" if message else ""), flush=True)
    if status != JobStatus.SUCCEEDED:
        if args.quiet:
            tail = client.get_job_logs(job_id).splitlines()[-40:]
            print("\n".join(["last lines of the job's logs:", *tail]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
