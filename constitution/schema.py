"""The shape of a principle file.

Every model here forbids unknown keys: a typo such as `critque:` must fail loudly instead of
silently dropping the user's principle text. Cross-field rules that pydantic cannot express per
field (duplicate ids, a principle with nothing to do) live in `Constitution`'s validator so that
loading reports them together with the field errors.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
Ident = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=80, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: Text


class Principle(_Strict):
    """One rule. `critique`/`revision` drive SL-CAI; `comparison` drives ranking."""

    id: Ident
    critique: Text | None = Field(None, description="Request asking the model to critique an answer.")
    revision: Text | None = Field(None, description="Request asking the model to rewrite the answer.")
    comparison: Text | None = Field(None, description="Question put to the feedback model when ranking two answers.")
    weight: float = Field(1.0, gt=0, description="Relative sampling weight.")
    tags: list[Text] = Field(default_factory=list)

    @model_validator(mode="after")
    def _has_a_use(self) -> Principle:
        if (self.critique is None) != (self.revision is None):
            missing = "revision" if self.revision is None else "critique"
            raise ValueError(
                f"a principle with a {'critique' if missing == 'revision' else 'revision'} needs a {missing} too"
            )
        if self.critique is None and self.comparison is None:
            raise ValueError("a principle needs a critique and revision, a comparison question, or both")
        return self


class FewShot(_Strict):
    """A worked example: a conversation whose last assistant turn is critiqued then revised."""

    messages: list[Message] = Field(min_length=2)
    principle_id: Ident | None = None
    critique: Text
    revision: Text

    @model_validator(mode="after")
    def _ends_with_assistant(self) -> FewShot:
        if self.messages[-1].role != "assistant":
            raise ValueError("the last message of a few-shot conversation must be the assistant's answer")
        return self


class Trait(_Strict):
    """A character trait: what it is and questions that reveal whether a model has it."""

    id: Ident
    text: Text = Field(description="The trait, in the first person or as a description.")
    questions: list[Text] = Field(min_length=1, description="Seed user messages that reveal the trait.")
    comparison: Text | None = None
    weight: float = Field(1.0, gt=0)
    tags: list[Text] = Field(default_factory=list)


class QueryGeneration(_Strict):
    """Guidance for writing new user queries that test the principles or traits."""

    instructions: Text | None = None
    topics: list[Text] = Field(default_factory=list)
    examples: list[Text] = Field(default_factory=list)


class Constitution(_Strict):
    name: Text
    description: Text | None = None
    version: Text = "1"
    principles: list[Principle] = Field(default_factory=list)
    traits: list[Trait] = Field(default_factory=list)
    few_shot: list[FewShot] = Field(default_factory=list)
    query_generation: QueryGeneration | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Constitution:
        if not self.principles and not self.traits:
            raise ValueError("a constitution needs at least one principle or trait")
        problems = duplicate_ids({"principles": [p.id for p in self.principles], "traits": [t.id for t in self.traits]})
        known = {p.id for p in self.principles}
        for i, ex in enumerate(self.few_shot):
            if ex.principle_id is not None and ex.principle_id not in known:
                problems.append(Problem(("few_shot", i, "principle_id"), f"no principle has id {ex.principle_id!r}"))
        if problems:
            raise ConstitutionProblems(problems)
        return self

    def principle(self, pid: str) -> Principle:
        for p in self.principles:
            if p.id == pid:
                return p
        raise KeyError(pid)

    def trait(self, tid: str) -> Trait:
        for t in self.traits:
            if t.id == tid:
                return t
        raise KeyError(tid)

    @property
    def critique_principles(self) -> list[Principle]:
        return [p for p in self.principles if p.critique is not None]

    @property
    def comparison_principles(self) -> list[Principle]:
        return [p for p in self.principles if p.comparison is not None]

    def content_hash(self) -> str:
        """A hash of the meaning, not the formatting: comments and key order do not change it."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Problem:
    """A located problem found outside pydantic's per-field validation."""

    def __init__(self, loc: tuple, msg: str):
        self.loc, self.msg = loc, msg

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Problem) and (self.loc, self.msg) == (other.loc, other.msg)

    def __hash__(self) -> int:
        return hash((self.loc, self.msg))


def duplicate_ids(ids_by_kind: dict[str, list]) -> list[Problem]:
    """Works on plain lists so the loader can run it on raw data even when other fields fail."""
    problems = []
    for kind, ids in ids_by_kind.items():
        first: dict[str, int] = {}
        for i, ident in enumerate(ids):
            if not isinstance(ident, str):
                continue
            key = ident.strip()
            if key in first:
                problems.append(Problem((kind, i, "id"), f"duplicate id {key!r} (first used by {kind}[{first[key]}])"))
            first.setdefault(key, i)
    return problems


class ConstitutionProblems(ValueError):
    """Cross-field problems, each with its own location, carried out of pydantic's validator."""

    def __init__(self, problems: list):
        self.problems = problems
        super().__init__("; ".join(p.msg for p in problems))
