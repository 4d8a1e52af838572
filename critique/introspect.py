"""Introspection for character training: the model, in character, writes about itself.

After context distillation the character lives in how the model answers other people; these
extra SFT rows give it a view of itself as well. Two kinds, per trait of the constitution:

- self-reflections: a prompt about one side of its character (written from a Jinja template
  per trait, several wordings) answered in character;
- self-interactions: a dialogue of T turns between two instances of the model, each told it
  is talking with another instance of itself, started by a templated opener about the trait.

"In character" means the teacher with the constitution in its system prompt, or a checkpoint
that was already trained on the character, answering without it. Records are planned from the
constitution (trait, kind, index, settings, model, seed, constitution hash), never from text, so
a rerun resumes them like any other stage. The leak filter of context distillation applies: an
answer that mentions its instructions or quotes the constitution is kept on record with the
reason and never exported. Both kinds are about the character, so naming a trait is no leak here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from cai.constitution import Constitution, Trait
from cai.core.identity import ROLE, identity
from cai.core.ids import derive_seed, digest, record_id
from cai.core.stage import StageOutput, Task
from cai.generators import BackendConfig
from cai.generators.streaming import Request, TaskFailed, TaskSteps, stage_stream
from cai.generators.templates import render
from cai.generators.types import SamplingParams

from .distill import leak_reason, teacher_system_prompt
from .records import Introspection


class IntrospectionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reflections: int = Field(2, ge=0, description="Self-reflection prompts per trait, each answered once.")
    interactions: int = Field(1, ge=0, description="Self-interaction dialogues per trait.")
    turns: int = Field(
        3,
        ge=1,
        description="Generated turns per dialogue; the two instances take turns. The export ends on the turn of the "
        "instance that answered the opener, so an even count leaves the last turn out.",
    )
    backend: Annotated[BackendConfig | None, ROLE] = Field(
        None,
        description="A checkpoint that already holds the character; default: the teacher (or the policy) with the "
        "constitution as its system prompt.",
    )
    system_prompt: bool | None = Field(
        None, description="Put the constitution in the system prompt; default: yes for the teacher, no for `backend`."
    )
    temperature: float = Field(0.8, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: int = Field(192, ge=1, description="Per reflection and per dialogue turn.")

    @property
    def with_constitution(self) -> bool:
        return self.system_prompt if self.system_prompt is not None else self.backend is None

    def identity_hook(self, view: str, data: dict) -> dict:
        """What the settings mean, not how they were written: whether the constitution is in the
        system prompt (its default depends on `backend`), and no turn count without dialogues."""
        data = data | {"system_prompt": self.with_constitution}
        if self.interactions == 0:
            data.pop("turns", None)
        return data


@dataclass(frozen=True)
class IntrospectionTarget:
    kind: Literal["reflection", "interaction"]
    trait_id: str
    index: int


def theme(t: Trait) -> str:
    """A trait in a few words, for the prompts: its id read as words ("warmth-without-flattery")."""
    return t.id.replace("-", " ").replace("_", " ")


def plan_introspection_tasks(
    c: Constitution, cfg: IntrospectionConfig, model: str, seed: int, patch: str | None = None
) -> list[Task[IntrospectionTarget]]:
    """Per trait, `reflections` reflection tasks and `interactions` dialogue tasks."""
    settings = identity(cfg)
    reads = digest(constitution_read(c, cfg, patch))
    tasks = []
    for t in c.traits:
        for kind, n in (("reflection", cfg.reflections), ("interaction", cfg.interactions)):
            for i in range(n):
                # a reflection is one answer: the dialogue's turn count shapes nothing of it
                s = settings if kind == "interaction" else {k: v for k, v in settings.items() if k != "turns"}
                tid = record_id("introspection", kind, t.id, i, s, model, seed, reads)
                tasks.append(Task(tid, IntrospectionTarget(kind, t.id, i), [tid]))  # type: ignore[arg-type]
    return tasks


def constitution_read(c: Constitution, cfg: IntrospectionConfig, patch: str | None = None) -> dict:
    """What of the constitution introspection reads: the traits (their prompts are written from
    them) and, in the system prompt, the character as the teacher is told it (or the teacher's patch)."""
    system = teacher_system_prompt(c, patch) if cfg.with_constitution else None
    return {"traits": [[t.id, t.text] for t in c.traits], "system": system}


def reflection_prompt(c: Constitution, target: IntrospectionTarget) -> str:
    return render(
        "cai.critique", "introspection_reflection.jinja", theme=theme(c.trait(target.trait_id)), index=target.index
    )


def opener(c: Constitution, target: IntrospectionTarget) -> str:
    return render(
        "cai.critique", "introspection_opener.jinja", theme=theme(c.trait(target.trait_id)), index=target.index
    )


def _system(c: Constitution, cfg: IntrospectionConfig, dialogue: bool, patch: str | None = None) -> list[dict]:
    character = teacher_system_prompt(c, patch) if cfg.with_constitution else None
    if dialogue:
        return [
            {"role": "system", "content": render("cai.critique", "introspection_partner.jinja", character=character)}
        ]
    return [{"role": "system", "content": character}] if character else []


def seen_by(dialogue: list[str], parity: int) -> list[dict]:
    """The dialogue as one instance sees it: its own messages (those at indices of `parity`) as the
    assistant's, the other's as the user's. The opener sits at index 0, so the instance that
    answers it has parity 1 and the one that wrote it parity 0."""
    return [{"role": "assistant" if k % 2 == parity else "user", "content": text} for k, text in enumerate(dialogue)]


def exported(dialogue: list[str]) -> list[dict]:
    """The dialogue from the side of the instance that answered the opener, ending on its turn."""
    messages = seen_by(dialogue, 1)
    return messages if messages[-1]["role"] == "assistant" else messages[:-1]


def introspection_steps(backend_model: str, c: Constitution, cfg: IntrospectionConfig, seed: int, patch=None):
    """A reflection is one answer; a dialogue is `turns` answers, the two instances taking turns,
    each turn seeded by the task and the turn."""
    system_id = f"constitution:{c.content_hash()}" if cfg.with_constitution else None
    params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens)

    def record(task: Task[IntrospectionTarget], messages: list[dict], tokens: int, dropped: str | None):
        t = task.data
        return Introspection(
            id=task.id,
            kind=t.kind,
            trait_id=t.trait_id,
            index=t.index,
            messages=messages,
            model=backend_model,
            tokens=tokens,
            system_prompt_id=system_id,
            dropped=dropped,
        )

    def reflection(task: Task[IntrospectionTarget]) -> TaskSteps:
        prompt = reflection_prompt(c, task.data)
        chat = _system(c, cfg, False, patch) + [{"role": "user", "content": prompt}]
        ((comp,),) = yield [Request(chat, params, seed=derive_seed(seed, task.id, 0))]
        if comp.error:
            raise TaskFailed(comp.error)
        text = comp.text.strip()
        why = leak_reason(text, c, names=False, prompt=patch) or (None if text else "empty")
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": text}]
        return StageOutput(records=[record(task, messages, comp.tokens, why)], tokens=comp.tokens)

    def dialogue(task: Task[IntrospectionTarget]) -> TaskSteps:
        turns, tokens, dropped = [opener(c, task.data)], 0, None
        for turn in range(cfg.turns):
            parity = (turn + 1) % 2  # who writes message turn + 1: the opener's answerer on odd indices
            chat = _system(c, cfg, True, patch) + seen_by(turns, parity)
            ((comp,),) = yield [Request(chat, params, seed=derive_seed(seed, task.id, turn + 1))]
            if comp.error:
                raise TaskFailed(comp.error)
            text = comp.text.strip()
            tokens += comp.tokens
            turns.append(text)
            if dropped is None:
                dropped = leak_reason(text, c, names=False, prompt=patch) or (
                    None if text else f"turn {turn + 1} is empty"
                )
        return StageOutput(records=[record(task, exported(turns), tokens, dropped)], tokens=tokens)

    def steps(task: Task[IntrospectionTarget]) -> TaskSteps:
        return reflection(task) if task.data.kind == "reflection" else dialogue(task)

    return steps


def run_introspection_tasks(
    backend,
    c: Constitution,
    tasks: list[Task[IntrospectionTarget]],
    cfg: IntrospectionConfig,
    seed: int,
    patch: str | None = None,
) -> Iterator[tuple[Task, StageOutput]]:
    """Reflections and dialogues, each task streamed on its own."""
    return stage_stream(backend, tasks, introspection_steps(backend.model, c, cfg, seed, patch))
