"""RL-CAI feedback: the feedback model ranks two answers to the same query.

Each pair is read under k sampled principles and in both orders; the soft label is the mean
probability over all 2k readings. Showing each answer once as (A) and once as (B) cancels the
position bias small models have (a judge that always says "A" yields exactly 0.5). With
`method: cot` the judge first writes a short argument and the letter is scored after it; those
probabilities are clamped (default 0.4-0.6), since reasoning makes the final letter
over-confident.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cai.constitution import Constitution, Principle, Trait, derive_seed, weighted_sample
from cai.generators.records import Query, StageOutput, Task, record_id
from cai.generators.templates import render
from cai.generators.types import SamplingParams

from .records import Comparison, Judgement

GENERIC_QUESTION = "Which of these assistant replies is better: more helpful, more honest and less harmful?"
CHOICES = ["A", "B"]


class ComparisonConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["logprob", "cot"] = "logprob"
    mode: Literal["rank", "distill", "both"] = Field(
        "rank", description="Pairs by ranking samples, by context distillation (teacher vs student), or both."
    )
    distill_p_chosen: float = Field(1.0, ge=0.5, le=1, description="Soft label of a (teacher, student) pair.")
    principles: int = Field(4, ge=1, description="Principles sampled per pair (each read in both orders).")
    pairs: Literal["adjacent", "all"] = Field("all", description="Which sample pairs of a query to rank.")
    initial_vs_revised: bool = Field(True, description="Also rank each initial answer against its final revision.")
    constitution: str | None = Field(
        None, description="Rank under another principle file (e.g. hhh); default: the run's."
    )
    cot_clamp: tuple[float, float] = Field((0.4, 0.6), description="CoT probabilities are clamped into this range.")
    cot_max_new_tokens: int = Field(96, ge=8)

    @model_validator(mode="after")
    def _clamp_ok(self) -> ComparisonConfig:
        lo, hi = self.cot_clamp
        if not 0 <= lo <= 0.5 <= hi <= 1:
            raise ValueError("cot_clamp must satisfy 0 <= low <= 0.5 <= high <= 1")
        return self


class Candidate(BaseModel):
    id: str
    text: str


@dataclass(frozen=True)
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


def question(p: Principle) -> str:
    return p.comparison or GENERIC_QUESTION


def plan_comparison_tasks(
    groups: list[tuple[Query, list[Candidate], list[tuple[Candidate, Candidate]]]],
    c: Constitution,
    cfg: ComparisonConfig,
    model: str,
    seed: int,
) -> list[Task[PairInput]]:
    """`groups`: per query, its sampled answers and any (initial, revised) pairs."""
    settings = cfg.model_dump()
    tasks = []
    for q, samples, revised in groups:
        pairs = list(combinations(samples, 2)) if cfg.pairs == "all" else list(zip(samples[::2], samples[1::2]))
        for kind, plist in (("samples", pairs), ("revision", revised if cfg.initial_vs_revised else [])):
            for first, second in plist:
                if first.text.strip() == second.text.strip():
                    continue  # identical answers carry no preference
                tid = record_id("comparison", q.id, first.id, second.id, model, settings, seed, c.content_hash())
                tasks.append(Task(tid, PairInput(q, first, second, kind), [tid]))
    return tasks


def comparison_prompt(
    q: Query, p: Principle, a: str, b: str, reasoning: str | None = None, cot: bool = False
) -> list[dict]:
    user = render(
        "cai.critique", "comparison.jinja", messages=q.messages, question=question(p), a=a, b=b, reasoning=cot
    )
    chat = [{"role": "user", "content": user}]
    if cot and reasoning is None:
        return chat  # the judge writes its argument first
    prefix = render("cai.critique", "choice_prefix.jinja", reasoning=reasoning)
    return chat + [{"role": "assistant", "content": prefix}]


def prob_first_letter(logp: dict[str, float]) -> float:
    """P("A") renormalised over the two letters; 0.5 when neither is visible."""
    a, b = logp.get("A", -math.inf), logp.get("B", -math.inf)
    if a == -math.inf and b == -math.inf:
        return 0.5
    m = max(a, b)
    ea, eb = math.exp(a - m), math.exp(b - m)
    return ea / (ea + eb)


def aggregate(judgements: list[Judgement]) -> float:
    return sum(j.p_first for j in judgements) / len(judgements)


def run_comparison_tasks(
    backend, c: Constitution, tasks: list[Task[PairInput]], cfg: ComparisonConfig, seed: int
) -> StageOutput:
    out = StageOutput()
    if not tasks:
        return out
    readings = []  # (task, principle, order, prompt)
    for t in tasks:
        d = t.data
        for p in weighted_sample(pool_for(c, d.query), cfg.principles, f"{seed}/{t.id}/principles"):
            for order, (a, b) in (("ab", (d.first, d.second)), ("ba", (d.second, d.first))):
                readings.append((t, p, order, comparison_prompt(d.query, p, a.text, b.text, cot=cfg.method == "cot")))
    reasons: list[str | None] = [None] * len(readings)
    errors: dict[str, str] = {}
    if cfg.method == "cot":
        params = SamplingParams(
            temperature=0, max_new_tokens=cfg.cot_max_new_tokens, seed=derive_seed(seed, tasks[0].id)
        )
        for i, (comp,) in enumerate(backend.generate([r[3] for r in readings], params)):
            t = readings[i][0]
            if comp.error:
                errors.setdefault(t.id, comp.error)
            else:
                out.tokens += comp.tokens
                reasons[i] = comp.text.strip()
        prompts = []
        for (t, p, order, _), reasoning in zip(readings, reasons):
            d = t.data
            a, b = (d.first, d.second) if order == "ab" else (d.second, d.first)
            prompts.append(comparison_prompt(d.query, p, a.text, b.text, reasoning=reasoning or "", cot=True))
    else:
        prompts = [r[3] for r in readings]
    scores = backend.choice_logprobs(prompts, CHOICES)
    by_task: dict[str, list[Judgement]] = {t.id: [] for t in tasks}
    lo, hi = cfg.cot_clamp
    for (t, p, order, _), reasoning, s in zip(readings, reasons, scores):
        if s.error:
            errors.setdefault(t.id, s.error)
            continue
        p_a = prob_first_letter(s)
        raw = p_a if order == "ab" else 1 - p_a  # probability that the pair's *first* answer is better
        p_first = min(hi, max(lo, raw)) if cfg.method == "cot" else raw
        by_task[t.id].append(
            Judgement(
                principle_id=p.id,
                order=order,
                logp=dict(s),
                p_first=p_first,
                p_first_raw=raw if cfg.method == "cot" else None,
                reasoning=reasoning,
            )
        )
    for t in tasks:
        if t.id in errors:
            out.fail(t, errors[t.id])
            continue
        js = by_task[t.id]
        p_first = aggregate(js)
        first, second = t.data.first, t.data.second
        chosen, rejected = (first, second) if p_first >= 0.5 else (second, first)
        mean_ab = [j.p_first for j in js if j.order == "ab"]
        mean_ba = [j.p_first for j in js if j.order == "ba"]
        consistent = (sum(mean_ab) / len(mean_ab) - 0.5) * (sum(mean_ba) / len(mean_ba) - 0.5) > 0
        out.records.append(
            Comparison(
                id=t.id,
                query_id=t.data.query.id,
                first_id=first.id,
                second_id=second.id,
                kind=t.data.kind,
                method=cfg.method,
                principle_ids=sorted({j.principle_id for j in js}),
                judgements=js,
                p_first=p_first,
                chosen_id=chosen.id,
                rejected_id=rejected.id,
                p_chosen=max(p_first, 1 - p_first),
                order_consistent=consistent,
            )
        )
    return out
