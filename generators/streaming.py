"""Keeping an engine busy: every pending request goes to the backend, results come back as they finish.

Handing a backend a batch and waiting for the slowest answer in it leaves a GPU mostly idle: vLLM's
throughput grows with the sequences in flight up to hundreds, and inside a batch the finished rows
wait for the longest. So a stage is written as one small coroutine per task (`TaskSteps`): it
yields the requests it needs next (an answer, a critique, a pair's letter readings) and receives
their results; `drive` feeds the requests of every task to the backend's stream and advances each
task the moment its own requests are back, handing finished tasks out in the order they finish.

A backend streams through its engine where it has one: vLLM's request queue (add requests, step,
collect what finished), the OpenAI backend's whole concurrency window. One without (transformers,
or a backend a user registered) is driven by `batched_stream`: what is ready, up to a batch, in one
call, then the next; a finished row is not refilled mid-batch there, the batch is the unit.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from cai.core.stage import ErrorKind, StageOutput, Task, error_kind

from .types import ChoiceScores, Completion, Prompt, SamplingParams


@dataclass(frozen=True)
class Request:
    """One model call: `n` completions of a prompt, or the log-probs of `choices` after it."""

    prompt: Prompt
    params: SamplingParams | None = None
    choices: tuple[str, ...] | None = None
    seed: int | None = None

    @property
    def kind(self) -> str:
        return "choices" if self.choices is not None else "generate"

    def failed(self, message: str) -> Result:
        if self.choices is not None:
            return ChoiceScores(error=message)
        n = self.params.n if self.params is not None else 1
        return [Completion.failed(message) for _ in range(n)]


Result = list[Completion] | ChoiceScores
# A task's steps: yields the requests it needs next, receives their results in the same order,
# returns what the task made (a stage's records, a pair's readings) or raises TaskFailed.
TaskSteps = Generator[list[Request], list[Result], Any]


class TaskFailed(Exception):
    """A task that cannot be done: its error is recorded, the rest of the stage goes on."""

    def __init__(self, message: str, kind: ErrorKind | None = None):
        super().__init__(message)
        self.message, self.kind = message, kind or error_kind(message)


class Feed:
    """Requests ready for the engine, keyed. When the engine asks for more than is queued, `refill`
    starts more tasks, so tasks begin as the engine has room for them and no sooner."""

    def __init__(self, refill: Callable[[int], None]):
        self._queue: deque[tuple[Any, Request]] = deque()
        self._refill = refill

    def put(self, key: Any, request: Request) -> None:
        self._queue.append((key, request))

    def take(self, n: int) -> list[tuple[Any, Request]]:
        if len(self._queue) < n:
            self._refill(n - len(self._queue))
        return [self._queue.popleft() for _ in range(min(n, len(self._queue)))]

    def __len__(self) -> int:
        return len(self._queue)


def _group_key(r: Request) -> tuple:
    if r.choices is not None:
        return ("choices", r.choices)
    return ("generate", r.params.model_dump_json(exclude={"seed"}) if r.params else "")


def batched_stream(backend, feed: Feed, batch_size: int) -> Iterator[tuple[Any, Result]]:
    """A backend with no engine queue: what is ready, up to `batch_size`, one call per kind of
    request (answers with the same settings, or the same choices), results in the order of the call.
    A call that raises (out of memory, a lost connection) fails its requests, not the stage."""
    from .generation import call_generate

    while True:
        items = feed.take(batch_size)
        if not items:
            return
        groups: dict[tuple, list[tuple[Any, Request]]] = {}
        for key, r in items:
            groups.setdefault(_group_key(r), []).append((key, r))
        for group in groups.values():
            prompts = [r.prompt for _, r in group]
            first = group[0][1]
            try:
                if first.choices is not None:
                    results = backend.choice_logprobs(prompts, list(first.choices))
                else:
                    results = call_generate(backend, prompts, first.params, [r.seed for _, r in group])
            except Exception as e:  # noqa: BLE001 - a call-wide failure is each request's failure
                message = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                results = [r.failed(message) for _, r in group]
            yield from ((key, res) for (key, _), res in zip(group, results))


def stream_of(backend, feed: Feed, batch_size: int | None = None) -> Iterator[tuple[Any, Result]]:
    """The backend's own stream where it has one, else `batched_stream` at its batch size."""
    if hasattr(backend, "stream"):
        return backend.stream(feed)
    size = batch_size or getattr(backend, "stream_batch", None)  # a run's batch_size, set on its backend
    size = size or getattr(getattr(backend, "options", None), "batch_size", None) or 16
    return batched_stream(backend, feed, size)


@dataclass
class _Active:
    task: Task
    steps: TaskSteps
    results: list[Result | None]
    missing: int


def drive(
    backend, tasks: Iterable[Task], start: Callable[[Task], TaskSteps], batch_size: int | None = None
) -> Iterator[tuple[Task, Any]]:
    """Run every task's steps through the backend's stream; each task's result (what its steps
    returned, or the `TaskFailed` that ended them) as soon as it is done."""
    pending = iter(tasks)
    active: dict[str, _Active] = {}
    finished: deque[tuple[Task, Any]] = deque()

    def advance(a: _Active, sent: list[Result] | None) -> None:
        while True:
            try:
                requests = a.steps.send(sent)
            except StopIteration as stop:
                finished.append((a.task, stop.value))
                active.pop(a.task.id, None)
                return
            except TaskFailed as e:
                finished.append((a.task, e))
                active.pop(a.task.id, None)
                return
            if requests:
                break
            sent = []  # nothing to ask: go straight on
        a.results, a.missing = [None] * len(requests), len(requests)
        for j, r in enumerate(requests):
            feed.put((a.task.id, j), r)

    def refill(n: int) -> None:
        while len(feed) < n:
            task = next(pending, None)
            if task is None:
                return
            a = active[task.id] = _Active(task, start(task), [], 0)
            advance(a, None)

    feed = Feed(refill)
    for (tid, j), result in stream_of(backend, feed, batch_size):
        a = active[tid]
        a.results[j] = result
        a.missing -= 1
        if a.missing == 0:
            advance(a, a.results)
        while finished:
            yield finished.popleft()
    refill(1)  # tasks that needed no model at all
    while finished:
        yield finished.popleft()
    if active:
        raise RuntimeError(f"{len(active)} tasks still wait for results the backend never sent")


def stage_stream(
    backend, tasks: Iterable[Task], start: Callable[[Task], TaskSteps], batch_size: int | None = None
) -> Iterator[tuple[Task, StageOutput]]:
    """A stage's tasks through `drive`: each task's output (its records, or its recorded failure)
    as soon as it is done. This is what a stage function returns."""
    for task, result in drive(backend, tasks, start, batch_size):
        if isinstance(result, TaskFailed):
            out = StageOutput()
            out.fail(task, result.message, result.kind)
            yield task, out
        else:
            yield task, result if result is not None else StageOutput()


def collect(outputs: Iterable[tuple[Task, StageOutput]]) -> StageOutput:
    """A stage's streamed outputs joined into one (for a caller that wants the whole batch back)."""
    out = StageOutput()
    for _, part in outputs:
        out.extend(part)
    return out
