"""Model work for the page, off the request thread.

The models load on first use and run on one worker thread (a backend is not made for two
callers at once); the page's other requests never wait for them. Each job reports its steps as
events that the HTTP response streams to the browser as they come. When the browser goes away
the job stops at its next step.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cai.core.errors import UserError

log = logging.getLogger("cai.studio")

Emit = Callable[[dict], None]


class Stopped(Exception):
    """The browser that asked for this job is gone."""


def sse(event: dict) -> bytes:
    return f"event: {event.get('event', 'message')}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n".encode()


class Models:
    """The policy and feedback backends, loaded once, used by one job at a time."""

    def __init__(self, policy, feedback=None, cache_dir: Path | None = None):
        self.policy_cfg, self.feedback_cfg = policy, feedback
        self.cache_dir = cache_dir  # reading cache folder; None: the user's cache, cai/readings
        self._policy = self._feedback = None
        self.reading_cache = None  # opened by the first job that ranks (see jobs.py)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cai-studio-model")
        self._busy = 0  # jobs handed to the worker and not finished
        self._closing = threading.Event()
        self._lock = threading.Lock()

    def describe(self) -> dict:
        fb = self.feedback_cfg or self.policy_cfg
        return {
            "policy": f"{self.policy_cfg.backend}:{self.policy_cfg.model}",
            "feedback": f"{fb.backend}:{fb.model}",
        }

    def backends(self, emit: Emit):
        """(policy, feedback), loading them in the worker thread on first use."""
        from cai.generators import load_backend

        if self._policy is None:
            emit({"event": "status", "message": f"loading {self.policy_cfg.model} ({self.policy_cfg.backend})"})
            self._policy = load_backend(self.policy_cfg)
        if self._feedback is None:
            if self.feedback_cfg is None or self.feedback_cfg == self.policy_cfg:
                self._feedback = self._policy
            else:
                emit({"event": "status", "message": f"loading {self.feedback_cfg.model} ({self.feedback_cfg.backend})"})
                self._feedback = load_backend(self.feedback_cfg)
        return self._policy, self._feedback

    async def stream(self, job: Callable[[Emit], dict]) -> AsyncIterator[bytes]:
        """Run `job(emit)` on the model thread; yield its events, then `done` with its result."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        gone = threading.Event()

        def put(event: dict | None) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:  # the server has stopped its loop: nobody is listening
                gone.set()

        def emit(event: dict) -> None:
            if gone.is_set() or self._closing.is_set():
                raise Stopped
            put(event)

        def run() -> None:
            try:
                if gone.is_set() or self._closing.is_set():
                    return
                put({"event": "done", **job(emit)})
            except Stopped:
                pass
            except UserError as e:
                put({"event": "error", "message": e.problems[0]})
            except Exception as e:  # the page shows it; the server goes on serving
                log.exception("studio job failed")
                put({"event": "error", "message": f"{type(e).__name__}: {e}"})
            finally:
                with self._lock:
                    self._busy -= 1
                put(None)

        with self._lock:
            ahead = self._busy
            self._busy += 1
        submitted = False
        try:
            if ahead:
                yield sse({"event": "status", "message": "waiting for the model (another job is running)"})
            loop.run_in_executor(self._pool, run)
            submitted = True
            while (event := await queue.get()) is not None:
                yield sse(event)
        finally:
            gone.set()
            if not submitted:
                with self._lock:
                    self._busy -= 1

    def close(self, timeout: float = 10.0) -> None:
        """Stop the job in flight at its next step, then close the backends on their own thread."""
        self._closing.set()

        def close_all() -> None:
            if self.reading_cache is not None:
                self.reading_cache.close()
            for b in {id(b): b for b in (self._policy, self._feedback) if b is not None}.values():
                close = getattr(b, "close", None)
                if close is not None:
                    close()

        try:
            self._pool.submit(close_all).result(timeout)
        except Exception:  # a job that does not stop in time: the process is ending anyway
            log.warning("studio: model thread did not stop in %.0f s", timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
