"""The `cai` command as a user runs it: a real subprocess, its exit code, its output."""

import os
import subprocess
import sys

CAI = [sys.executable, "-m", "cai.cli"]


def cai(*args, cwd=None, wait=True, timeout=900, env=None):
    """Run `cai ARGS`; with wait=False return the Popen (its own session, so a test can kill it)."""
    cmd = [*CAI, *map(str, args)]
    env = {**os.environ, "COLUMNS": "200", **(env or {})}
    if not wait:
        return subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
