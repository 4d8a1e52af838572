"""Our output is our progress bars, tables and real warnings; libraries' chatter goes to a log file.

transformers, datasets, TRL, vLLM and torch each print to stderr on their own terms: version
warnings, load reports, progress bars of their own. Inside a command's work, stderr is pointed
at a log file (in the run or output directory), so a user sees cai's lines and can still read
every library message afterwards; `--verbose` leaves stderr alone. stdout, where cai's own
progress bars and tables go, is never touched.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOG_NAME = "cai.log"
VERBOSE = {"on": False}  # set by `cai --verbose`
_PROGRESS_ENV = {
    # read when these libraries are imported; cai imports them lazily, inside the command
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # vLLM otherwise installs its own handler on stdout, where cai's progress bars are
    "VLLM_CONFIGURE_LOGGING": "0",
}


def default_log_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cai" / "logs"


class _Sink:
    """A stand-in for sys.stderr that writes to the log file (and has its file descriptor)."""

    def __init__(self, f):
        self._f = f

    def write(self, s: str) -> int:
        return self._f.write(s)

    def flush(self) -> None:
        self._f.flush()

    def fileno(self) -> int:
        return self._f.fileno()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name):
        return getattr(self._f, name)


def _open_log(folder: Path | None, create: bool):
    """FOLDER/cai.log for appending; the user's log folder where FOLDER is not there (and not to
    be made) or cannot be written (a read-only run being exported)."""
    for where in ([Path(folder)] if folder is not None else []) + [default_log_dir()]:
        try:
            if create or where == default_log_dir():
                where.mkdir(parents=True, exist_ok=True)
            return open(where / LOG_NAME, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed by the caller
        except OSError:
            continue
    return open(os.devnull, "a", encoding="utf-8")  # noqa: SIM115


@contextmanager
def library_output(folder: Path | None, create: bool = True) -> Iterator[Path | None]:
    """Send stderr (library logs, warnings, their progress bars) to FOLDER/cai.log while inside.
    `create=False`: a folder that does not exist is not made for the log (a command that only reads)."""
    if VERBOSE["on"]:
        yield None
        return
    for k, v in _PROGRESS_ENV.items():
        os.environ.setdefault(k, v)
    old = sys.stderr
    f = _open_log(folder, create)
    path = Path(f.name)
    with f:
        sink = _Sink(f)
        moved = _retarget_handlers(old, sink)
        sys.stderr = sink  # type: ignore[assignment]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("default")
                yield path
        finally:
            sys.stderr = old
            for h in moved:
                h.setStream(old)


def _retarget_handlers(old, new) -> list[logging.StreamHandler]:
    """Handlers made before we started (a library imported earlier) still hold the old stderr."""
    moved = []
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for lg in loggers:
        for h in lg.handlers:
            follows_stderr = isinstance(getattr(type(h), "stream", None), property)  # logging.lastResort
            if isinstance(h, logging.StreamHandler) and not follows_stderr and getattr(h, "stream", None) is old:
                h.setStream(new)
                moved.append(h)
    return moved
