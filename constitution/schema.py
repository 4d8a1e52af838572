"""The shape of a principle file.

Every model here forbids unknown keys: a typo such as `critque:` must fail loudly instead of
silently dropping the user's principle text. Cross-field rules that pydantic cannot express per
field (duplicate ids, a principle with nothing to do) live in `Constitution`'s validator so that
loading reports them together with the field errors.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, StringConstraints, model_validator

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
    # Set by the constitution that holds the principle: every caller of the ranking core reads
    # a principle's examples from the principle itself, without passing its constitution along.
    _ranking_examples: tuple[ComparisonExample, ...] = PrivateAttr(default=())

    @property
    def ranking_examples(self) -> tuple[ComparisonExample, ...]:
        """The comparison examples a ranking under this principle may show, in the order shown:
        those written for it, then those for every principle."""
        return self._ranking_examples

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


BETTER, WORSE = "(better)", "(worse)"  # how written reasoning names the two replies


class ComparisonExample(_Strict):
    """A ranked pair at the edge of a principle: a conversation, the better and the worse reply.

    A ranking prompt shows its examples with the better reply under (A) in some and under (B) in
    others, so written `reasoning` (shown to a judge that argues first) names the replies as
    `(better)` and `(worse)`; each becomes the letter its reply sits under."""

    principle_id: Ident | None = Field(None, description="The principle it is for; none: every principle.")
    prompt: Text | None = Field(None, description="The user's message (or `messages`, a conversation).")
    messages: list[Message] | None = Field(None, min_length=1)
    better: Text
    worse: Text
    reasoning: Text | None = Field(None, description="The argument a judge that reasons first would write.")

    @model_validator(mode="after")
    def _shape(self) -> ComparisonExample:
        problems = []
        if (self.prompt is None) == (self.messages is None):
            problems.append(Problem((), "an example needs a prompt or messages (one of them)"))
        elif self.messages is not None and self.messages[-1].role != "user":
            problems.append(Problem(("messages",), "an example's conversation must end with the user's message"))
        if self.better == self.worse:
            problems.append(Problem(("worse",), "better and worse are the same reply"))
        if problems:
            raise ConstitutionProblems(problems)
        return self

    @property
    def conversation(self) -> list[dict]:
        """The conversation up to the user's last message, as chat messages."""
        if self.messages is not None:
            return [m.model_dump() for m in self.messages]
        return [{"role": "user", "content": self.prompt}]

    def shown(self, better_letter: str, reasoning: bool) -> dict:
        """The example as a prompt shows it, its better reply under `better_letter` ("A" or "B")."""
        worse_letter = "B" if better_letter == "A" else "A"
        a, b = (self.better, self.worse) if better_letter == "A" else (self.worse, self.better)
        argument = None
        if reasoning and self.reasoning:
            argument = self.reasoning.replace(BETTER, f"({better_letter})").replace(WORSE, f"({worse_letter})")
        return {"messages": self.conversation, "a": a, "b": b, "letter": better_letter, "reasoning": argument}

    def read(self, reasoning: bool) -> dict:
        """What of the example a prompt shows (its text, not its principle or place): what a
        reading's identity hashes."""
        out = {"conversation": self.conversation, "better": self.better, "worse": self.worse}
        return out | ({"reasoning": self.reasoning} if reasoning and self.reasoning else {})


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


MAX_PATTERN = 500  # characters; a probe's pattern is a short phrase, not a program


