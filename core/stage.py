"""The stage protocol: a unit of work, what a batch of work gives back, and how a failure is classed.

A stage is a plain function from a batch of tasks to a `StageOutput`; it does no file I/O, so the
run store alone decides what is done, and resume, shards and executors never depend on which
stage ran. A failed item is a value (an error with its kind), never an exception that sinks the
batch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel

P = TypeVar("P")


@dataclass(slots=True)
class Task(Generic[P]):
    """One unit of work: its id, its typed input, and the ids of the records it will produce.

    `ready` holds a record that needs no model call (a seed query, a distillation pair): it goes
    through the same skip/append path as generated ones, so resume treats both alike, and the
    pipeline never has to guess from the payload's type which tasks are ready.
    Slotted: a rerun of a million pairs plans a million tasks.
    """

    id: str
    data: P
    outputs: list[str]
    ready: BaseModel | None = None


ErrorKind = Literal["transient", "permanent"]

# Failures that the same request will meet again, whatever the server's state: retrying wastes time.
_PERMANENT = re.compile(
    r"the model's context is|could not render prompt|did not report the log-prob|HTTP 4(?!08|09|29)\d\d|"
    r"not a valid|validation",
    re.IGNORECASE,
)


def error_kind(message: str) -> ErrorKind:
    """Whether a task's error may pass (a server down, a timeout, 429/5xx, out of memory) or will
    repeat (a prompt longer than the context, a request the server rejects as malformed).
    Unknown errors count as transient: a rerun tries them again, up to the run's retry limit."""
    return "permanent" if _PERMANENT.search(message) else "transient"


@dataclass
class StageOutput:
    """A batch's records and failed items, and what it cost: tokens, and for a stage that reads
    letters, the readings asked of the model (`read`) and those taken from earlier records (`reused`)."""

    records: list[BaseModel] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    tokens: int = 0
    read: int = 0
    reused: int = 0

    def fail(self, task: Task, message: str, kind: ErrorKind | None = None) -> None:
        self.errors.append({"task_id": task.id, "error": message, "kind": kind or error_kind(message)})

    def extend_all(self, others) -> StageOutput:
        for other in others:
            self.extend(other)
        return self

    def extend(self, other: StageOutput) -> StageOutput:
        self.records += other.records
        self.errors += other.errors
        self.tokens += other.tokens
        self.read += other.read
        self.reused += other.reused
        return self
