"""A stage's batches on a pool of Ray actors, each holding one backend, for runs past one machine.

Ray places the actors (one per GPU or tensor-parallel group, or per CPU core) and restarts one
whose process dies (`max_restarts`); the driver keeps each replica busy with one batch, gets the
outputs back with `ray.wait` and hands them to the pipeline in batch order, which alone writes the
run directory. What Ray does not do by itself is move a batch lost with its worker to another
replica, nor give up on a batch that kills every worker it touches: a batch goes back to the
front of the line, to a replica it has not died on, until it has seen `batch_attempts` workers
die; then its tasks are recorded as failed and the stage goes on. A replica killed for good
(`ray.kill`) is replaced by a new one.

Only this module imports Ray, and only when a run asks for it (`cai run --ray`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from cai.core.errors import UserError
from cai.core.stage import StageOutput, Task
from cai.generators import BackendConfig, load_backend

from .executors import ExecutorConfig, Outcome, StageCall
from .logs import _PROGRESS_ENV, VERBOSE

STUCK_NOTICE_S = 30.0  # say once why nothing runs when no replica could be placed in this long


class Replica:
    """One actor's state: a backend, built on first use and again after a restart."""

    def __init__(self, bc: BackendConfig):
        for k, v in _PROGRESS_ENV.items():
            os.environ.setdefault(k, v)
        self.config = bc
        self.backend: Any = None

    def ready(self) -> dict:
        if self.backend is None:
            self.backend = load_backend(self.config)
        return {"pid": os.getpid(), "host": os.uname().nodename}

    def run(self, call: StageCall, tasks: list[Task]) -> StageOutput:
        self.ready()
        return call.whole(self.backend, tasks)  # the chunk streamed through this replica's backend


@dataclass
class _Pool:
    key: str
    bc: BackendConfig
    need: dict[str, float]
    options: dict
    size: int
    actors: dict[str, Any] = field(default_factory=dict)  # name → handle, while not dead for good
    idle: list[str] = field(default_factory=list)
    starting: dict[Any, str] = field(default_factory=dict)  # ready() ping → name
    ever_ready: bool = False


@dataclass
class _Batches:
    """One `map`'s bookkeeping: what waits, what came back, which replicas each batch saw die."""

    count: int
    window: int
    pending: deque[int]
    results: dict[int, Outcome]
    attempts: list[int]
    died_on: list[set[str]]
    next_out: int = 0

    @classmethod
    def of(cls, batches: list[list[Task]], window: int) -> _Batches:
        b = cls(len(batches), window, deque(), {}, [0] * len(batches), [set() for _ in batches])
        for i, batch in enumerate(batches):
            if batch:
                b.pending.append(i)
            else:
                b.results[i] = StageOutput()  # nothing for a model: no trip to a replica
        return b

    def take(self, replica: str, live: set[str]) -> int | None:
        """The next batch for `replica`: not one that died on it while another live replica may take
        it, and not further ahead of the writer than the window, so a killed driver loses little."""
        for i in self.pending:
            if i >= self.next_out + self.window:
                return None
            if replica not in self.died_on[i] or not (live - self.died_on[i]):
                self.pending.remove(i)
                return i
        return None


def first_line(e: BaseException) -> str:
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    return lines[0] if lines else type(e).__name__


def _cause(e: Exception) -> Exception:
    """The exception a stage function raised on a worker, with the worker's traceback as a note."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, Exception):
        cause.add_note(str(e))
        return cause
    return e


def default_resources(bc: BackendConfig, total: dict[str, float]) -> dict[str, float]:
    """A GPU per replica (a tensor- and pipeline-parallel group's worth for vLLM) where the cluster has
    GPUs and the model runs here; otherwise one CPU core."""
    if total.get("GPU", 0) > 0 and bc.backend != "openai":
        opts = bc.options
        return {"GPU": float(opts.get("tensor_parallel_size", 1) * opts.get("pipeline_parallel_size", 1))}
    return {"CPU": 1.0}


def actor_options(need: dict[str, float]) -> dict:
    rest = dict(need)
    opts: dict[str, Any] = {"num_cpus": rest.pop("CPU", 1.0), "num_gpus": rest.pop("GPU", 0.0)}
    if "memory" in rest:
        opts["memory"] = rest.pop("memory")
    if rest:
        opts["resources"] = rest
    return opts


def fit(opts: dict, total: dict[str, float]) -> int:
    """How many replicas the cluster holds at once, counting every resource one needs."""
    need = {"CPU": opts["num_cpus"], "GPU": opts["num_gpus"], **opts.get("resources", {})}
    if "memory" in opts:
        need["memory"] = opts["memory"]
    counts = [int(total.get(k, 0) // v) for k, v in need.items() if v > 0]
    return max(1, min(counts)) if counts else 1


def _describe(resources: dict[str, float]) -> str:
    shown = {
        k: v for k, v in resources.items() if k in ("CPU", "GPU") or not k.startswith(("node:", "memory", "object"))
    }
    return ", ".join(f"{v:g} {k}" for k, v in sorted(shown.items())) or "nothing"


def _probe(address: str) -> None:
    """Fail in a second on an address nothing listens at: Ray itself retries for minutes."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--ray {address}: expected host:port, ray://host:port or auto")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise UserError(
            f"--ray {address}: no Ray cluster there ({e.strerror or e}); start one with `ray start --head`, "
            "or give no address for a local one"
        ) from None


