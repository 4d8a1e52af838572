"""One writer per run directory and shard: a lock file naming its holder.

Two `cai run` on the same directory and shard (a job submitted twice) would both append, and
every record would be written twice. The lock is a file created with O_EXCL holding the pid,
host and start time, so it also works where `flock` does not (many network filesystems), and
its holder can be named in the refusal. A lock left by a process that died on this host (a
`kill -9`, an OOM kill) is taken over; one held from another host is never guessed about, unless
it names the same owner: a scheduler's task that runs once at a time and may come back on another
node (a requeued Slurm job, a retried pod of a Kubernetes Indexed Job), which is its own successor.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from cai.constitution import UserError


def owner() -> str | None:
    """Who holds a lock across hosts: CAI_LOCK_OWNER if set, else the Slurm job (an array task has its
    own job id, kept when it is requeued)."""
    if os.environ.get("CAI_LOCK_OWNER"):
        return os.environ["CAI_LOCK_OWNER"]
    job = os.environ.get("SLURM_JOB_ID")
    return f"slurm:{job}" if job else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _pid(holder: dict) -> int:
    try:
        return int(holder.get("pid", -1))
    except (TypeError, ValueError):
        return -1


class RunLock:
    def __init__(self, root: Path, suffix: str = ""):
        self.path = Path(root) / f".lock{suffix}"
        self.held = False

    def acquire(self, wait: float = 0.0) -> None:
        """Take the lock, or fail naming its holder (after waiting up to `wait` seconds for it)."""
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if owner():
            me["owner"] = owner()
        deadline = time.monotonic() + wait
        for _ in range(1000):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                dead_here = holder is not None and holder.get("host") == me["host"] and not _alive(_pid(holder))
                earlier_me = holder is not None and me.get("owner") and holder.get("owner") == me["owner"]
                if holder is None or dead_here or earlier_me:
                    self.path.unlink(missing_ok=True)  # stale: its writer is gone
                    continue
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                raise UserError(
                    f"{self.path.parent}: in use by pid {holder.get('pid')} on {holder.get('host')} "
                    f"since {holder.get('since')} ({self.path.name}); wait for it, or stop it first"
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return
        raise UserError(f"{self.path}: could not take the lock")

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            # half-written by a holder killed between create and write: stale once old enough
            try:
                return None if time.time() - self.path.stat().st_mtime > 10 else {"pid": "?", "host": "?"}
            except OSError:
                return None

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
