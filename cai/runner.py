"""Running one planned stage: its tasks streamed through the executor, records appended in groups.

The pipeline decides what a stage has to do (`Step`, a pure plan the dry run prints as it is);
this module only does it: hands every task to the executor at once, writes what finishes in
small groups (each one append), keeps the stage's manifest entry current (so `cai status`
elsewhere sees a consistent stage), and shows one progress bar.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rich.console import Console

from cai.core.progress import progress
from cai.core.stage import StageOutput, Task

from .executors import Executor
from .stages import Stage, StagePlan
from .store import RunStore


def first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else ""


def transient_exception(e: BaseException) -> bool:
    """A batch-wide failure that may pass: out of memory, a lost connection, a timeout."""
    if isinstance(e, (MemoryError, ConnectionError, TimeoutError)):
        return True
    return type(e).__name__ == "OutOfMemoryError" or "out of memory" in str(e).lower()


@dataclass
class StageStats:
    stage: str
    records: int = 0
    new: int = 0
    tokens: int = 0
    seconds: float = 0.0
    errors: int = 0
    read: int = 0  # letters asked of the feedback model (comparisons)
    reused: int = 0  # letters taken from earlier records instead


@dataclass
class PlanRow:
    """What a run will do to one stage, known before any model is loaded (`cai run --dry-run`)."""

    stage: str
    planned: int  # records the current config wants
    kept: int  # of those, already on disk (or brought back from superseded/)
    aside: int  # records on disk the current config does not want: moved to superseded/
    todo: int  # tasks to run
    failed: int  # failed tasks left alone (permanent, or out of retries)
    after_upstream: bool = False  # an earlier stage has work to do, so this stage will have more
    readings: tuple[int, int] | None = None  # comparisons: (letters to read, letters reused)


@dataclass
class Step:
    """A stage's plan against what is on disk: what to keep, move aside, take back and run."""

    stage: Stage
    plan: StagePlan
    identity: str
    version: int
    done: set[str]  # ids on disk that the config wants, once moved and restored
    move: set[str]  # ids on disk the config no longer wants
    restore: set[str]  # wanted ids found in superseded/
    failures: dict[str, dict]
    pending: list[Task]  # tasks with an output missing
    todo: list[Task]  # of those, the ones to run now (the rest failed for good)
    readings: tuple[int, int] | None = None
    wanted: set[str] = field(default_factory=set)

    def row(self, after_upstream: bool) -> PlanRow:
        kept = len(self.done & self.wanted)
        return PlanRow(
            self.stage.name,
            len(self.wanted),
            kept,
            len(self.move),
            len(self.todo),
            len(self.pending) - len(self.todo),
            after_upstream,
            self.readings,
        )


class StageRunner:
    """Streams a stage's tasks through the executor and writes what comes back in small groups: at
    `write_every` records or after `write_seconds`, whichever comes first. A kill loses only what
    was in flight or not yet written; a resume redoes exactly that."""

    def __init__(
        self,
        store: RunStore,
        executor: Executor,
        console: Console,
        batch_size: int | None,
        write_every: int = 64,
        write_seconds: float = 10.0,
    ):
        self.store = store
        self.executor = executor
        self.console = console
        self.chunk = batch_size or 256  # tasks a Ray replica streams at a time
        self.write_every, self.write_seconds = write_every, write_seconds

    def run(self, step: Step) -> StageStats:
        t0 = time.perf_counter()
        name = step.stage.name
        before = self.store.manifest()["stages"].get(name, {})
        stats = StageStats(name, records=len(step.done))
        base = (before.get("tokens", 0), before.get("seconds", 0.0))
        closed = {t.id for t in step.plan.tasks if t.id in step.failures and self._finished(t, step.done)}
        self._manifest(step, stats, closed, base, 0.0, "running" if step.todo else "done")
        ready = [t for t in step.todo if t.ready is not None]
        model = [t for t in step.todo if t.ready is None]
        with progress(name, self.console, disable=not step.todo) as bar:
            task = bar.add_task(name, total=len(step.todo), note="0 tok")
            group: list[tuple[list[Task], StageOutput]] = []
            last = time.monotonic()

            def flush() -> None:
                nonlocal last
                if group:
                    tasks = [t for ts, _ in group for t in ts]
                    self._write(step, tasks, StageOutput().extend_all(out for _, out in group), stats, closed)
                    bar.update(task, advance=len(tasks), note=f"{stats.tokens} tok")
                    self._manifest(step, stats, closed, base, time.perf_counter() - t0, "running")
                    group.clear()
                last = time.monotonic()

            if ready:
                group.append((ready, StageOutput(records=[t.ready for t in ready])))
                flush()
            outcomes = self.executor.stream(step.plan.call, model, self.chunk) if model else iter(())
            for tasks, outcome in outcomes:
                group.append((tasks, self._result(tasks, outcome)))
                size = sum(len(ts) for ts, _ in group)
                if size >= self.write_every or time.monotonic() - last >= self.write_seconds:
                    flush()
            flush()
        stats.records = len(step.done)
        stats.seconds = time.perf_counter() - t0
        self._manifest(step, stats, closed, base, stats.seconds if step.todo else 0.0, "done")
        return stats

    @staticmethod
    def _finished(t: Task, done: set[str]) -> bool:
        return all(o in done for o in t.outputs)

    @staticmethod
    def _result(tasks: list[Task], outcome) -> StageOutput:
        if not isinstance(outcome, Exception):
            return outcome
        if not transient_exception(outcome):
            raise outcome
        result = StageOutput()
        for t in tasks:  # what was in flight when the engine failed; a rerun tries it again
            result.fail(t, f"{type(outcome).__name__}: {first_line(outcome)}", "transient")
        return result

    def _write(self, step: Step, batch: list[Task], result: StageOutput, stats: StageStats, closed: set) -> None:
        if step.plan.check is not None:
            step.plan.check(result)
        fresh = [r for r in result.records if r.id not in step.done]  # a task may have had some outputs
        for e in result.errors:
            e["attempt"] = step.failures.get(e["task_id"], {}).get("attempts", 0) + 1
        name = step.stage.name
        self.store.append(name, fresh)
        self.store.append_errors(name, result.errors)
        step.done.update(r.id for r in fresh)
        closed.update(t.id for t in batch if self._finished(t, step.done))
        stats.new += len(fresh)
        stats.tokens += result.tokens
        stats.errors += len(result.errors)
        stats.read += result.read
        stats.reused += result.reused

    def _manifest(self, step: Step, stats: StageStats, closed: set, base: tuple, seconds: float, state: str) -> None:
        open_failures = {k: f for k, f in self.store.failures(step.stage.name).items() if k not in closed}
        kinds: dict[str, int] = {}
        for f in open_failures.values():
            kinds[f["kind"]] = kinds.get(f["kind"], 0) + 1
        self.store.update_manifest(
            step.stage.name,
            records=len(step.done),
            planned=len(step.wanted),
            tokens=base[0] + stats.tokens,
            seconds=round(base[1] + seconds, 3),
            errors=len(open_failures),
            errors_by_kind=kinds,
            config_version=step.version,
            identity=step.identity,
            state=state,
        )
