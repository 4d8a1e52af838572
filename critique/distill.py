"""Context distillation for character training.

A teacher answers each query with the character written into its system prompt; the student
(the same model) answers without it. The pair (teacher, student) is a preference with a fixed
label: training on it moves the behaviour the prompt produced into the weights. A teacher answer
that talks about its instructions or names the traits teaches the wrong lesson, so such answers
are kept on record with the reason and never paired.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cai.constitution import Constitution
from cai.core.identity import identity
from cai.core.ids import digest, record_id
from cai.core.stage import StageOutput, Task
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


def teacher_system_prompt(c: Constitution) -> str:
    # A character constitution is described by its traits; otherwise its principles say it.
    lines = [] if c.traits else [p.comparison or p.critique for p in c.principles]
    return render("cai.critique", "teacher_system.jinja", traits=c.traits, principles=lines)


def _ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z0-9']+", text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def leak_reason(text: str, c: Constitution, names: bool = True) -> str | None:
    """Why an answer gives its instructions away, or None. `names=False` lets it name a trait
    (introspection is about the traits), while mentions of instructions and quotes still count."""
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
    return None


def plan_teacher_tasks(
    queries: list[Query], c: Constitution, cfg: ResponseConfig, model: str, seed: int
) -> list[Task[Query]]:
    settings = identity(cfg)
    reads = digest(teacher_system_prompt(c))  # the teacher reads the constitution as its system prompt
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
            system_prompt_id=f"constitution:{self.c.content_hash()}",
            dropped=leak_reason(text, self.c) or (None if text else "empty"),
            raw=raw,
        )
        return [answer]


def run_teacher_tasks(
    backend, c: Constitution, tasks: list[Task[Query]], cfg: ResponseConfig, seed: int
) -> StageOutput:
    if not tasks:
        return StageOutput()
    teacher = TeacherAnswering(c, cfg, backend.model, teacher_system_prompt(c))
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
