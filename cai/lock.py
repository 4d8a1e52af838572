"""One writer per run directory and shard: a lock file naming its holder.

Two `cai run` on the same directory and shard (a job submitted twice) would both append, and
every record would be written twice. The lock is a file created with O_EXCL holding the pid,
host and start time, so it also works where `flock` does not (many network filesystems), and
its holder can be named in the refusal. A lock left by a process that died on this host (a
`kill -9`, an OOM kill) is taken over; one held from another host is never guessed about, unless
it names the same owner: a scheduler's task that runs once at a time and may come back on another
node (a requeued Slurm job, a retried pod of a Kubernetes Indexed Job), which is its own successor.

Taking over is where two processes could both end up holding the lock: both see the same stale
file, one removes it and creates its own, and the other then removes that fresh one. So a stale
lock is removed only under a second O_EXCL file (`.lock.takeover`), after looking again at what
is there now: the second process finds the first one's live lock and waits. The removal itself
renames the file aside and checks it was the one judged stale, so a lock created in between is
put back rather than lost.

A file that is not a lock this code wrote (empty, a scalar, a list, a pid that is not a number)
has an unknown holder: a writer may be between create and write, so it is left alone for
`GRACE` seconds after its last change and is stale after that.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cai.core.errors import UserError

GRACE = 10.0


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


@dataclass(frozen=True)
class _Seen:
    """A lock file as read once: which file (device, inode), its holder if it names one, its age."""

    ino: tuple[int, int]
    holder: dict | None
    age: float
    raw: bytes


def _parse(raw: bytes) -> dict | None:
    try:
        h = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(h, dict) or type(h.get("pid")) is not int or h["pid"] <= 0 or not isinstance(h.get("host"), str):
        return None
    return h


def _read(path: Path) -> _Seen | None:
    """The lock file now, or None if there is none."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read(1 << 16)
    except FileNotFoundError:
        return None
    return _Seen((st.st_dev, st.st_ino), _parse(data), time.time() - st.st_mtime, data)


def _stale(seen: _Seen, me: dict) -> bool:
    h = seen.holder
    if h is None:
        return seen.age > GRACE
    if h["host"] == me["host"]:
        return not _alive(h["pid"])
    return bool(me.get("owner")) and h.get("owner") == me["owner"]


def _taker_gone(seen: _Seen, me: dict) -> bool:
    """A takeover file's holder died: a dead pid here; elsewhere or unreadable, older than GRACE."""
    h = seen.holder
    if h is not None and h["host"] == me["host"]:
        return not _alive(h["pid"])
    return seen.age > GRACE


