"""Conversations of more than one turn: the policy answers, then plays the user and writes a follow-up.

A query opens a conversation; with `queries.turns: k` the conversation goes on until it holds k
user turns, each step one record: the policy's answer to the last user turn, then the next user
turn, written by the policy prompted as the user (a template). The answers, critiques, revisions
and comparisons of a run then apply to the last assistant turn, with the whole conversation before
it. Each turn is its own record, planned from its parent (the query, or the turn before), so a
rerun resumes at the turn each conversation reached. A seed transcript keeps the turns it has; one
that already holds k user turns is used as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from cai.core.identity import identity
from cai.core.ids import derive_seed, record_id
from cai.core.stage import StageOutput, Task

from .generation import first_error
from .queries import QueryConfig, clean_query
from .records import Query
from .responses import ResponseConfig, response_chat
from .streaming import Request, TaskFailed, TaskSteps, stage_stream
from .templates import render
from .types import SamplingParams


@dataclass(frozen=True)
class FollowUp:
    """Turn `turn` of the conversation opened by `query`, continuing the record `parent`."""

    query: object  # the opening query's reference (or record)
    turn: int
    parent: str  # the id of the record it continues: the query, or the turn before
    messages: tuple = ()  # the conversation so far; filled in when the task runs


def user_turns(messages: list[dict]) -> int:
    return sum(m["role"] == "user" for m in messages)


def plan_turn_tasks(queries: list, cfg: QueryConfig, answers: ResponseConfig, model: str, seed: int) -> list[Task]:
    """Per query with fewer than `cfg.turns` user turns, a task per missing turn. A turn's id hashes
    its opening query, its number and the settings that write it, not how many turns there will be."""
    settings = {"queries": identity(cfg), "responses": identity(answers)}
    tasks = []
    for q in queries:
        parent = q.id
        for t in range(q.turns + 1, cfg.turns + 1):
            tid = record_id("turn", q.id, t, settings, model, seed)
            tasks.append(Task(tid, FollowUp(q, t, parent), [tid]))
            parent = tid
    return tasks


def turn_steps(cfg: QueryConfig, answers: ResponseConfig, seed: int):
    """The policy's answer to the last user turn, then the user's next turn, written by the policy."""
    answer_params = answers.sampling()
    user_params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens)

    def steps(task: Task[FollowUp]) -> TaskSteps:
        f = task.data
        messages = list(f.messages)
        prompt = Query(id=f.parent, messages=messages, origin="seed")
        (answer,) = yield [Request(response_chat(prompt, answers), answer_params, seed=derive_seed(seed, task.id, "a"))]
        if (error := first_error(answer)) is not None:
            raise TaskFailed(error)
        reply = {"role": "assistant", "content": answer[0].text.strip()}
        ask = [{"role": "user", "content": render("cai.generators", "user_turn.jinja", messages=messages + [reply])}]
        ((user,),) = yield [Request(ask, user_params, seed=derive_seed(seed, task.id, "u"))]
        if user.error:
            raise TaskFailed(user.error)
        text = clean_query(user.text)
        dropped = None
        if not reply["content"]:
            dropped = "empty answer"
        elif len(text) < cfg.min_chars:
            dropped = "too short"
        elif len(text) > cfg.max_chars:
            dropped = "too long"
        q = f.query
        record = Query(
            id=task.id,
            messages=messages + [reply, {"role": "user", "content": text}],
            origin="turn",
            principle_ids=list(q.principle_ids),
            trait_ids=list(q.trait_ids),
            raw=user.text,
            dropped=dropped,
            tokens=answer[0].tokens + user.tokens,
            parent_id=f.parent,
            turn=f.turn,
        )
        return StageOutput(records=[record], tokens=record.tokens)

    return steps


def run_turn_tasks(backend, tasks: list[Task], cfg: QueryConfig, answers: ResponseConfig, seed: int):
    return stage_stream(backend, tasks, turn_steps(cfg, answers, seed))