class Check(_Strict):
    """What a revision or a critique must do: lose a pattern, show one, or earn a yes.

    Patterns are Python regular expressions searched anywhere in the text (`(?i)` ignores case).
    A question goes to the feedback model about the text, read as (A)/(B) letters in both orders;
    the probe passes when P(yes) is above 1/2 by more than the probe's margin."""

    absent: str | None = Field(None, description="A pattern that must not appear (in a revision: must disappear).")
    present: str | None = Field(None, description="A pattern that must appear.")
    question: Text | None = Field(None, description="A yes/no question the feedback model must answer yes.")

    @model_validator(mode="after")
    def _one(self) -> Check:
        given = [k for k in ("absent", "present", "question") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("a check needs exactly one of absent, present or question")
        problems = []
        for k in ("absent", "present"):
            pattern = getattr(self, k)
            if pattern is None:
                continue
            if not pattern or len(pattern) > MAX_PATTERN:
                problems.append(Problem((k,), f"bad pattern: needs 1 to {MAX_PATTERN} characters"))
                continue
            try:
                re.compile(pattern)
            except re.error as e:
                problems.append(Problem((k,), f"bad pattern: {e}"))
        if problems:
            raise ConstitutionProblems(problems)
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("absent", "present", "question") if getattr(self, k) is not None)


ProbeKind = Literal["ranking", "revision", "critique"]
_FIELDS_OF: dict[str, tuple[str, ...]] = {
    "ranking": ("chosen", "rejected"),
    "revision": ("principle", "reply", "expect"),
    "critique": ("principle", "reply", "expect"),
}


class Probe(_Strict):
    """A pinned case: what the model must do with one conversation under one principle.

    - ranking: of two replies, `chosen` must win under `principle` (a principle or a trait; none:
      the whole ranking ensemble), read in both orders, by more than `margin`;
    - revision: `reply` breaks `principle`; its critique and revision, as a run writes them, must
      give a revision that passes `expect`;
    - critique: `reply` carries a planted flaw; the critique under `principle` must pass `expect`.
    """

    id: Ident
    kind: ProbeKind
    principle: Ident | None = Field(None, description="The principle (or trait) it runs under.")
    prompt: Text | None = Field(None, description="The user's message (or `messages`, a conversation).")
    messages: list[Message] | None = Field(None, min_length=1)
    chosen: Text | None = Field(None, description="Ranking: the reply that must win.")
    rejected: Text | None = Field(None, description="Ranking: the reply that must lose.")
    reply: Text | None = Field(None, description="Revision and critique: the reply to critique.")
    expect: Check | None = None
    margin: float = Field(0.0, ge=0, lt=0.5, description="How far above 1/2 the probability must be.")
    note: Text | None = Field(None, description="Why this case matters, for whoever edits the file next.")

    @model_validator(mode="after")
    def _shape(self) -> Probe:
        problems = []
        if (self.prompt is None) == (self.messages is None):
            problems.append(Problem((), "a probe needs a prompt or messages (one of them)"))
        elif self.messages is not None and self.messages[-1].role != "user":
            problems.append(Problem(("messages",), "a probe's conversation must end with the user's message"))
        needed = _FIELDS_OF[self.kind]
        for k in needed:
            if getattr(self, k) is None:
                problems.append(Problem((), f"a {self.kind} probe needs {k}"))
        for k in ("chosen", "rejected", "reply", "expect"):
            if k not in needed and getattr(self, k) is not None:
                problems.append(Problem((k,), f"a {self.kind} probe takes no {k}"))
        if self.kind == "ranking" and self.chosen is not None and self.chosen == self.rejected:
            problems.append(Problem(("rejected",), "chosen and rejected are the same reply"))
        if problems:
            raise ConstitutionProblems(problems)
        return self

    @property
    def conversation(self) -> list[dict]:
        """The conversation up to the user's last message, as chat messages."""
        if self.messages is not None:
            return [m.model_dump() for m in self.messages]
        return [{"role": "user", "content": self.prompt}]


class ProbeFile(_Strict):
    """A sibling NAME.probes.yaml: probes kept beside the principle file they test."""

    probes: list[Probe] = Field(min_length=1)


