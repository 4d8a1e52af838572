"""The run configuration: one YAML file drives every stage.

Paths inside it (the constitution, a seed file) are taken relative to the config file, so a
config and its principle file can be copied together anywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field

from cai.constitution import Constitution, ConstitutionError, load_constitution
from cai.core.errors import UserError
from cai.core.files import read_structured, validate_model
from cai.core.identity import OPERATIONAL, ROLE, Source
from cai.critique import ComparisonConfig, RevisionConfig
from cai.critique.distill import TeacherConfig
from cai.critique.introspect import IntrospectionConfig
from cai.generators import BackendConfig
from cai.generators.default_model import check_model
from cai.generators.queries import QueryConfig
from cai.generators.responses import ResponseConfig
from cai.training.export import ExportConfig

from .executors import ExecutorConfig


def _constitution_digest(path: str) -> str:
    """A constitution enters by what it says (comments and key order aside), never by its path."""
    try:
        return load_constitution(path).content_hash()
    except UserError:
        return f"unreadable:{path}"


class RunConfig(BaseModel):
    """One run. Which fields shape the records is declared on them (`cai.core.identity`): record ids,
    the config history and the refusal to mix options all read that declaration."""

    model_config = ConfigDict(extra="forbid")

    constitution: Annotated[str, Source(_constitution_digest)] = Field(
        description="A principle file (relative to this config) or a shipped name."
    )
    seed: int = Field(0, description="Seeds every sampled choice; with the inputs it fixes every record id.")
    batch_size: Annotated[int | None, OPERATIONAL] = Field(
        None,
        ge=1,
        description="Requests per call to a backend with no engine queue (transformers; default: its own batch_size) "
        "and tasks per Ray chunk (default 256). vLLM and the OpenAI backend take every pending request: their own "
        "limits (max_num_seqs, concurrency) decide how many are in flight.",
    )
    write_every: Annotated[int, OPERATIONAL] = Field(
        64,
        ge=1,
        description="Records written together; with write_seconds, the most a kill can lose beyond what is in flight.",
    )
    write_seconds: Annotated[float, OPERATIONAL] = Field(
        10.0, gt=0, description="Seconds at most between two writes of a stage's finished records."
    )
    retries: Annotated[int, OPERATIONAL] = Field(
        2, ge=0, description="Reruns retry a task whose error may pass (server down, timeout, OOM) this many times."
    )
    policy: Annotated[BackendConfig, ROLE] = Field(
        default_factory=BackendConfig, description="Writes queries, answers and revisions."
    )
    feedback: Annotated[BackendConfig | None, ROLE] = Field(
        None, description="Ranks pairs; defaults to the policy model."
    )
    teacher: Annotated[TeacherConfig | None, ROLE] = Field(
        None,
        description="Context distillation's teacher, answering with the constitution as its system prompt (often a "
        "stronger model than the policy), or with its own system_prompt (a patch to distill); defaults to the policy.",
    )
    queries: QueryConfig = Field(default_factory=QueryConfig)
    responses: ResponseConfig = Field(default_factory=ResponseConfig)
    revisions: RevisionConfig = Field(default_factory=RevisionConfig)
    comparisons: ComparisonConfig = Field(default_factory=ComparisonConfig)
    introspection: IntrospectionConfig | None = Field(
        None,
        description="Character constitutions: self-reflections and self-interactions in character, as extra SFT data.",
    )
    export: Annotated[ExportConfig, OPERATIONAL] = Field(default_factory=ExportConfig)
    executor: Annotated[ExecutorConfig, OPERATIONAL] = Field(
        default_factory=ExecutorConfig, description="Where model calls run: this process, or a Ray cluster."
    )

    @property
    def feedback_backend(self) -> BackendConfig:
        return self.feedback or self.policy

    @property
    def teacher_backend(self) -> BackendConfig:
        return self.teacher or self.policy

    @property
    def introspection_backend(self) -> BackendConfig:
        """Who answers in character: a trained checkpoint when given, else the teacher."""
        given = self.introspection.backend if self.introspection is not None else None
        return given or self.teacher_backend


def _relative(value: str | None, base: Path) -> str | None:
    if value is None:
        return None
    p = Path(value)
    return str(base / p) if not p.is_absolute() and (base / p).exists() else value


def load_config(path: str | Path) -> RunConfig:
    path = Path(path)
    data, node = read_structured(path)
    cfg = validate_model(RunConfig, data, node, str(path))
    base = path.parent
    updates = {"constitution": _relative(cfg.constitution, base)}
    queries = cfg.queries.model_copy(update={"seed_file": _relative(cfg.queries.seed_file, base)})
    comparisons = cfg.comparisons.model_copy(update={"constitution": _relative(cfg.comparisons.constitution, base)})
    cfg = cfg.model_copy(update={**updates, "queries": queries, "comparisons": comparisons})
    if cfg.teacher is not None and cfg.teacher.system_prompt_file is not None:
        prompt_file = _relative(cfg.teacher.system_prompt_file, base)
        cfg = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update={"system_prompt_file": prompt_file})})
    given = cfg.introspection.backend if cfg.introspection is not None else None
    for field, bc in (
        ("policy", cfg.policy),
        ("feedback", cfg.feedback),
        ("teacher", cfg.teacher),
        ("introspection.backend", given),
    ):
        if bc is not None and bc.backend != "openai":
            check_model(bc.model, f"{path}: {field}.model")
    return cfg


def _load(path: str, field: str) -> Constitution:
    try:
        return load_constitution(path)
    except ConstitutionError:
        raise  # already located by file and line
    except UserError as e:
        raise UserError(f"{field}: {e}") from None


def load_constitutions(cfg: RunConfig) -> tuple[Constitution, Constitution]:
    """The run's constitution and the one used for ranking (the same unless configured)."""
    main = _load(cfg.constitution, "constitution")
    ranking = _load(cfg.comparisons.constitution, "comparisons.constitution") if cfg.comparisons.constitution else main
    if not main.critique_principles and not main.traits and cfg.revisions.rounds:
        raise UserError(f"{cfg.constitution}: no principle has a critique and revision; set revisions.rounds: 0")
    if cfg.introspection is not None and not main.traits:
        raise UserError(
            f"introspection: {cfg.constitution} has no traits; introspection is for character constitutions"
        )
    return main, ranking


def dump_config(cfg: RunConfig) -> str:
    """The frozen copy a run keeps; the executor, the teacher and introspection only when set, so runs made
    before they existed read the same."""
    exclude = {k for k in ("teacher", "introspection") if getattr(cfg, k) is None}
    if cfg.executor == ExecutorConfig():
        exclude.add("executor")
    return yaml.safe_dump(cfg.model_dump(mode="json", exclude=exclude), sort_keys=False, allow_unicode=True)
