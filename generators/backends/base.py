"""One small interface for every model backend, and a registry that picks one by name.

Backends register a dotted path instead of a class so that `import generators` never imports
vLLM or the openai client: a laptop user without vLLM still gets the transformers backend.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_serializer, field_validator

from cai.core.errors import UserError
from cai.core.identity import marked

from ..types import ChoiceScores, Completion, Prompt, SamplingParams


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do when asked for a letter, declared once by the backend.

    The ranking core reads it to pick how letters are read: after an assistant prefill, from the
    first token of a one-letter answer, or parsed from text. A backend that declares nothing is
    taken to do all of it, as the transformers backend does.
    """

    prefill: bool = True  # continues a chat whose last message is the assistant's
    logprobs: bool = True  # reports next-token log-probs
    top_logprobs: int | None = None  # at most this many tokens per position; None: any token asked for


FULL = Capabilities()


def capabilities(backend: object) -> Capabilities:
    return getattr(backend, "capabilities", FULL)


@runtime_checkable
class Backend(Protocol):
    """A backend may also set `capabilities` (see `Capabilities`); without it, it does everything."""

    name: str
    model: str

    def generate(
        self, chats: list[Prompt], params: SamplingParams, seeds: list[int] | None = None
    ) -> list[list[Completion]]:
        """n completions per prompt, in input order; a failed prompt yields error completions.
        `seeds` gives each prompt its own seed, so its samples do not depend on its batch."""

    def choice_logprobs(self, prompts: list[Prompt], choices: list[str]) -> list[ChoiceScores]:
        """Log-probability of each choice as the continuation right after each prompt."""

    def close(self) -> None:
        """Free the model or connection."""


# Option names that hold a secret, for a backend that declares no options model of its own.
_SECRET_NAME = re.compile(r"(api_?key|token|secret|password)", re.IGNORECASE)


class BackendConfig(BaseModel):
    """Which backend, which model, and that backend's own options (checked by the backend).

    What of the options shapes output is declared by the backend's options model (fields marked
    `OPERATIONAL` do not); `identity_hook` reads that declaration. An option the options model
    types as `SecretStr` (an API key) is held as one from the config file to the client, and is
    left out of every dump, so no copy of a config, card, log or cache key carries it."""

    model_config = ConfigDict(extra="forbid")

    backend: str = Field("transformers", description="A registered backend name: transformers, vllm, openai.")
    model: str = Field(
        "default", description="`default` (the embedded model), a hub id, a local path or a served name."
    )
    options: dict[str, Any] = Field(default_factory=dict, description="Backend-specific options.")

    @field_validator("options")
    @classmethod
    def _hide_secrets(cls, options: dict[str, Any], info) -> dict[str, Any]:
        backend = info.data.get("backend", "transformers")
        return {k: SecretStr(v) if isinstance(v, str) and is_secret(backend, k) else v for k, v in options.items()}

    @field_serializer("options")
    def _without_secrets(self, options: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in options.items() if not isinstance(v, SecretStr)}

    def identity_hook(self, view: str, data: dict) -> dict:
        """The options that shape output (all of them where the backend declares none)."""
        operational = set() if view == "config" else operational_options(self.backend)
        data["options"] = {k: v for k, v in data.get("options", {}).items() if k not in operational}
        return data


_REGISTRY: dict[str, str | Callable[..., Backend]] = {
    "transformers": "cai.generators.backends.hf:TransformersBackend",
    "vllm": "cai.generators.backends.vllm_backend:VLLMBackend",
    "openai": "cai.generators.backends.openai_backend:OpenAIBackend",
}
_OPTIONS: dict[str, str | type[BaseModel] | None] = {
    "transformers": "cai.generators.backends.options:TransformersOptions",
    "vllm": "cai.generators.backends.options:VLLMOptions",
    "openai": "cai.generators.backends.options:OpenAIOptions",
}


def register_backend(
    name: str, factory: str | Callable[..., Backend], options: str | type[BaseModel] | None = None
) -> None:
    """Add a backend: a callable `(model, **options) -> Backend` or its `module:attr` path, and
    optionally its options model (whose marks say which options shape output)."""
    _REGISTRY[name] = factory
    _OPTIONS[name] = options


def options_model(name: str) -> type[BaseModel] | None:
    target = _OPTIONS.get(name)
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        target = _OPTIONS[name] = getattr(importlib.import_module(module), attr)
    return target


def operational_options(name: str) -> set[str]:
    model = options_model(name)
    return set(marked(model, "operational")) if model is not None else set()


def is_secret(name: str, option: str) -> bool:
    """An option held as a secret: typed `SecretStr` by the backend's options model, else named like one."""
    try:
        model = options_model(name)
    except ImportError:  # a backend not installed here: loading it says so, later
        model = None
    if model is None or option not in model.model_fields:
        return bool(_SECRET_NAME.search(option))
    return "SecretStr" in repr(model.model_fields[option].annotation)


def backend_names() -> list[str]:
    return sorted(_REGISTRY)


def _factory(name: str) -> Callable[..., Backend]:
    if name not in _REGISTRY:
        raise UserError(f"backend: unknown backend {name!r}; choose one of {', '.join(backend_names())}")
    target = _REGISTRY[name]
    if callable(target):
        return target
    module, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError as e:
        raise UserError(
            f"backend {name!r} is not installed here ({e.name or e}); see the README's install notes"
        ) from None


def load_backend(config: BackendConfig | str, **overrides: Any) -> Backend:
    if isinstance(config, str):
        config = BackendConfig(backend=config)
    options = {**config.options, **overrides}
    return _factory(config.backend)(config.model, **options)


def parse_options(options_model: type[BaseModel], options: dict[str, Any], backend: str) -> BaseModel:
    """Validate a backend's options, turning pydantic errors into one line per bad option."""
    try:
        return options_model.model_validate(options)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            field = ".".join(str(p) for p in e["loc"])
            msg = "unknown option" if e["type"] == "extra_forbidden" else e["msg"]
            lines.append(f"backend {backend}: options.{field}: {msg}")
        raise UserError(lines[0], problems=lines) from None
