"""Training configs: our few fields plus a `trl:` section mapped onto TRL's own config class.

`trl:` takes any field of the trainer's TRL config (`RewardConfig`, `DPOConfig`, ...), so TRL's
documentation is the reference for it; unknown fields are refused by name. Command-line
`--set key=value` overrides either part (`--set trl.learning_rate=2e-5`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cai.core.errors import UserError
from cai.core.files import read_structured, validate_model
from cai.generators import BackendConfig
from cai.generators.default_model import check_model

from .mixture import DataSource


class JudgeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    constitution: str = Field(description="Principle file whose principles the judge applies.")
    backend: BackendConfig = Field(default_factory=BackendConfig, description="The feedback model.")
    kind: Literal["pointwise", "pairwise"] = Field(
        "pointwise",
        description="pointwise: each completion's mean P(yes, it meets the principle); pairwise: its mean P(win) "
        "against the other completions of its group (or the reference answer), both orders.",
    )
    principles: int = Field(2, ge=1, description="Principles per completion (pointwise) or per pair (pairwise).")
    method: Literal["logprob", "cot"] = Field(
        "logprob", description="Pairwise only: read letters directly, or argue first."
    )
    reference: str | None = Field(
        None, description="Pairwise only: a dataset column holding a reference answer to rank each completion against."
    )
    seed: int = Field(0, description="Seeds the principles each completion or pair is read under.")

    @model_validator(mode="after")
    def _pairwise_only(self) -> JudgeConfig:
        if self.kind == "pointwise" and (self.reference is not None or self.method != "logprob"):
            raise ValueError("reference and method: only for kind: pairwise")
        return self


class GuardrailsConfig(BaseModel):
    """RL only: what to watch beside the training reward, and when to sound an alarm."""

    model_config = ConfigDict(extra="forbid")

    judge: JudgeConfig | None = Field(
        None, description="Held-out judge: another constitution, or another reading of one, on a feedback backend."
    )
    reward_model: str | None = Field(None, description="Held-out judge: another trained reward model folder.")
    divergence_steps: int | None = Field(
        None,
        ge=4,
        description="Alarm when, over this many logged steps, the training reward rises while the held-out "
        "reward falls (each trend over two standard errors from flat).",
    )
    length_bound: float | None = Field(
        None, gt=0, description="Alarm when a step's mean completion length passes this (see length_unit)."
    )
    length_unit: Literal["ratio", "tokens"] = Field(
        "ratio", description="ratio: of the first step's mean completion length; tokens: an absolute length."
    )
    stop: bool = Field(False, description="End training at the first alarm (the model of that step is saved).")

    @model_validator(mode="after")
    def _coherent(self) -> GuardrailsConfig:
        if self.judge is not None and self.reward_model is not None:
            raise ValueError("judge and reward_model: choose one held-out judge")
        if self.length_bound is not None and self.length_unit == "ratio" and self.length_bound <= 1:
            raise ValueError("length_bound: a ratio of the first step's length must be above 1")
        if self.stop and self.divergence_steps is None and self.length_bound is None:
            raise ValueError("stop: no alarm to stop on (set divergence_steps or length_bound)")
        return self


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field("default", description="Policy or base model: `default`, a hub id or a local path.")
    dataset: str | None = Field(
        None, description="One source, every row of it: a run folder, its datasets/ folder, a file or a hub id."
    )
    datasets: list[DataSource] | None = Field(
        None, min_length=1, description="A mixture of sources, each with a path and a weight or a sample count."
    )
    eval: bool = Field(True, description="Evaluate on the test split when there is one.")
    soft_labels: bool = Field(True, description="Reward/DPO: use p_chosen when present.")
    algorithm: Literal["rloo", "grpo"] = Field("rloo", description="RL only.")
    reward_model: str | None = Field(None, description="RL: a trained reward model folder.")
    judge: JudgeConfig | None = Field(None, description="RL: score completions with the constitution instead.")
    guardrails: GuardrailsConfig | None = Field(
        None, description="RL: a held-out judge, length and KL logged per step, and alarms on them."
    )
    lora: bool = Field(False, description="Train LoRA adapters (peft) instead of all weights.")
    lora_r: int = Field(16, ge=1)
    trl: dict[str, Any] = Field(default_factory=dict, description="Fields of the trainer's TRL config.")

    @model_validator(mode="after")
    def _one_dataset(self) -> TrainConfig:
        if (self.dataset is None) == (self.datasets is None):
            raise ValueError("give dataset (one source) or datasets (a mixture), not both or neither")
        return self

    @property
    def sources(self) -> list[DataSource]:
        return self.datasets if self.datasets is not None else [DataSource(path=self.dataset)]  # type: ignore[arg-type]


def _coerce(text: str) -> Any:
    """JSON scalars and lists (1e-5, true, [1, 2]) parse; anything else stays a string, so
    `save_strategy=no` means "no", not YAML's False."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(data: dict, sets: list[str]) -> dict:
    for item in sets:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        target = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            target = target.setdefault(p, {})
        target[parts[-1]] = _coerce(value)
    return data


def load_train_config(path: str | Path | None, sets: list[str] | None = None, **flags: Any) -> TrainConfig:
    data, node, source = {}, None, "--set"
    if path is not None:
        data, node = read_structured(path)
        source = str(path)
        if not isinstance(data, dict):
            raise UserError(f"{path}:1: expected a mapping")
    data = apply_overrides(dict(data), sets or [])
    for k, v in flags.items():
        if v is not None:
            data.setdefault("trl", {})[k] = v
    cfg = validate_model(TrainConfig, data, node, source)
    check_model(cfg.model, f"{source}: model")
    if cfg.reward_model is not None:
        check_model(cfg.reward_model, f"{source}: reward_model")
    if cfg.judge is not None and cfg.judge.backend.backend != "openai":
        check_model(cfg.judge.backend.model, f"{source}: judge.backend.model")
    g = cfg.guardrails
    if g is not None and g.reward_model is not None:
        check_model(g.reward_model, f"{source}: guardrails.reward_model")
    if g is not None and g.judge is not None and g.judge.backend.backend != "openai":
        check_model(g.judge.backend.model, f"{source}: guardrails.judge.backend.model")
    return cfg


def trl_args(cls, cfg: TrainConfig, defaults: dict[str, Any]):
    """Build a TRL config dataclass; unknown keys are named in one error line."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(cfg.trl) - names)
    if unknown:
        raise UserError(
            f"trl.{unknown[0]}: not a field of {cls.__name__}"
            + (f" (also: {', '.join(unknown[1:])})" if unknown[1:] else "")
        )
    merged = {**defaults, **device_defaults(), **cfg.trl}
    if "output_dir" not in merged:
        raise UserError("trl.output_dir: required (where checkpoints go)")
    try:
        return cls(**merged)
    except (TypeError, ValueError) as e:
        raise UserError(f"trl: {e}") from None


def device_defaults() -> dict[str, Any]:
    """TRL's configs default to bf16, which a CPU-only machine refuses; pick what the machine has."""
    import torch

    return {} if torch.cuda.is_available() else {"bf16": False, "fp16": False, "use_cpu": True}


COMMON_DEFAULTS: dict[str, Any] = {
    "report_to": [],
    "logging_steps": 1,
    "save_strategy": "steps",
    "save_steps": 50,
    "save_total_limit": 2,
}