def _route_worker_output_to_stderr(worker_module: Any) -> None:
    """Ray prints its workers' lines and its own notices (a worker died, ...) to the driver's stdout,
    where cai's progress bars are; send them to stderr, which a run points at its cai.log."""
    original = getattr(worker_module, "print_worker_logs", None)
    if original is None or getattr(original, "_to_stderr", False):
        return

    def to_stderr(data: dict, print_file: Any, ignore_prefix: bool = False) -> None:
        original(data, sys.stderr, ignore_prefix)

    to_stderr._to_stderr = True  # type: ignore[attr-defined]
    worker_module.print_worker_logs = to_stderr


class RayExecutor:
    def __init__(self, cfg: ExecutorConfig, console: Console | None = None):
        self.cfg = cfg
        self.console = console or Console()
        self._ray: Any = None
        self._started = False  # this process started the cluster (or connected), so it shuts it down
        self._pool: _Pool | None = None

    # -- the cluster -------------------------------------------------------------------------------

    def connect(self) -> Any:
        if self._ray is not None:
            return self._ray
        try:
            import ray
        except ImportError:
            raise UserError("--ray: Ray is not installed here; install it with pip install 'cai[ray]'") from None
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        verbose = VERBOSE["on"]
        if not verbose:
            _route_worker_output_to_stderr(ray._private.worker)
        if ray.is_initialized():
            where = "the Ray cluster this process is connected to"
        else:
            address = self.cfg.address or os.environ.get("RAY_ADDRESS") or "local"
            kwargs: dict[str, Any] = {"log_to_driver": True, "configure_logging": verbose}
            if address == "local":
                kwargs["include_dashboard"] = False
            elif address != "auto":
                _probe(address)
            try:
                ray.init(address=address, **kwargs)
            except (ConnectionError, TimeoutError) as e:
                raise UserError(
                    f"--ray {address}: no Ray cluster reachable there ({first_line(e)}); start one with "
                    "`ray start --head`, or give no address for a local one"
                ) from None
            self._started = True
            where = "a new local Ray cluster" if address == "local" else f"the Ray cluster at {address}"
        self._ray = ray
        self.console.print(f"ray: {where} ({_describe(ray.cluster_resources())})")
        return ray

    # -- replicas ----------------------------------------------------------------------------------

    def _pool_for(self, bc: BackendConfig) -> _Pool:
        key = bc.model_dump_json()
        if self._pool is not None and self._pool.key == key:
            return self._pool
        if self._pool is not None:
            self._kill(self._pool)  # frees its GPUs for the next model
        ray = self._ray
        total = ray.cluster_resources()
        need = self.cfg.resources_per_replica or default_resources(bc, total)
        opts = actor_options(need)
        size = self.cfg.replicas or fit(opts, total)
        pool = _Pool(key, bc, need, opts, size)
        for _ in range(size):
            self._add(pool)
        self.console.print(
            f"ray: {size} replica(s) of {bc.backend}:{bc.model}, each with {_describe(need)}; loading the model"
        )
        self._pool = pool
        return pool

    def _add(self, pool: _Pool) -> str:
        name = f"cai-replica-{uuid.uuid4().hex[:8]}"
        actor_cls = self._ray.remote(Replica).options(name=name, max_restarts=-1, max_task_retries=0, **pool.options)
        handle = actor_cls.remote(pool.bc)
        pool.actors[name] = handle
        pool.starting[handle.ready.remote()] = name
        return name

    def _kill(self, pool: _Pool) -> None:
        for handle in pool.actors.values():
            with contextlib.suppress(Exception):  # already gone
                self._ray.kill(handle)
        pool.actors.clear()
        pool.idle.clear()
        pool.starting.clear()

    def _replica_ready(self, pool: _Pool, ref: Any) -> None:
        ex = self._ray.exceptions
        name = pool.starting.pop(ref)
        try:
            self._ray.get(ref)
        except ex.RayTaskError as e:
            raise _cause(e) from None  # the backend cannot be built there (a missing model, a bad option)
        except getattr(ex, "ActorUnavailableError", ()):
            time.sleep(0.5)  # restarting: ask again
            pool.starting[pool.actors[name].ready.remote()] = name
        except ex.RayActorError as e:
            if getattr(e, "actor_init_failed", False):
                raise
            del pool.actors[name]  # killed for good (ray.kill) or out of restarts: a new one in its place
            new = self._add(pool)
            self.console.print(f"ray: replica {name} is gone ({first_line(e)}); started {new} in its place")
        else:
            pool.idle.append(name)
            pool.ever_ready = True

    # -- batches -----------------------------------------------------------------------------------

    def stream(self, call: StageCall, tasks: list[Task], chunk: int) -> Iterator[tuple[list[Task], Outcome]]:
        """Chunks of the tasks to the replicas, each streamed through the replica's backend."""
        yield from self.map(call, [tasks[k : k + chunk] for k in range(0, len(tasks), chunk)])

    def map(self, call: StageCall, batches: list[list[Task]]) -> Iterator[tuple[list[Task], Outcome]]:
        if not any(batches):
            for batch in batches:
                yield batch, StageOutput()
            return
        ray = self.connect()
        pool = self._pool_for(call.backend)
        b = _Batches.of(batches, window=2 * pool.size)
        call_ref = ray.put(call)
        running: dict[Any, tuple[str, int]] = {}
        since, noticed = time.monotonic(), False
        try:
            while True:
                while b.next_out in b.results:
                    i = b.next_out
                    b.next_out += 1
                    yield batches[i], b.results.pop(i)
                if b.next_out >= b.count:
                    return
                live = set(pool.actors)
                for name in list(pool.idle):
                    i = b.take(name, live)
                    if i is not None:
                        pool.idle.remove(name)
                        running[pool.actors[name].run.remote(call_ref, batches[i])] = (name, i)
                refs = [*running, *pool.starting]
                if not refs:
                    raise RuntimeError("ray: no replica left to run on")
                ready, _ = ray.wait(refs, num_returns=1, timeout=5.0)
                if not ready:
                    if not pool.ever_ready and not noticed and time.monotonic() - since > STUCK_NOTICE_S:
                        noticed = True
                        self.console.print(
                            f"ray: waiting for the cluster to place replicas ({_describe(pool.need)} "
                            f"each; free now: {_describe(ray.available_resources())})"
                        )
                    continue
                if ready[0] in pool.starting:
                    self._replica_ready(pool, ready[0])
                else:
                    name, i = running.pop(ready[0])
                    self._batch_done(pool, b, name, i, ready[0], batches[i])
        finally:
            for ref in running:
                with contextlib.suppress(Exception):
                    ray.cancel(ref)

    def _batch_done(self, pool: _Pool, b: _Batches, name: str, i: int, ref: Any, batch: list[Task]) -> None:
        ex = self._ray.exceptions
        lost = (ex.RayActorError, ex.WorkerCrashedError, ex.NodeDiedError, ex.OutOfMemoryError, ex.ObjectLostError)
        try:
            b.results[i] = self._ray.get(ref)
        except ex.RayTaskError as e:
            b.results[i] = _cause(e)  # the stage raised there as it would here: the pipeline decides
        except lost as e:
            b.attempts[i] += 1
            b.died_on[i].add(name)
            reason = f"{type(e).__name__}: {first_line(e)}"
            if b.attempts[i] >= self.cfg.batch_attempts:
                b.results[i] = StageOutput()
                for t in batch:
                    b.results[i].fail(
                        t, f"{b.attempts[i]} workers died running this batch (last: {reason})", "permanent"
                    )
                self.console.print(f"ray: a batch of {len(batch)} killed {b.attempts[i]} workers; recorded as failed")
            else:
                b.pending.appendleft(i)
                self.console.print(f"ray: replica {name} was lost running a batch ({reason}); retrying it elsewhere")
            if name in pool.actors:
                pool.starting[pool.actors[name].ready.remote()] = name  # back once Ray has restarted it
            return
        pool.idle.append(name)

    def close(self) -> None:
        if self._pool is not None:
            self._kill(self._pool)
            self._pool = None
        if self._started and self._ray is not None:
            self._ray.shutdown()
        self._ray, self._started = None, False
