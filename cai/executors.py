"""Where a stage's batches run: in this process, or on a pool of Ray actors across a cluster.

The pipeline alone plans, skips finished work and writes the run directory; an executor only
turns batches of tasks into `StageOutput`s, handing them back in batch order. So ids, resume,
shards and exports do not depend on where the model ran, and a worker that dies costs only the
batch it held. Ray is imported only when a run asks for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console

from cai.core.stage import StageOutput, Task
from cai.generators import BackendConfig, load_backend

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
    """A stage function with all but the backend and the batch bound: what a worker runs.

    Stage functions take `(backend, *before, tasks, *after)`; they are module-level and their
    arguments are plain data, so a call pickles to another process as it is."""

    fn: Callable[..., StageOutput]
    backend: BackendConfig
    before: tuple = ()
    after: tuple = ()

    def __call__(self, backend: Any, tasks: list[Task]) -> StageOutput:
        return self.fn(backend, *self.before, tasks, *self.after)


class Executor(Protocol):
    def map(self, call: StageCall, batches: list[list[Task]]) -> Iterator[tuple[list[Task], Outcome]]:
        """Each batch with its output, or the exception that ended it, in batch order."""

    def close(self) -> None: ...


class LocalExecutor:
    """Today's path: each batch in this process, backends loaded once and kept."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console()
        self._backends: dict[str, Any] = {}

    def backend(self, bc: BackendConfig) -> Any:
        key = bc.model_dump_json()
        if key not in self._backends:
            self.console.print(f"loading {bc.backend} backend: {bc.model}")
            self._backends[key] = load_backend(bc)
        return self._backends[key]

    def map(self, call: StageCall, batches: list[list[Task]]) -> Iterator[tuple[list[Task], Outcome]]:
        for batch in batches:
            if not batch:
                yield batch, StageOutput()
                continue
            backend = self.backend(call.backend)  # a load error ends the run, it is no batch's failure
            try:
                out = call(backend, batch)
            except Exception as e:
                yield batch, e
            else:
                yield batch, out

    def close(self) -> None:
        for b in self._backends.values():
            b.close()
        self._backends.clear()


def make_executor(cfg: ExecutorConfig, console: Console | None = None) -> Executor:
    if cfg.kind == "ray":
        from .ray_executor import RayExecutor

        return RayExecutor(cfg, console)
    return LocalExecutor(console)
