"""Context distillation for character training.

A teacher answers each query with the character written into its system prompt; the student
(the same model) answers without it. The pair (teacher, student) is a preference with a fixed
label: training on it moves the behaviour the prompt produced into the weights. A teacher answer
that talks about its instructions or names the traits teaches the wrong lesson, so such answers
are kept on record with the reason and never paired.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import Field, model_validator

from cai.constitution import Constitution
from cai.core.errors import UserError
from cai.core.identity import Source, identity
from cai.core.ids import digest, record_id
from cai.core.stage import StageOutput, Task
from cai.generators.backends.base import BackendConfig
from cai.generators.generation import run_generation, stripped
from cai.generators.records import Query, Response
from cai.generators.responses import ResponseConfig
from cai.generators.templates import render
from cai.generators.types import Chat, Completion, SamplingParams

from .records import Comparison

_META = re.compile(
    r"\b(constitution|system prompt|my (?:instructions|traits|character description)|as instructed|i was told to)\b",
    re.I,
)
QUOTE_WORDS = 7  # a run of this many words copied from the constitution counts as quoting it


class TeacherConfig(BackendConfig):
    """The teacher of context distillation: a model, and optionally its own system prompt.

    By default the teacher is told the constitution (its traits, or its principles). A system-prompt
    patch (a line that fixes a behaviour, "never open with 'Certainly'") can be given instead, as
    text or as a file; distilling it moves the patched behaviour into the weights, so the prompt is
    no longer needed."""

    system_prompt: str | None = Field(None, description="The teacher's system prompt, in place of the constitution.")
    system_prompt_file: Annotated[str | None, Source()] = Field(
        None, description="A file holding the teacher's system prompt (relative to the run config)."
    )

    @model_validator(mode="after")
    def _one_prompt(self) -> TeacherConfig:
        if self.system_prompt is not None and self.system_prompt_file is not None:
            raise ValueError("give system_prompt or system_prompt_file, not both")
        return self

    def prompt(self) -> str | None:
        if self.system_prompt_file is None:
            return self.system_prompt
        try:
            text = Path(self.system_prompt_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"teacher.system_prompt_file: {self.system_prompt_file}: cannot read ({e})") from None
        if not text:
            raise UserError(f"teacher.system_prompt_file: {self.system_prompt_file}: empty")
        return text


def teacher_system_prompt(c: Constitution, given: str | None = None) -> str:
    """The teacher's system prompt: the one given (a patch), else the constitution told as a character
    (its traits) or as its principles."""
    if given is not None:
        return given
    lines = [] if c.traits else [p.comparison or p.critique for p in c.principles]
    return render("cai.critique", "teacher_system.jinja", traits=c.traits, principles=lines)


def _ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z0-9']+", text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def leak_reason(text: str, c: Constitution, names: bool = True, prompt: str | None = None) -> str | None:
    """Why an answer gives its instructions away, or None. `names=False` lets it name a trait
    (introspection is about the traits), while mentions of instructions and quotes still count;
    `prompt`: a system prompt given in place of the constitution, which must not be quoted either."""
    if m := _META.search(text):
        return f"mentions {m.group(0).lower()!r}"
    lowered = text.lower()
    for t in c.traits if names else []:
        if t.id.lower() in lowered or (len(t.id) > 6 and t.id.replace("-", " ").lower() in lowered):
            return f"names the trait {t.id!r}"
    answer = _ngrams(text, QUOTE_WORDS)
    sources = [t.text for t in c.traits] + [x for p in c.principles for x in (p.critique, p.comparison) if x]
    for src in sources:
        if answer & _ngrams(src, QUOTE_WORDS):
            return "quotes the constitution"
    if prompt is not None and answer & _ngrams(prompt, QUOTE_WORDS):
        return "quotes its system prompt"
    return None


def plan_teacher_tasks(
    queries: list[Query], c: Constitution, cfg: ResponseConfig, model: str, seed: int, system: str | None = None
) -> list[Task[Query]]:
    settings = identity(cfg)
    reads = digest(teacher_system_prompt(c, system))  # what the teacher is told: the constitution, or a patch
    out = []
    for q in queries:
        tid = record_id("teacher", q.id, model, settings, seed, reads)
        out.append(Task(tid, q, [tid]))
    return out


@dataclass(frozen=True)
class TeacherAnswering:
    """The teacher answering with the character (or the principles) as its system prompt; an answer
    that gives its instructions away is kept on record with the reason, and never paired."""

    c: Constitution
    cfg: ResponseConfig
    model: str
    system: str

    @property
    def patch(self) -> str | None:
        """The system prompt, where it is a patch given in place of the constitution."""
        return None if self.system == teacher_system_prompt(self.c) else self.system

    @property
    def system_id(self) -> str:
        return f"prompt:{digest(self.patch)}" if self.patch else f"constitution:{self.c.content_hash()}"

    def params(self) -> SamplingParams:
        return self.cfg.sampling()

    def format_input(self, task: Task[Query]) -> Chat:
        return [{"role": "system", "content": self.system}] + list(task.data.messages)

    def format_output(self, task: Task[Query], completions: list[Completion]) -> list[Response]:
        (comp,) = completions
        text, raw = stripped(comp)
        answer = Response(
            id=task.id,
            query_id=task.data.id,
            sample_index=0,
            text=text,
            model=self.model,
            tokens=comp.tokens,
            finish_reason=comp.finish_reason,
            system_prompt_id=self.system_id,
            dropped=leak_reason(text, self.c, prompt=self.patch) or (None if text else "empty"),
            raw=raw,
        )
        return [answer]


def run_teacher_tasks(
    backend, c: Constitution, tasks: list[Task[Query]], cfg: ResponseConfig, seed: int, system: str | None = None
) -> Iterator[tuple[Task, StageOutput]]:
    teacher = TeacherAnswering(c, cfg, backend.model, teacher_system_prompt(c, system))
    return run_generation(backend, teacher, tasks, seed)


def distill_pairs(
    queries: list[Query], teachers: list[Response], students: list[Response], p_chosen: float
) -> list[Comparison]:
    """(teacher, first student sample) per query, labelled without a judge."""
    by_query = {}
    for r in sorted(students, key=lambda r: r.sample_index):
        by_query.setdefault(r.query_id, r)
    teacher = {t.query_id: t for t in teachers if t.dropped is None}
    out = []
    for q in queries:
        t, s = teacher.get(q.id), by_query.get(q.id)
        if t is None or s is None or t.text.strip() == s.text.strip():
            continue
        out.append(
            Comparison(
                id=record_id("comparison", "distill", t.id, s.id, p_chosen),
                query_id=q.id,
                first_id=t.id,
                second_id=s.id,
                kind="distill",
                method="distill",
                principle_ids=q.trait_ids + q.principle_ids,
                judgements=[],
                p_first=p_chosen,
                chosen_id=t.id,
                rejected_id=s.id,
                p_chosen=p_chosen,
                order_consistent=True,
            )
        )
    return out
