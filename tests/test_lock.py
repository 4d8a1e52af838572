"""The run lock under contention, with files it did not write, and on SIGTERM.

The contenders are real processes; each holder forks off for its turn and then really dies, so
every turn is a takeover of a dead process's lock raced by the others.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from cai.core.errors import UserError
from cai.lock import GRACE, RunLock, on_terminate

pytestmark = pytest.mark.fast  # the bookkeeping tier: `make test-fast`

CONTENDER = textwrap.dedent(
    """
    import os, sys, time, traceback
    from pathlib import Path
    from cai.lock import RunLock

    root, rounds = Path(sys.argv[1]), int(sys.argv[2])
    for r in range(rounds):
        child = os.fork()
        if child == 0:
            code = 0
            try:
                lock = RunLock(root)
                lock.acquire(wait=60)
                try:
                    inside = os.open(root / "inside", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    with open(root / "overlaps", "a") as f:
                        f.write(f"{os.getpid()}\\n")
                    inside = None
                n = int((root / "count").read_text())
                time.sleep(0.002)
                (root / "count").write_text(str(n + 1))
                if inside is not None:
                    os.close(inside)
                    os.unlink(root / "inside")
                if r % 2:
                    lock.release()  # otherwise die holding it, as a kill -9 would
            except BaseException:
                traceback.print_exc()
                code = 1
            os._exit(code)
        if os.waitpid(child, 0)[1]:
            sys.exit(1)
    """
)


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_contenders_over_dead_holders_never_hold_the_lock_together(tmp_path):
    contenders, rounds = 6, 30
    (tmp_path / "count").write_text("0")
    (tmp_path / ".lock").write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname()}))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONTENDER, str(tmp_path), str(rounds)], stderr=subprocess.PIPE, text=True
        )
        for _ in range(contenders)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * contenders, errors
    assert not (tmp_path / "overlaps").exists(), (tmp_path / "overlaps").read_text()
    assert int((tmp_path / "count").read_text()) == contenders * rounds  # no update lost to a second holder
    assert not list(tmp_path.glob(".lock.*"))  # no takeover file or renamed-aside lock left behind


@pytest.mark.parametrize("content", ["3", "[1]", "", '{"pid": "abc"}', '{"pid": 7}', "{not json", '"x"'])
def test_a_lock_file_naming_no_holder_waits_out_its_grace_then_is_taken_over(tmp_path, content):
    path = tmp_path / ".lock"
    path.write_text(content)
    with pytest.raises(UserError) as e:
        RunLock(tmp_path).acquire()  # a writer may be between create and write
    assert ".lock names no holder" in str(e.value) and "\n" not in str(e.value)
    assert path.read_text() == content
    old = time.time() - GRACE - 5
    os.utime(path, (old, old))
    lock = RunLock(tmp_path)
    lock.acquire()
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()
    assert not path.exists()


def test_a_live_or_foreign_holder_is_refused_by_name_and_a_dead_or_earlier_self_taken_over(tmp_path, monkeypatch):
    path = tmp_path / ".lock"
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("CAI_LOCK_OWNER", raising=False)
    here = socket.gethostname()
    path.write_text(json.dumps({"pid": os.getppid(), "host": here, "since": "2030-01-01T00:00:00"}))
    with pytest.raises(UserError, match=rf"in use by pid {os.getppid()} on {here} since 2030-01-01T00:00:00"):
        RunLock(tmp_path).acquire()
    path.write_text(json.dumps({"pid": 12, "host": "elsewhere", "owner": "job-7"}))
    with pytest.raises(UserError, match="in use by pid 12 on elsewhere"):
        RunLock(tmp_path).acquire()
    monkeypatch.setenv("CAI_LOCK_OWNER", "job-7")  # the same scheduler task, back on another node
    with RunLock(tmp_path):
        assert json.loads(path.read_text())["owner"] == "job-7"
    path.write_text(json.dumps({"pid": dead_pid(), "host": here}))
    with RunLock(tmp_path):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists()


def test_a_takeover_left_by_a_dead_taker_does_not_block_the_next(tmp_path):
    here, dead = socket.gethostname(), dead_pid()
    (tmp_path / ".lock").write_text(json.dumps({"pid": dead, "host": here}))
    (tmp_path / ".lock.takeover").write_text(json.dumps({"pid": dead, "host": here}))
    with RunLock(tmp_path):
        assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]
    (tmp_path / ".lock").write_text(json.dumps({"pid": dead, "host": here}))
    (tmp_path / ".lock.takeover").write_text("")  # its taker died between create and write
    with pytest.raises(UserError, match="another process is taking over the stale .lock"):
        RunLock(tmp_path).acquire(wait=0.2)  # a taker at work, for all we know
    old = time.time() - GRACE - 5
    os.utime(tmp_path / ".lock.takeover", (old, old))
    with RunLock(tmp_path):
        assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]


def test_release_leaves_a_lock_that_is_no_longer_its_own(tmp_path):
    lock = RunLock(tmp_path)
    lock.acquire()
    lock.path.unlink()
    lock.path.write_text(json.dumps({"pid": 1, "host": "successor"}))
    lock.release()
    assert json.loads(lock.path.read_text())["host"] == "successor"


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from cai.lock import RunLock, on_terminate

    with on_terminate(lambda: print("terminated", file=sys.stderr)):
        with RunLock(Path(sys.argv[1])):
            print("held", flush=True)
            time.sleep(60)
    """
)


def test_sigterm_releases_the_lock_and_exits_143(tmp_path):
    p = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert p.stdout.readline() == "held\n"
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == p.pid
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 143
    assert err == "terminated\n"  # one line, no traceback
    assert not (tmp_path / ".lock").exists()


def test_on_terminate_puts_the_previous_handler_back():
    before = signal.getsignal(signal.SIGTERM)
    with on_terminate():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before
