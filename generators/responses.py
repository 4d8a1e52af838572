"""Responses: k samples per query from the policy model, n=k in one request per query."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from cai.constitution import derive_seed

from .records import Query, Response, StageOutput, Task, record_id
from .types import SamplingParams


class ResponseConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    samples: int = Field(2, ge=1, description="Answers per query; pairs of them are ranked later.")
    temperature: float = Field(0.8, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: int = Field(128, ge=1)
    system_prompt: str | None = Field(None, description="Optional system message for the policy.")


def plan_response_tasks(queries: list[Query], cfg: ResponseConfig, model: str, seed: int) -> list[Task[Query]]:
    settings = cfg.model_dump()
    tasks = []
    for q in queries:
        ids = [record_id("response", q.id, i, model, settings, seed) for i in range(cfg.samples)]
        tasks.append(Task(ids[0], q, ids))
    return tasks


def response_chat(q: Query, cfg: ResponseConfig) -> list[dict]:
    system = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    return system + list(q.messages)


def run_response_tasks(backend, tasks: list[Task[Query]], cfg: ResponseConfig, seed: int) -> StageOutput:
    out = StageOutput()
    if not tasks:
        return out
    params = SamplingParams(
        n=cfg.samples,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_new_tokens=cfg.max_new_tokens,
        seed=derive_seed(seed, tasks[0].id),
    )
    results = backend.generate([response_chat(t.data, cfg) for t in tasks], params)
    for task, comps in zip(tasks, results):
        if any(c.error for c in comps):
            out.fail(task, next(c.error for c in comps if c.error))
            continue
        for i, (rid, c) in enumerate(zip(task.outputs, comps)):
            out.tokens += c.tokens
            out.records.append(
                Response(
                    id=rid,
                    query_id=task.data.id,
                    sample_index=i,
                    text=c.text.strip(),
                    model=backend.model,
                    tokens=c.tokens,
                    finish_reason=c.finish_reason,
                )
            )
    return out
