"""RL-CAI feedback: the comparisons stage, which ranks two answers to the same query.

Planning turns each query's sampled answers (and its initial-vs-revised pairs) into tasks whose
ids hash their inputs and the stage's settings; running a batch hands the pairs to the reading
core (critique/reading.py: k sampled principles, both orders, log-prob, CoT or parsed letters)
and turns its readings into `Comparison` records with the soft label `p_chosen`.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Literal

from pydantic import Field

from cai.constitution import Constitution, Principle, Trait
from cai.generators.records import Query, StageOutput, Task, record_id

from .reading import PairToRead, ReadingConfig, read_pairs
from .records import Comparison


class ComparisonConfig(ReadingConfig):
    """The comparisons stage: how pairs are read (`ReadingConfig`) and which pairs there are."""

    mode: Literal["rank", "distill", "both"] = Field(
        "rank", description="Pairs by ranking samples, by context distillation (teacher vs student), or both."
    )
    distill_p_chosen: float = Field(1.0, ge=0.5, le=1, description="Soft label of a (teacher, student) pair.")
    pairs: Literal["adjacent", "all"] = Field("all", description="Which sample pairs of a query to rank.")
    initial_vs_revised: bool = Field(True, description="Also rank each initial answer against its final revision.")
    constitution: str | None = Field(
        None, description="Rank under another principle file (e.g. hhh); default: the run's."
    )


class Candidate:
    """One answer of a pair: its id and its text, or where to read the text.

    A rerun plans every pair again to find the ones left, and needs only their ids for that. A
    candidate of a run's answers holds a reference (anything with a `.text`, such as the run's
    `AnswerRef`) or a function, and reads its text the first time a pair that runs asks for it.
    Pickled (to another process or machine), it carries its text.
    """

    __slots__ = ("id", "_text")

    def __init__(self, id: str, text: str | Callable[[], str] | Any):
        self.id = id
        self._text = text

    @property
    def text(self) -> str:
        if not isinstance(self._text, str):
            self._text = self._text() if callable(self._text) else self._text.text
        return self._text

    def __reduce__(self):
        return (Candidate, (self.id, self.text))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Candidate) and (self.id, self.text) == (other.id, other.text)

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"Candidate(id={self.id!r})"


@dataclass(frozen=True, slots=True)
class PairInput:
    """Two answers to one query, in the order the record names them (first, second)."""

    query: Query
    first: Candidate
    second: Candidate
    kind: str


def trait_principle(t: Trait) -> Principle:
    """A trait read as a ranking principle: its own question, or one asking which reply shows it."""
    q = t.comparison or f"Which reply better shows this trait, without naming it: {t.text}"
    return Principle(id=t.id, comparison=q, weight=t.weight, tags=t.tags)


def ranking_principles(c: Constitution) -> list[Principle]:
    """Principles with a comparison question (all of them with a generic question if none has
    one), plus the traits of a character constitution."""
    return (c.comparison_principles or c.principles) + [trait_principle(t) for t in c.traits]


def pool_for(c: Constitution, q: Query) -> list[Principle]:
    """A query written for a trait is ranked on that trait: how well each reply expresses it."""
    own = [trait_principle(t) for t in c.traits if t.id in q.trait_ids]
    return own or ranking_principles(c)


def plan_comparison_tasks(
    groups: list[tuple[Query, list[Candidate], list[tuple[Candidate, Candidate]]]],
    c: Constitution,
    cfg: ComparisonConfig,
    model: str,
    seed: int,
    done: Container[str] = (),
) -> list[Task[PairInput]]:
    """`groups`: per query, its sampled answers and any (initial, revised) pairs.

    A pair of identical answers carries no preference and gets no task. A task id in `done` has
    a record already, so its pair was not identical: its texts are not read to check again."""
    settings = cfg.model_dump()
    chash = c.content_hash()  # hashing the constitution costs ~0.2 ms: once, not per task
    tasks = []
    for q, samples, revised in groups:
        pairs = list(combinations(samples, 2)) if cfg.pairs == "all" else list(zip(samples[::2], samples[1::2]))
        for kind, plist in (("samples", pairs), ("revision", revised if cfg.initial_vs_revised else [])):
            for first, second in plist:
                tid = record_id("comparison", q.id, first.id, second.id, model, settings, seed, chash)
                if tid not in done and first.text.strip() == second.text.strip():
                    continue
                tasks.append(Task(tid, PairInput(q, first, second, kind), [tid]))
    return tasks


def run_comparison_tasks(
    backend, c: Constitution, tasks: list[Task[PairInput]], cfg: ComparisonConfig, seed: int
) -> StageOutput:
    out = StageOutput()
    pairs = [
        PairToRead(t.id, t.data.query.messages, t.data.first.text, t.data.second.text, pool_for(c, t.data.query))
        for t in tasks
    ]
    for t, r in zip(tasks, read_pairs(backend, pairs, cfg, seed)):
        out.tokens += r.tokens
        if r.error is not None:
            out.fail(t, r.error)
            continue
        first, second = t.data.first, t.data.second
        p_first = r.p_first
        chosen, rejected = (first, second) if p_first >= 0.5 else (second, first)
        out.records.append(
            Comparison(
                id=t.id,
                query_id=t.data.query.id,
                first_id=first.id,
                second_id=second.id,
                kind=t.data.kind,
                method=cfg.method,
                principle_ids=sorted({j.principle_id for j in r.judgements}),
                judgements=r.judgements,
                p_first=p_first,
                chosen_id=chosen.id,
                rejected_id=rejected.id,
                p_chosen=max(p_first, 1 - p_first),
                order_consistent=r.order_consistent,
            )
        )
    return out
