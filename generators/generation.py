"""One shape for every stage that generates: `format_input → model → format_output`.

A generating stage says three things about a task: the chat it sends (`format_input`), how it
samples (`params`), and how the completions become a record (`format_output`, which keeps the
model's raw output beside the parsed fields). The loop around them is here, once: build the
chats, seed each task from its own id, call the backend for the whole batch, fail an item whose
completion is an error, count tokens.

Each item gets its own seed, derived from the run's seed and the task's id (and the step, for a
stage that calls the model several times per task), so the text behind an id does not depend on
the batch size, a resume, a retry of part of a batch, the shard or the Ray replica it ran on.
Tasks are streamed through the backend (`streaming.py`): each one's records come back as soon as
its own answer does.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from cai.core.ids import derive_seed
from cai.core.stage import StageOutput, Task

from .streaming import Request, TaskFailed, TaskSteps, stage_stream
from .types import Chat, Completion, SamplingParams

P = TypeVar("P")


class Generation(Protocol[P]):
    """What a generating stage declares; `run_generation` does the rest."""

    def params(self) -> SamplingParams:
        """Sampling settings shared by the batch (each task's seed is added per item)."""

    def format_input(self, task: Task[P]) -> Chat:
        """The chat sent for this task."""

    def format_output(self, task: Task[P], completions: list[Completion]) -> list[BaseModel]:
        """The task's records from its completions (none of them failed)."""


def _takes_seeds(backend: Any) -> bool:
    try:
        return "seeds" in inspect.signature(backend.generate).parameters
    except (TypeError, ValueError):
        return False


def item_seeds(seed: int, tasks: Sequence[Task], *step: object) -> list[int]:
    """One seed per task, from the run's seed, the task's id and the step within the task."""
    return [derive_seed(seed, t.id, *step) for t in tasks]


def call_generate(backend, chats: list, params: SamplingParams, seeds: list[int | None]) -> list[list[Completion]]:
    """`backend.generate` with a seed per chat. A backend that takes no per-item seeds (one
    registered by a user before they existed) gets the first chat's, as before."""
    if not chats:
        return []
    if any(s is None for s in seeds):
        return backend.generate(chats, params)
    if _takes_seeds(backend):
        return backend.generate(chats, params, seeds=seeds)
    return backend.generate(chats, params.model_copy(update={"seed": seeds[0]}))


def generate_each(
    backend, tasks: Sequence[Task], chats: list[Chat], params: SamplingParams, seed: int, *step: object
) -> list[list[Completion]]:
    """`backend.generate` with a seed per task (and step)."""
    return call_generate(backend, chats, params, item_seeds(seed, tasks, *step))


def first_error(completions: list[Completion]) -> str | None:
    return next((c.error for c in completions if c.error), None)


def generation_steps(gen: Generation, seed: int) -> Callable[[Task], TaskSteps]:
    """A one-request task: its chat, the model's completions, its records."""

    def steps(task: Task) -> TaskSteps:
        (comps,) = yield [Request(gen.format_input(task), gen.params(), seed=derive_seed(seed, task.id))]
        if (error := first_error(comps)) is not None:
            raise TaskFailed(error)
        return StageOutput(records=list(gen.format_output(task, comps)), tokens=sum(c.tokens for c in comps))

    return steps


def run_generation(backend, gen: Generation, tasks: list[Task], seed: int) -> Iterator[tuple[Task, StageOutput]]:
    """Every task through `gen`, streamed: each task's records as soon as its answer is back."""
    return stage_stream(backend, tasks, generation_steps(gen, seed))


def stripped(c: Completion) -> tuple[str, str | None]:
    """(text, raw): the text as a record keeps it, and the raw output only where it differs."""
    text = c.text.strip()
    return text, (c.text if c.text != text else None)


def stream_text(
    backend, prompt, params: SamplingParams, seed: int | None, on_text: Callable[[str], None]
) -> Completion:
    """One completion, its text handed to `on_text` piece by piece as the model writes it where the
    backend can (`generate_stream`), else whole once it is done."""
    if hasattr(backend, "generate_stream"):
        final = None
        for piece in backend.generate_stream(prompt, params, seed=seed):
            if isinstance(piece, str):
                on_text(piece)
            else:
                final = piece
        return final if final is not None else Completion.failed("the backend sent no completion")
    (comp,) = call_generate(backend, [prompt], params, [seed])[0]
    if comp.error is None:
        on_text(comp.text)
    return comp
