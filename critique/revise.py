"""SL-CAI: critique an answer under a sampled principle, revise it, repeat.

Each answer advances on its own (a critique, then a revision, round after round), streamed
through the backend with every other answer in flight, so no answer waits for a slower one's
round. The constitution's worked examples are replayed as earlier chat turns of the same shape
as the real request.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from cai.constitution import Constitution, FewShot, Principle, weighted_sample
from cai.core.identity import identity
from cai.core.ids import derive_seed, digest, record_id
from cai.core.stage import StageOutput, Task
from cai.generators.queries import jaccard
from cai.generators.records import Query, Response
from cai.generators.streaming import Request, TaskFailed, TaskSteps, stage_stream
from cai.generators.templates import render
from cai.generators.types import SamplingParams

from .records import Revision, Round


@dataclass(frozen=True)
class RevisionInput:
    query: Query
    response: Response


class RevisionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rounds: int = Field(2, ge=0, description="Critique→revision rounds per answer; 0 skips the stage.")
    few_shot: int = Field(2, ge=0, description="Worked examples replayed before each request.")
    temperature: float = Field(0.0, ge=0, description="0 = greedy critiques and revisions.")
    top_p: float = Field(1.0, gt=0, le=1)
    critique_max_new_tokens: int = Field(96, ge=1)
    revision_max_new_tokens: int = Field(160, ge=1)


def plan_revision_tasks(
    pairs: list[tuple[Query, Response]], c: Constitution, cfg: RevisionConfig, model: str, seed: int
) -> list[Task[RevisionInput]]:
    settings = identity(cfg)
    reads = digest(constitution_read(c))  # once, not per task
    tasks = []
    for q, r in pairs:
        tid = record_id("revision", r.id, model, settings, seed, reads)
        tasks.append(Task(tid, RevisionInput(q, r), [tid]))
    return tasks


def constitution_read(c: Constitution) -> dict:
    """What of the constitution a revision reads: the critique principles it draws from (their
    requests and weights) and the worked examples. A comparison question is no part of it."""
    pool = [[p.id, p.critique, p.revision, p.weight] for p in c.critique_principles]
    return {"principles": pool, "few_shot": [e.model_dump(mode="json") for e in c.few_shot]}


def round_principles(c: Constitution, task_id: str, rounds: int, seed: int) -> list[Principle]:
    """Distinct principles for the rounds while the pool lasts, then cycle."""
    pool = c.critique_principles
    order = weighted_sample(pool, len(pool), f"{seed}/{task_id}/principles")
    return [order[r % len(order)] for r in range(rounds)]


def examples_for(c: Constitution, p: Principle, k: int, key: str) -> list[FewShot]:
    """Prefer examples written for this principle, then fill from the rest (seeded)."""
    own = [e for e in c.few_shot if e.principle_id == p.id]
    rest = weighted_sample([e for e in c.few_shot if e.principle_id != p.id], k, key, weight=lambda _: 1.0)
    return (own + rest)[:k]


def _requests(c: Constitution, ex: FewShot, fallback: Principle) -> tuple[str, str]:
    p = c.principle(ex.principle_id) if ex.principle_id else fallback
    return p.critique or fallback.critique, p.revision or fallback.revision  # type: ignore[return-value]


def critique_chat(c: Constitution, p: Principle, conversation: list[dict], examples: list[FewShot]) -> list[dict]:
    chat: list[dict] = []
    for ex in examples:
        crit_req, rev_req = _requests(c, ex, p)
        msgs = [m.model_dump() for m in ex.messages]
        chat += [
            {
                "role": "user",
                "content": render("cai.critique", "critique_request.jinja", messages=msgs, request=crit_req),
            },
            {"role": "assistant", "content": ex.critique},
            {"role": "user", "content": render("cai.critique", "revision_request.jinja", request=rev_req)},
            {"role": "assistant", "content": ex.revision},
        ]
    chat.append(
        {
            "role": "user",
            "content": render("cai.critique", "critique_request.jinja", messages=conversation, request=p.critique),
        }
    )
    return chat


def revision_chat(critique_prompt: list[dict], critique: str, p: Principle) -> list[dict]:
    return critique_prompt + [
        {"role": "assistant", "content": critique},
        {"role": "user", "content": render("cai.critique", "revision_request.jinja", request=p.revision)},
    ]


COPY_THRESHOLD = 0.8
_LEAD = re.compile(
    r"^\s*(?:(?:revised|new|rewritten|improved)\s+(?:assistant\s+)?(?:answer|reply|response)|revision|assistant)\s*:\s*",
    re.I,
)


def clean_revision(text: str) -> str:
    """Models often label their rewrite ("Revised answer: ..."); the label is not the answer."""
    return _LEAD.sub("", text.strip(), count=1).strip()


def usable_revision(revision: str, critique: str) -> bool:
    """Small models often repeat the critique instead of rewriting the answer; that is no revision."""
    return bool(revision) and jaccard(revision, critique) < COPY_THRESHOLD


def revision_steps(c: Constitution, cfg: RevisionConfig, seed: int):
    """One answer's rounds: a critique under the round's principle, then a revision, each one
    request seeded by the task, the round and the step; the next round starts from the last
    usable revision."""
    crit_params = SamplingParams(
        temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.critique_max_new_tokens
    )
    rev_params = crit_params.model_copy(update={"max_new_tokens": cfg.revision_max_new_tokens})

    def steps(task: Task[RevisionInput]) -> TaskSteps:
        q, resp = task.data.query, task.data.response
        current, rounds, tokens = resp.text, [], 0
        for r, p in enumerate(round_principles(c, task.id, cfg.rounds, seed)):
            conversation = list(q.messages) + [{"role": "assistant", "content": current}]
            prompt = critique_chat(c, p, conversation, examples_for(c, p, cfg.few_shot, f"{seed}/{task.id}/{r}"))
            ((crit,),) = yield [Request(prompt, crit_params, seed=derive_seed(seed, task.id, r, "critique"))]
            if crit.error:
                raise TaskFailed(f"round {r + 1} critique: {crit.error}")
            ask = revision_chat(prompt, crit.text.strip(), p)
            ((rev,),) = yield [Request(ask, rev_params, seed=derive_seed(seed, task.id, r, "revision"))]
            if rev.error:
                raise TaskFailed(f"round {r + 1} revision: {rev.error}")
            text = clean_revision(rev.text)
            kept = usable_revision(text, crit.text)
            rounds.append(
                Round(
                    principle_id=p.id,
                    critique=crit.text.strip(),
                    revision=text,
                    critique_raw=crit.text,
                    revision_raw=rev.text,
                    tokens=crit.tokens + rev.tokens,
                    kept=kept,
                )
            )
            tokens += crit.tokens + rev.tokens
            current = text if kept else current
        revision = Revision(
            id=task.id,
            response_id=resp.id,
            query_id=q.id,
            initial=resp.text,
            rounds=rounds,
            final=current,
            principle_ids=[rd.principle_id for rd in rounds],
        )
        return StageOutput(records=[revision], tokens=tokens)

    return steps


def run_revision_tasks(
    backend, c: Constitution, tasks: list[Task[RevisionInput]], cfg: RevisionConfig, seed: int
) -> Iterator[tuple[Task, StageOutput]]:
    if cfg.rounds == 0:
        return iter(())
    return stage_stream(backend, tasks, revision_steps(c, cfg, seed))
