"""One writer per warehouse: an OS file lock that ``synthdata run`` holds for its whole run.

The lock is ``flock`` on ``<root>/.lock``, held through an open file descriptor. The kernel
releases it when the last process holding that descriptor ends, however it ends (a crash,
``kill -9``, a reboot), so a stale lock cannot outlive its holder the way a PID file can.
The runs a holder launches inherit the descriptor (:attr:`WarehouseLock.fd`), so the
warehouse stays locked until the launcher *and* every run it started are gone: a run left
behind by a killed launcher keeps the warehouse locked until it ends too.

Runs of different partitions may go on side by side (Celery workers, ``synthdata run
--workers``), and the steps of one run may execute in several processes at once, so a
partition is not locked by a process but claimed by a run (:func:`claim_partition`): the
file ``<root>/.locks/<partition>.lock`` names the run that writes the partition, and every
step, wherever it executes, checks it under a brief ``flock`` of that file. A step of another
run finds the claim held while that run is unfinished in the instance, and fails at once,
naming it. ``flock`` is also what NFS v4 and Lustre clients honour across machines.

Beside each lock, the file records who holds it (process id, command, start time) so that a
second writer can say which process it is waiting for; the record is information, the lock
is the ``flock``.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

LOCK_FILE = ".lock"
# Set in the environment of the runs a lock holder launches: they hold the lock through it.
LOCK_FD_ENV = "SYNTHDATA_LOCK_FD"
# Set by ``synthdata worker``: the steps of this process belong to runs that a launcher
# elsewhere answers for, so they take only their partition's lock.
WORKER_ENV = "SYNTHDATA_WORKER"
PARTITION_LOCKS = ".locks"


# How long a refused process waits for the holder's record (see _busy_message).
RECORD_WAIT_S = 2.0


def process_running(pid: int) -> bool:
    """Whether process ``pid`` is running on this machine: it exists (under any user) and is
    not a zombie waiting for its parent."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # running, under another user
        pass
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().split()[2] != "Z"
    except OSError:  # no /proc (or gone meanwhile): existence is all there is to go on
        return True


def _alive(record: dict | None) -> bool:
    """Whether a lock record names a process that is running."""
    pid = (record or {}).get("pid")
    return isinstance(pid, int) and process_running(pid)


class WarehouseBusy(RuntimeError):
    """Another process holds the warehouse's lock; the message names it."""


@dataclass
class WarehouseLock:
    """The exclusive lock of the warehouse at ``root`` (see the module docstring)."""

    root: Path
    fd: int | None = None
    file: str = LOCK_FILE

    @property
    def path(self) -> Path:
        return self.root / self.file

    def acquire(self, *, wait: bool = False) -> WarehouseLock:
        """Take the lock, or raise :class:`WarehouseBusy` naming its holder (``wait``: block
        until it is free instead)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            raise WarehouseBusy(self._busy_message()) from None
        record = {"pid": os.getpid(), "command": " ".join(sys.argv), "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode() + b"\n", 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # the runs that inherited it keep it until they end
            self.fd = None

    def holder(self) -> dict | None:
        """Who last took the lock (pid, command, since), if recorded."""
        try:
            return json.loads(self.path.read_text() or "null")
        except (OSError, ValueError):
            return None

    def _busy_message(self) -> str:
        # The holder writes its record just after taking the lock, so a process refused in
        # between reads an empty file, or the record of the previous holder, which has ended:
        # give the record a moment to name a live process. (A holder on another machine of a
        # shared file system is not alive here; after the wait its record is named anyway.)
        deadline = time.monotonic() + RECORD_WAIT_S
        who = self.holder()
        while not _alive(who) and time.monotonic() < deadline:
            time.sleep(0.02)
            who = self.holder()
        if not who:
            return f"another process holds the warehouse {self.root} (lock {self.path})"
        since = time.strftime("%H:%M:%S", time.localtime(who.get("since", 0)))
        return (
            f"the warehouse {self.root} is in use by process {who.get('pid')} "
            f"({who.get('command', '?')}, since {since}); wait for it to finish, stop it, or "
            "point SYNTHDATA_HOME at another warehouse"
        )

    def __enter__(self) -> WarehouseLock:
        return self if self.fd is not None else self.acquire()

    def __exit__(self, *_exc) -> None:
        self.release()


def claim_partition(root: Path, partition: str | None, run_id: str, is_finished) -> None:
    """Claim ``partition`` (``None``: the unpartitioned tables) of the warehouse at ``root``
    for the run ``run_id``, or raise :class:`WarehouseBusy` naming the unfinished run that
    holds it. ``is_finished(run_id)``: whether a run is over (or unknown), read from the
    instance; a claim of a finished run is stale and passes to the new one."""
    name = (partition or "unpartitioned").replace("|", "_").replace("/", "_")
    path = root / PARTITION_LOCKS / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held for the read and write below only
        claim = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        holder = json.loads(claim) if claim.startswith("{") else {}
        owner = holder.get("claimed_by_run")
        if owner and owner != run_id and not is_finished(owner):
            raise WarehouseBusy(
                f"partition {partition or '(unpartitioned)'} of the warehouse {root} is being "
                f"written by run {owner} (claimed by process {holder.get('pid')} on "
                f"{holder.get('host')}): wait for that run to finish or cancel it"
            )
        if owner != run_id:
            record = {"claimed_by_run": run_id, "pid": os.getpid(), "host": os.uname().nodename}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode() + b"\n", 0)
    finally:
        os.close(fd)
