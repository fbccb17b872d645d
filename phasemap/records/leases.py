"""One trainer per run: a lease in storage, with a heartbeat and an expiry.

A lease is a file `_LEASE-<generation>.json` in the run's folder, holding who has it (a
token, host, pid) and until when (`expires`, wall-clock seconds). The current lease is the
highest generation. To take a run, a trainer creates the next generation's file, and only
when the current one is free: absent, released, expired, or held by a process of this host
that no longer exists (a killed worker is noticed at once, not after the expiry).

Exclusivity:
- local or shared (POSIX) filesystems: the file is created with O_CREAT | O_EXCL, so of two
  trainers racing for one generation exactly one wins;
- object stores (S3, GCS through pyarrow, which has no conditional write): best effort. The
  trainer checks the generation is free, writes its token, waits `settle` seconds and reads
  the file back; it holds the lease only if its own token is still there (the last writer
  wins and every other writer sees that). Two trainers whose check and write are more than
  `settle` apart cannot both win; closer races are what the settle time is for.

The holder rewrites its file every ttl/4 seconds (the heartbeat). If it finds a higher
generation, another trainer took the run over (this one was presumed dead): `lost` becomes
true and the trainer must stop writing.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

import pyarrow.fs as pafs

from . import store as records

log = logging.getLogger(__name__)

PREFIX = "_LEASE-"
DEFAULT_TTL = 60.0  # seconds without a heartbeat before a lease expires
SETTLE = 2.0  # object stores: seconds between writing a lease and reading it back
_HELD: set[str] = set()  # tokens of the leases this process holds now


def ttl_seconds() -> float:
    """The lease expiry: PHASEMAP_LEASE_SECONDS, else 60 s."""
    return float(os.environ.get("PHASEMAP_LEASE_SECONDS", DEFAULT_TTL))


@dataclass
class Holder:
    generation: int
    token: str
    host: str
    pid: int
    expires: float
    released: bool = False

    def live(self, now: float | None = None) -> bool:
        """Whether this lease still holds the run."""
        if self.released or (now or time.time()) > self.expires:
            return False
        if self.host == socket.gethostname():
            if self.pid == os.getpid():
                return self.token in _HELD  # this process knows whether it still holds it
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False  # its process died on this host: no need to wait for the expiry
            except PermissionError:
                pass
        return True

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, expires in {max(0.0, self.expires - time.time()):.0f} s"


def _body(token: str, ttl: float, released: bool = False) -> bytes:
    """A lease file's content: this process holds it for `ttl` more seconds (or released it)."""
    return json.dumps({"token": token, "host": socket.gethostname(), "pid": os.getpid(),
                       "expires": time.time() + ttl, "released": released}).encode()


def _name(generation: int) -> str:
    return f"{PREFIX}{generation:06d}.json"


def current(root: str, sweep_id: str, run_id: str) -> Holder | None:
    """The run's lease of the highest generation, or None."""
    fs, folder = records.run_dir(root, sweep_id, run_id)
    try:
        listed = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    except FileNotFoundError:  # the folder appeared or went while being listed
        listed = []
    infos = {int(i.base_name[len(PREFIX):-5]): i for i in listed
             if i.base_name.startswith(PREFIX) and i.base_name.endswith(".json")}
    if not infos:
        return None
    gen = max(infos)
    data = records.read_file(root, sweep_id, run_id, _name(gen))
    try:
        return Holder(generation=gen, **json.loads(data))
    except (ValueError, TypeError):  # being written (created, not yet filled) or damaged: live a while
        mtime = infos[gen].mtime.timestamp() if infos[gen].mtime else time.time()
        return Holder(gen, "", "", 0, mtime + ttl_seconds())


class Lease:
    """A held lease; `release()` when done (also on failure), `lost` if taken over."""

    def __init__(self, root: str, sweep_id: str, run_id: str, generation: int, token: str, ttl: float):
        self.root, self.sweep_id, self.run_id = root, sweep_id, run_id
        self.generation, self.token, self.ttl = generation, token, ttl
        self.lost = False
        _HELD.add(token)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{run_id}", daemon=True)
        self._thread.start()

    def _body(self, released: bool = False) -> bytes:
        return _body(self.token, self.ttl, released)

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                now = current(self.root, self.sweep_id, self.run_id)
                if now is None or now.generation != self.generation or now.token != self.token:
                    self.lost = True
                    log.warning("run %s: the lease was taken over by another trainer; this one stops", self.run_id)
                    return
                records.write_file(self.root, self.sweep_id, self.run_id, _name(self.generation), self._body())
            except OSError as e:  # storage trouble: the trainer's own writes will fail and say so
                log.warning("run %s: lease heartbeat failed: %s", self.run_id, e)

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        _HELD.discard(self.token)
        if self.lost:
            return
        try:
            records.write_file(self.root, self.sweep_id, self.run_id, _name(self.generation), self._body(True))
        except OSError as e:
            log.warning("run %s: could not release the lease (it expires by itself): %s", self.run_id, e)


def try_acquire(root: str, sweep_id: str, run_id: str, ttl: float | None = None,
                settle: float = SETTLE) -> tuple[Lease | None, Holder | None]:
    """Take the run's lease if it is free: (the lease, None), or (None, the live holder)."""
    ttl = ttl or ttl_seconds()
    holder = current(root, sweep_id, run_id)
    if holder is not None and holder.live():
        return None, holder
    generation = (holder.generation + 1) if holder else 1
    token = uuid.uuid4().hex
    body = _body(token, ttl)
    fs, folder = records.run_dir(root, sweep_id, run_id)
    fs.create_dir(folder, recursive=True)
    _HELD.add(token)  # before the file exists: a reader in this process must see it as live
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            try:
                fd = os.open(f"{folder}/{_name(generation)}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                _HELD.discard(token)
                return None, current(root, sweep_id, run_id)
            with os.fdopen(fd, "wb") as f:
                f.write(body)
        else:
            records.write_file(root, sweep_id, run_id, _name(generation), body)
            time.sleep(settle)
            now = current(root, sweep_id, run_id)
            if now is None or now.generation != generation or now.token != token:
                _HELD.discard(token)
                return None, now
    except BaseException:
        _HELD.discard(token)
        raise
    return Lease(root, sweep_id, run_id, generation, token, ttl), None