def probe_problems(c: Constitution, probes: list[Probe], start: int = 0) -> list[Problem]:
    """Probes that name what the constitution lacks. `start` numbers them as they stand in their
    file (a sibling probe file's own list, or the constitution's)."""
    critiques = {p.id: p.critique is not None for p in c.principles}
    return probe_references(critiques, {t.id for t in c.traits}, [(x.kind, x.principle) for x in probes], start)


def probe_references(
    critiques: dict[str, bool], traits: set[str], refs: list[tuple[object, object]], start: int = 0
) -> list[Problem]:
    """Works on plain values (principle id → whether it has a critique; each probe's kind and
    principle) so the loader can run it on raw data even when other fields fail."""
    problems = []
    for i, (kind, pid) in enumerate(refs, start):
        if not isinstance(pid, str) or kind not in _FIELDS_OF:
            continue
        pid, where = pid.strip(), ("probes", i, "principle")
        if kind == "ranking" and pid not in critiques and pid not in traits:
            problems.append(Problem(where, f"no principle or trait has id {pid!r}"))
        elif kind != "ranking" and pid not in critiques:
            problems.append(Problem(where, f"no principle has id {pid!r}"))
        elif kind != "ranking" and not critiques[pid]:
            problems.append(Problem(where, f"principle {pid!r} has no critique and revision for a {kind} probe"))
    return problems


class Constitution(_Strict):
    name: Text
    description: Text | None = None
    version: Text = "1"
    principles: list[Principle] = Field(default_factory=list)
    traits: list[Trait] = Field(default_factory=list)
    few_shot: list[FewShot] = Field(default_factory=list)
    comparison_examples: list[ComparisonExample] = Field(
        default_factory=list, description="Ranked pairs shown to the feedback model before the pair it ranks."
    )
    query_generation: QueryGeneration | None = None
    probes: list[Probe] = Field(default_factory=list, description="Pinned cases `cai constitution test` checks.")

    @model_validator(mode="after")
    def _consistent(self) -> Constitution:
        if not self.principles and not self.traits:
            raise ValueError("a constitution needs at least one principle or trait")
        problems = duplicate_ids(
            {
                "principles": [p.id for p in self.principles],
                "traits": [t.id for t in self.traits],
                "probes": [x.id for x in self.probes],
            }
        )
        known = {p.id for p in self.principles}
        for i, ex in enumerate(self.few_shot):
            if ex.principle_id is not None and ex.principle_id not in known:
                problems.append(Problem(("few_shot", i, "principle_id"), f"no principle has id {ex.principle_id!r}"))
        for i, ex in enumerate(self.comparison_examples):
            if ex.principle_id is not None and ex.principle_id not in known:
                where = ("comparison_examples", i, "principle_id")
                problems.append(Problem(where, f"no principle has id {ex.principle_id!r}"))
        problems += probe_problems(self, self.probes)
        if problems:
            raise ConstitutionProblems(problems)
        self._attach_examples()
        return self

    def _attach_examples(self) -> None:
        """Hand each principle the comparison examples it reads. A principle given by another
        constitution is copied first, never changed where that one holds it."""
        shared = tuple(e for e in self.comparison_examples if e.principle_id is None)
        for i, p in enumerate(self.principles):
            own = tuple(e for e in self.comparison_examples if e.principle_id == p.id) + shared
            if p.ranking_examples != own:
                p = p.model_copy()
                p._ranking_examples = own
                self.principles[i] = p

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
        """A hash of the meaning, not the formatting: comments and key order do not change it.

        Probes are left out: they are tests of the constitution, read by `cai constitution test`
        alone, and no stage reads them. Record ids and run versions hash this, so adding or
        editing a probe must not make a run's records look stale, nor a file without probes hash
        differently from before probes existed. Comparison examples are left out while there are
        none, for the same reason."""
        leave_out = {"probes"} | ({"comparison_examples"} if not self.comparison_examples else set())
        blob = json.dumps(self.model_dump(mode="json", exclude=leave_out), sort_keys=True, ensure_ascii=False)
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