def _remove_if(path: Path, ino: tuple[int, int]) -> None:
    """Remove `path` if it is still the file `ino`; a file that replaced it in between is put back."""
    aside = path.with_name(f"{path.name}.stale-{os.getpid()}-{random.getrandbits(32):08x}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    st = os.stat(aside)
    if (st.st_dev, st.st_ino) != ino:
        # Not the file judged stale. Under the takeover file only its own holder could have replaced
        # it (a holder judged dead or unknown that was alive after all); if yet another lock took
        # the empty place meanwhile, that one stays and the moved one is lost.
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
    os.unlink(aside)


class RunLock:
    def __init__(self, root: Path, suffix: str = "", busy: str | None = None):
        """`busy` starts the refusal, before "by pid ..." (default: "ROOT: in use")."""
        self.path = Path(root) / f".lock{suffix}"
        self.busy = busy or f"{self.path.parent}: in use"
        self.held = False
        self._mine: tuple[tuple[int, int], bytes] | None = None

    def acquire(self, wait: float = 0.0) -> None:
        """Take the lock, or fail naming its holder (after waiting up to `wait` seconds for it)."""
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if owner():
            me["owner"] = owner()
        deadline = time.monotonic() + wait
        try:
            while not self._create(me):
                seen = _read(self.path)
                if seen is None:
                    continue  # released just now
                if _stale(seen, me):
                    if self._take_over(seen, me) or time.monotonic() < deadline:
                        continue
                    raise UserError(
                        f"{self.busy}: another process is taking over the stale {self.path.name}; try again shortly"
                    )
                if time.monotonic() >= deadline:
                    raise UserError(self._refusal(seen)) from None
                time.sleep(random.uniform(0.02, 0.05))
        except OSError as e:
            raise UserError(f"{self.path}: cannot take the lock: {e.strerror or e}") from None

    def _create(self, me: dict) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        st, text = os.fstat(fd), json.dumps(me).encode()
        self._mine, self.held = ((st.st_dev, st.st_ino), text), True
        try:
            os.write(fd, text)
        except BaseException:
            os.close(fd)
            self.release()
            raise
        os.close(fd)
        return True

    def _take_over(self, seen: _Seen, me: dict) -> bool:
        """Remove the stale lock `seen`; False if another process is taking it over (True: look again)."""
        mutex = self.path.with_name(self.path.name + ".takeover")
        try:
            fd = os.open(mutex, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            other = _read(mutex)
            if other is None or _taker_gone(other, me):
                if other is not None:
                    _remove_if(mutex, other.ino)  # its taker died inside the few lines below
                return True  # look again at once
            time.sleep(random.uniform(0.001, 0.005))
            return False
        st = os.fstat(fd)
        try:
            os.write(fd, json.dumps(me).encode())
            os.close(fd)
            now = _read(self.path)
            if now is not None and now.ino == seen.ino and _stale(now, me):
                _remove_if(self.path, now.ino)
        finally:
            _remove_if(mutex, (st.st_dev, st.st_ino))  # not one that replaced ours, had ours been judged gone
        return True

    def _refusal(self, seen: _Seen) -> str:
        h = seen.holder
        if h is None:
            return (
                f"{self.busy}: {self.path.name} names no holder (unreadable, changed {seen.age:.0f}s ago; "
                f"taken over after {GRACE:.0f}s); try again shortly"
            )
        return (
            f"{self.busy} by pid {h['pid']} on {h['host']} since {h.get('since')} ({self.path.name}); "
            "wait for it, or stop it first"
        )

    def release(self) -> None:
        """Remove the lock file if it is still ours (one taken over meanwhile belongs to its new holder;
        a filesystem may give it our inode number, so the content is compared too)."""
        if not self.held:
            return
        self.held = False
        seen = _read(self.path)
        if seen is not None and self._mine is not None and (seen.ino, seen.raw) in (self._mine, (self._mine[0], b"")):
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class Terminated(BaseException):
    """SIGTERM arrived. Raised like KeyboardInterrupt, so every `finally:` and `with` on the way up
    runs (locks released, staging folders removed) before the process exits."""

    exit_code = 128 + signal.SIGTERM  # 143, what a shell reports for a process ended by SIGTERM


@contextmanager
def on_terminate(callback: Callable[[], None] | None = None) -> Iterator[None]:
    """Turn SIGTERM (a scheduler's cancel or preemption, `kill`, `docker stop`) into a clean exit.

    Python's default for SIGTERM ends the process at once, leaving the lock file behind; a later
    run on this host takes it over, but one on another host cannot tell it is stale. Inside this
    block a SIGTERM raises `Terminated` in the main thread; the stack unwinds, then `callback`
    runs (e.g. to print one line) and the process exits with status 143. Further SIGTERMs during
    the unwinding are ignored so they cannot cut a release short. Wrap a command's whole body:

        with on_terminate(lambda: print("terminated", file=sys.stderr)):
            app()

    A handler can only be installed from the main thread; elsewhere this block changes nothing.
    A signal that arrives while the main thread is inside a long C call (a model forward pass)
    takes effect when that call returns.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def handler(signum, frame) -> None:
        nonlocal fired
        if not fired:
            fired = True
            raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except Terminated:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if callback is not None:
            callback()
        raise SystemExit(Terminated.exit_code) from None
    finally:
        if signal.getsignal(signal.SIGTERM) is handler:
            signal.signal(signal.SIGTERM, previous)
