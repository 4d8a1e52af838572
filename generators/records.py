"""Records the generating stages write, and the payloads of their tasks.

A record's id hashes the inputs that made it (parent id, sample index, principle ids, the stage's
settings), never the generated text (see `cai.core.ids`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from cai.core.ids import record_id
from cai.core.stage import ErrorKind, StageOutput, Task, error_kind

from .types import Chat

__all__ = [
    "ErrorKind",
    "Query",
    "QueryTarget",
    "Response",
    "StageOutput",
    "Task",
    "error_kind",
    "record_id",
]


class Query(BaseModel):
    id: str
    messages: Chat = Field(description="The conversation so far; the last message is the user's.")
    origin: Literal["generated", "seed", "turn"]
    principle_ids: list[str] = Field(default_factory=list)
    trait_ids: list[str] = Field(default_factory=list)
    raw: str | None = Field(None, description="The generator's raw output, before parsing.")
    dropped: str | None = Field(None, description="Why the query was not kept (empty, too long, duplicate).")
    tokens: int = 0
    parent_id: str | None = Field(None, description="A follow-up turn: the record it continues.")
    turn: int | None = Field(None, description="A follow-up turn: how many user turns the conversation now holds.")

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
    raw: str | None = Field(None, description="The model's output as written, where it differs from `text`.")


@dataclass(frozen=True)
class QueryTarget:
    """What a generated query is written to test: one principle or one trait, and which try."""

    kind: Literal["principle", "trait"]
    id: str
    index: int
