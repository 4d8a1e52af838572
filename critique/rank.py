"""RL-CAI feedback: the comparisons stage, which ranks two answers to the same query.

Planning turns each query's sampled answers (and its initial-vs-revised pairs) into tasks whose
ids hash their inputs and the stage's settings; running a batch hands the pairs to the reading
core (critique/reading.py: k sampled principles, both orders, log-prob, CoT or parsed letters)
and turns its readings into `Comparison` records with the soft label `p_chosen`.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass
from itertools import combinations
from typing import Annotated, Any, Literal

from pydantic import Field

from cai.constitution import Constitution, Principle, Trait
from cai.core.identity import OPERATIONAL, SELECTS, Source, identity
from cai.core.ids import record_id
from cai.core.stage import StageOutput, Task
from cai.generators.records import Query
from cai.generators.streaming import stage_stream

from .reading import PairToRead, ReadingConfig, draw_principles, examples_read, question, read_pair, reading_mode
from .records import Comparison


def _constitution_digest(path: str) -> str:
    """A ranking constitution enters by what it says (comments and key order aside), never by its path."""
    from cai.constitution import load_constitution

    try:
        return load_constitution(path).content_hash()
    except Exception:  # a file that does not load is reported where it is loaded; here it is just different
        return f"unreadable:{path}"


class ComparisonConfig(ReadingConfig):
    """The comparisons stage: how pairs are read (`ReadingConfig`) and which pairs there are."""

    mode: Annotated[Literal["rank", "distill", "both"], SELECTS] = Field(
        "rank", description="Pairs by ranking samples, by context distillation (teacher vs student), or both."
    )
    distill_p_chosen: Annotated[float, SELECTS] = Field(
        1.0, ge=0.5, le=1, description="Soft label of a (teacher, student) pair (it enters their ids)."
    )
    pairs: Annotated[Literal["adjacent", "all"], SELECTS] = Field(
        "all", description="Which sample pairs of a query to rank."
    )
    initial_vs_revised: Annotated[bool, SELECTS] = Field(
        True, description="Also rank each initial answer against its final revision."
    )
    constitution: Annotated[str | None, Source(_constitution_digest)] = Field(
        None, description="Rank under another principle file (e.g. hhh); default: the run's."
    )
    length_control: Annotated[bool, OPERATIONAL] = Field(
        False,
        description="Export length-controlled soft labels: the slope of the soft label on the answers' length "
        "difference is fitted over the run's ranked pairs and taken out of each label (the raw one kept as "
        "p_chosen_raw). It shapes the export only, never a record.",
    )

    def identity_hook(self, view: str, data: dict) -> dict:
        """A ranked pair's id covers the principles it reads (see `comparison_id`), so neither how
        many are drawn nor the CoT settings of a log-prob reading enter it apart from that."""
        if view == "record":
            data = {k: v for k, v in data.items() if k != "principles"}
        # How many comparison examples a prompt may show enters a record's id through the examples
        # it shows (none: nothing); a stage's identity, only once it is set off its default.
        if view == "record" or self.few_shot == type(self).model_fields["few_shot"].default:
            data = {k: v for k, v in data.items() if k != "few_shot"}
        if self.method == "logprob":
            data = {k: v for k, v in data.items() if k not in ("cot_clamp", "cot_max_new_tokens")}
        return data


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
    """Two answers to one query, in the order the record names them (first, second), and the
    readings of this pair kept in earlier records (`known`, by reading key): filled in only for
    a pair that runs."""

    query: Query
    first: Candidate
    second: Candidate
    kind: str
    principles: tuple[Principle, ...] = ()
    known: dict | None = None

    @property
    def key(self) -> str:
        return pair_key(self.query.id, self.first.id, self.second.id)


def pair_key(query_id: str, first_id: str, second_id: str) -> str:
    """What a pair is, by ids (answer ids hash their inputs, so they stand for their texts)."""
    return f"{query_id}/{first_id}/{second_id}"


def comparison_id(
    query_id: str, first_id: str, second_id: str, model: str, settings: dict, seed: int, principles, few_shot: int = 0
) -> str:
    """A ranked pair's id: the pair, the model, the settings that shape a reading, and the text of
    every principle it reads, with the comparison examples its prompts show under it (of the first
    `few_shot`; none shown: nothing). Editing one principle or example changes only the ids of
    pairs that read it."""
    cot = settings.get("method") == "cot"
    read = [(p.id, question(p), *([shown] if (shown := examples_read(p, few_shot, cot)) else [])) for p in principles]
    return record_id("comparison", query_id, first_id, second_id, model, settings, seed, read)


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
    settings = identity(cfg)
    pools: dict[tuple[str, ...], list[Principle]] = {}  # by trait ids: most queries share one pool
    tasks = []
    for q, samples, revised in groups:
        pool = pools.get(tuple(q.trait_ids))
        if pool is None:
            pool = pools[tuple(q.trait_ids)] = pool_for(c, q)
        pairs = list(combinations(samples, 2)) if cfg.pairs == "all" else list(zip(samples[::2], samples[1::2]))
        for kind, plist in (("samples", pairs), ("revision", revised if cfg.initial_vs_revised else [])):
            for first, second in plist:
                drawn = tuple(draw_principles(pool, cfg.principles, seed, pair_key(q.id, first.id, second.id)))
                tid = comparison_id(q.id, first.id, second.id, model, settings, seed, drawn, cfg.few_shot)
                if tid not in done and first.text.strip() == second.text.strip():
                    continue
                tasks.append(Task(tid, PairInput(q, first, second, kind, drawn), [tid]))
    return tasks


def comparison_steps(c: Constitution, cfg: ComparisonConfig, seed: int, model: str, mode):
    """A pair's readings (the reading core's steps), then its `Comparison` with the soft label."""

    def steps(t: Task[PairInput]):
        pair = PairToRead(
            t.data.key, t.data.query.messages, t.data.first.text, t.data.second.text, pool_for(c, t.data.query),
            known=t.data.known, model=model,
        )  # fmt: skip
        r = yield from read_pair(pair, cfg, seed, mode)
        out = StageOutput(tokens=r.tokens, reused=r.reused, read=len(r.judgements) - r.reused)
        if r.error is not None:
            out.fail(t, r.error)
            return out
        first, second = t.data.first, t.data.second
        p_first = r.p_first
        chosen, rejected = (first, second) if p_first >= 0.5 else (second, first)
        comparison = Comparison(
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
        out.records.append(comparison)
        return out

    return steps


def run_comparison_tasks(
    backend, c: Constitution, tasks: list[Task[PairInput]], cfg: ComparisonConfig, seed: int
) -> Iterator[tuple[Task, StageOutput]]:
    """Every pair streamed through the backend; each comparison as soon as its readings are back."""
    model = f"{backend.name}:{backend.model}"
    return stage_stream(backend, tasks, comparison_steps(c, cfg, seed, model, reading_mode(backend)))
