"""`cai constitution try`: one chain on the spot, to see what a principle's wording makes a model do.

A run shows a wording's effect only after every stage over many queries. Here one user message
goes through the same steps a run takes, with the same prompts and code: the policy answers
(greedy by default, so that re-trying after an edit changes only what the edit changed), then
critiques its answer under one principle and revises it, as in a run, and the feedback model
ranks the initial and revised answers through the reading core (critique/reading.py) under the ranking
principles, each in both orders, with every reading returned.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from cai.constitution import Constitution, Principle, load_constitution, weighted_sample
from cai.core.errors import UserError
from cai.core.ids import derive_seed, record_id
from cai.critique.cache import ReadingCache
from cai.critique.rank import ranking_principles, trait_principle
from cai.critique.reading import PairToRead, ReadingConfig, read_pairs, reading_mode, seats
from cai.critique.revise import (
    RevisionConfig,
    clean_revision,
    critique_chat,
    examples_for,
    revision_chat,
    usable_revision,
)
from cai.generators.generation import stream_text
from cai.generators.types import SamplingParams

OnStep = Callable[[str, dict], None]
OnText = Callable[[str, str], None]


def as_constitution(c: Constitution | str | Path) -> Constitution:
    """A constitution object, a shipped name (`harmless`) or a path."""
    return c if isinstance(c, Constitution) else load_constitution(c)


def as_conversation(message: str | list[dict]) -> list[dict]:
    if isinstance(message, str):
        if not message.strip():
            raise UserError("message: must not be empty")
        return [{"role": "user", "content": message.strip()}]
    if not message or message[-1].get("role") != "user":
        raise UserError("message: a conversation must end with the user's message")
    return list(message)


def _principles(c: Constitution, principle_id: str | None, key: str) -> tuple[Principle, list[Principle]]:
    """(the principle to critique under, the principles to rank under).

    A named principle with a critique is critiqued under; one with a comparison question (or a
    named trait) is ranked under alone. Whatever it does not cover is drawn (critique) or taken
    whole (ranking) from the constitution."""
    critique_pool = c.critique_principles
    if not critique_pool:
        raise UserError(f"{c.name}: no principle has a critique and revision, so there is no chain to try")
    named: Principle | None = None
    if principle_id is not None:
        ids = [p.id for p in c.principles] + [t.id for t in c.traits]
        if principle_id not in ids:
            raise UserError(f"--principle: {c.name} has no principle {principle_id!r} (it has {', '.join(ids)})")
        named = c.principle(principle_id) if principle_id in {p.id for p in c.principles} else None
        if named is None:
            return weighted_sample(critique_pool, 1, f"{key}/critique")[0], [trait_principle(c.trait(principle_id))]
    critic = named if named is not None and named.critique else weighted_sample(critique_pool, 1, f"{key}/critique")[0]
    ranking = [named] if named is not None and named.comparison else ranking_principles(c)
    return critic, ranking


def try_chain(
    constitution: Constitution | str | Path,
    message: str | list[dict],
    backend_policy,
    backend_feedback=None,
    principle_id: str | None = None,
    seed: int = 0,
    on_step: OnStep | None = None,
    *,
    answer: str | None = None,
    temperature: float = 0.0,
    max_new_tokens: int = 128,
    revision: RevisionConfig | None = None,
    cache: ReadingCache | None = None,
    on_text: OnText | None = None,
) -> dict:
    """Answer `message`, critique and revise the answer under one principle, rank initial vs revised.

    Arguments:
        constitution: a `Constitution`, a shipped name or a path.
        message: the user's message, or a conversation ending with the user's turn.
        backend_policy: the backend that answers, critiques and revises (as in a run);
            `backend_feedback` ranks (default: the policy's backend).
        principle_id: critique (and, if it has a comparison question, rank) under this principle;
            a trait id ranks under that trait. Default: a critique principle drawn from `seed`
            and every ranking principle.
        answer: critique this answer instead of asking the policy for one.
        temperature, max_new_tokens: the policy's sampling (greedy by default).
        revision: critique/revision settings (`RevisionConfig`; its `few_shot` worked examples).
        cache: a `ReadingCache` for the ranking's readings.
        on_step: called as `on_step(step, data)` when each step is done, in this order:
            "answer" {text, tokens}, "critique" {principle_id, text}, "revision" {text, kept},
            "ranking" {the result's "ranking" value}.
        on_text: called as `on_text(step, piece)` while the answer, the critique and the revision
            are written, piece by piece where the backend streams (transformers), so an editor
            shows them as they come.

    Returns a dict: constitution, messages, answer, principle_id, critique, revision,
    revision_kept, ranking ({p_revised, order_consistent, reading, principles, readings: [{principle_id,
    order, shown_as_a, p_a, p_revised, reading}], error} or None when the revision was not usable),
    tokens, seconds.
    """
    start = time.perf_counter()
    c = as_constitution(constitution)
    messages = as_conversation(message)
    feedback = backend_feedback if backend_feedback is not None else backend_policy
    cfg = revision or RevisionConfig()
    key = record_id("try", messages, seed)
    critic, ranking_pool = _principles(c, principle_id, f"{seed}/{key}")
    step = on_step or (lambda name, data: None)
    text = on_text or (lambda name, piece: None)
    tokens = 0

    def write(name: str, prompt, params: SamplingParams, item_seed: int):
        return stream_text(backend_policy, prompt, params, item_seed, lambda piece: text(name, piece))

    if answer is None:
        params = SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens)
        comp = write("answer", messages, params, derive_seed(seed, key, "answer"))
        if comp.error:
            raise UserError(f"the policy could not answer: {comp.error}")
        answer, tokens = comp.text.strip(), comp.tokens
    step("answer", {"text": answer, "tokens": tokens})

    conversation = messages + [{"role": "assistant", "content": answer}]
    prompt = critique_chat(c, critic, conversation, examples_for(c, critic, cfg.few_shot, f"{seed}/{key}/0"))
    params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.critique_max_new_tokens)
    crit = write("critique", prompt, params, derive_seed(seed, key, 0))
    if crit.error:
        raise UserError(f"the policy could not critique: {crit.error}")
    critique = crit.text.strip()
    step("critique", {"principle_id": critic.id, "text": critique})

    params = params.model_copy(update={"max_new_tokens": cfg.revision_max_new_tokens})
    rev = write("revision", revision_chat(prompt, critique, critic), params, derive_seed(seed, key, 0) + 1)
    if rev.error:
        raise UserError(f"the policy could not revise: {rev.error}")
    revised = clean_revision(rev.text)
    kept = usable_revision(revised, critique) and revised.strip() != answer.strip()
    step("revision", {"text": revised, "kept": kept})
    tokens += crit.tokens + rev.tokens

    ranking = None
    if kept:
        ranking = rank_revision(feedback, messages, answer, revised, ranking_pool, seed, key, cache)
        tokens += ranking.pop("tokens")
        step("ranking", ranking)
    return {
        "constitution": c.name,
        "messages": messages,
        "answer": answer,
        "principle_id": critic.id,
        "critique": critique,
        "revision": revised,
        "revision_kept": kept,
        "ranking": ranking,
        "tokens": tokens,
        "seconds": round(time.perf_counter() - start, 2),
    }


def rank_revision(
    backend,
    messages: list[dict],
    initial: str,
    revised: str,
    pool: list[Principle],
    seed: int,
    key: str,
    cache: ReadingCache | None = None,
) -> dict:
    """Initial (first) vs revised (second) under every principle of `pool`, both orders."""
    cfg = ReadingConfig(principles=len(pool))
    (r,) = read_pairs(backend, [PairToRead(key, messages, initial, revised, pool)], cfg, seed, cache=cache)
    out: dict = {
        "principles": [p.id for p in pool],
        "reading": reading_mode(backend),
        "tokens": r.tokens,
        "error": r.error,
    }
    if r.error is not None:
        return {**out, "p_revised": None, "order_consistent": None, "readings": []}
    readings = []
    for j in r.judgements:
        p_a, initial_as_a = seats(j, first_is_x=True)  # the initial answer is the pair's first
        readings.append(
            {
                "principle_id": j.principle_id,
                "order": j.order,
                "shown_as_a": "initial" if initial_as_a else "revised",
                "p_a": p_a,
                "p_revised": 1.0 - j.p_first,
                "reading": j.reading,
            }
        )
    return {**out, "p_revised": 1.0 - r.p_first, "order_consistent": r.order_consistent, "readings": readings}
