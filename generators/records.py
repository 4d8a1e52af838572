"""Records every stage reads and writes, and the work units that produce them.

A record's id hashes the inputs that made it (parent id, sample index, principle ids, the stage's
settings), never the generated text. A rerun therefore knows which ids already exist before it
generates anything, and two shards of one config can never mint the same id.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, Field

from .types import Chat


def record_id(kind: str, *parts: Any) -> str:
    blob = json.dumps([kind, *parts], sort_keys=True, default=str, ensure_ascii=False)
    return f"{kind[0]}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


class Query(BaseModel):
    id: str
    messages: Chat = Field(description="The conversation so far; the last message is the user's.")
    origin: Literal["generated", "seed"]
    principle_ids: list[str] = Field(default_factory=list)
    trait_ids: list[str] = Field(default_factory=list)
    raw: str | None = Field(None, description="The generator's raw output, before parsing.")
    dropped: str | None = Field(None, description="Why the query was not kept (empty, too long, duplicate).")
    tokens: int = 0

    @property
    def text(self) -> str:
        return self.messages[-1]["content"]


class Response(BaseModel):
    id: str
    query_id: str
    sample_index: int
    text: str
    model: str
    tokens: int
    finish_reason: str
    system_prompt_id: str | None = Field(None, description="Set when a system prompt shaped the answer.")
    dropped: str | None = Field(None, description="Why the answer is not used (e.g. it leaks its instructions).")


P = TypeVar("P")


@dataclass(frozen=True)
class QueryTarget:
    """What a generated query is written to test: one principle or one trait, and which try."""

    kind: Literal["principle", "trait"]
    id: str
    index: int


@dataclass(slots=True)
class Task(Generic[P]):
    """One unit of work: its id, its typed input, and the ids of the records it will produce.

    `ready` holds a record that needs no model call (a seed query, a distillation pair): it goes
    through the same skip/append path as generated ones, so resume treats both alike, and the
    pipeline never has to guess from the payload's type which tasks are ready. Slotted: a rerun
    of a million pairs plans a million tasks.
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
    records: list[BaseModel] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    tokens: int = 0

    def fail(self, task: Task, message: str, kind: ErrorKind | None = None) -> None:
        self.errors.append({"task_id": task.id, "error": message, "kind": kind or error_kind(message)})

    def extend(self, other: StageOutput) -> StageOutput:
        self.records += other.records
        self.errors += other.errors
        self.tokens += other.tokens
        return self
