"""Responses: k samples per query from the policy model, n=k in one request per query."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from cai.core.identity import identity
from cai.core.ids import record_id
from cai.core.stage import StageOutput, Task

from .generation import run_generation, stripped
from .records import Query, Response
from .types import Chat, Completion, SamplingParams


class ResponseConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    samples: int = Field(2, ge=1, description="Answers per query; pairs of them are ranked later.")
    temperature: float = Field(0.8, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: int = Field(128, ge=1)
    system_prompt: str | None = Field(None, description="Optional system message for the policy.")

    def sampling(self, n: int = 1) -> SamplingParams:
        return SamplingParams(n=n, temperature=self.temperature, top_p=self.top_p, max_new_tokens=self.max_new_tokens)


def plan_response_tasks(queries: list[Query], cfg: ResponseConfig, model: str, seed: int) -> list[Task[Query]]:
    settings = identity(cfg)
    tasks = []
    for q in queries:
        ids = [record_id("response", q.id, i, model, settings, seed) for i in range(cfg.samples)]
        tasks.append(Task(ids[0], q, ids))
    return tasks


def response_chat(q: Query, cfg: ResponseConfig) -> Chat:
    system = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    return system + list(q.messages)


@dataclass(frozen=True)
class Answering:
    """The policy answering each query `samples` times."""

    cfg: ResponseConfig
    model: str

    def params(self) -> SamplingParams:
        return self.cfg.sampling(self.cfg.samples)

    def format_input(self, task: Task[Query]) -> Chat:
        return response_chat(task.data, self.cfg)

    def format_output(self, task: Task[Query], completions: list[Completion]) -> list[Response]:
        out = []
        for i, (rid, c) in enumerate(zip(task.outputs, completions)):
            text, raw = stripped(c)
            out.append(
                Response(
                    id=rid,
                    query_id=task.data.id,
                    sample_index=i,
                    text=text,
                    model=self.model,
                    tokens=c.tokens,
                    finish_reason=c.finish_reason,
                    raw=raw,
                )
            )
        return out


def run_response_tasks(backend, tasks: list[Task[Query]], cfg: ResponseConfig, seed: int) -> StageOutput:
    return run_generation(backend, Answering(cfg, backend.model), tasks, seed)
