"""Where a stage's tasks run: streamed through a backend in this process, or in chunks on a pool
of Ray actors across a cluster (each actor streaming its chunk through its own backend).

The pipeline alone plans, skips finished work and writes the run directory; an executor only
turns tasks into `StageOutput`s and hands them back as they finish. So ids, resume, shards and
exports do not depend on where the model ran, and a worker that dies costs only what it held.
Ray is imported only when a run asks for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console

from cai.core.stage import StageOutput, Task
from cai.generators import BackendConfig, load_backend
from cai.generators.streaming import collect

Outcome = StageOutput | Exception


class ExecutorConfig(BaseModel):
    """How a run's model calls are spread: `local` (this process) or `ray` (a pool of actors)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["local", "ray"] = Field("local", description="local: this process; ray: actors on a Ray cluster.")
    address: str | None = Field(
        None,
        description="Ray cluster to join: host:port, ray://host:port or auto; unset: RAY_ADDRESS, else a new "
        "local cluster sized to this machine.",
    )
    replicas: int | None = Field(None, ge=1, description="Actors, each holding one backend; unset: as many as fit.")
    resources_per_replica: dict[str, float] | None = Field(
        None,
        description="Ray resources per actor, e.g. {GPU: 1}; unset: {GPU: tensor_parallel_size} where the cluster "
        "has GPUs, else {CPU: 1}.",
    )
    batch_attempts: int = Field(
        3, ge=1, description="Workers a batch may see die under it before it is recorded as failed."
    )


@dataclass(frozen=True)
class StageCall:
    """A stage function with all but the backend and the tasks bound: what a worker runs.

    Stage functions take `(backend, *before, tasks, *after)` and return each task's output as it
    finishes; they are module-level and their arguments are plain data, so a call pickles to
    another process as it is."""

    fn: Callable[..., Iterator[tuple[Task, StageOutput]]]
    backend: BackendConfig
    before: tuple = ()
    after: tuple = ()
    batch: int | None = None  # the run's batch_size: requests per call where the backend is driven in batches

    def __call__(self, backend: Any, tasks: list[Task]) -> Iterator[tuple[Task, StageOutput]]:
        if self.batch is not None:
            backend.stream_batch = self.batch
        return self.fn(backend, *self.before, tasks, *self.after)

    def whole(self, backend: Any, tasks: list[Task]) -> StageOutput:
        """Every task's output joined: what a worker sends back for a chunk."""
        return collect(self(backend, tasks))


class Executor(Protocol):
    def stream(self, call: StageCall, tasks: list[Task], chunk: int) -> Iterator[tuple[list[Task], Outcome]]:
        """Tasks with their output as they finish (one at a time, or a chunk at a time), or the
        exception that ended the tasks listed with it."""

    def close(self) -> None: ...


class LocalExecutor:
    """In this process: every task streamed through one backend, loaded once and kept."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console()
        self._backends: dict[str, Any] = {}

    def backend(self, bc: BackendConfig) -> Any:
        key = bc.model_dump_json()
        if key not in self._backends:
            self.console.print(f"loading {bc.backend} backend: {bc.model}")
            self._backends[key] = load_backend(bc)
        return self._backends[key]

    def stream(self, call: StageCall, tasks: list[Task], chunk: int) -> Iterator[tuple[list[Task], Outcome]]:
        if not tasks:
            return
        backend = self.backend(call.backend)  # a load error ends the run, it is no task's failure
        left = {t.id: t for t in tasks}
        try:
            for task, out in call(backend, tasks):
                left.pop(task.id, None)
                yield [task], out
        except Exception as e:
            yield list(left.values()), e

    def close(self) -> None:
        for b in self._backends.values():
            b.close()
        self._backends.clear()


def make_executor(cfg: ExecutorConfig, console: Console | None = None) -> Executor:
    if cfg.kind == "ray":
        from .ray_executor import RayExecutor

        return RayExecutor(cfg, console)
    return LocalExecutor(console)
