"""The data that crosses the backend boundary.

`Chat` is the OpenAI/transformers message list, so any backend can hand it to a chat template
or a server unchanged. A failed item is a value, not an exception: one over-long prompt must not
sink a batch of thousands.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Chat = list[dict[str, str]]
Prompt = Chat | str


class SamplingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: int = Field(1, ge=1, description="Samples per prompt.")
    temperature: float = Field(0.7, ge=0, description="0 means greedy decoding.")
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(256, ge=1)
    stop: list[str] = Field(default_factory=list, description="Strings that end a completion; not included in it.")
    seed: int | None = Field(None, description="Makes sampling repeatable where the engine allows.")


class Completion(BaseModel):
    text: str
    tokens: int = 0
    finish_reason: Literal["stop", "length", "error"] = "stop"
    error: str | None = None

    @classmethod
    def failed(cls, message: str) -> Completion:
        return cls(text="", tokens=0, finish_reason="error", error=message)


class ChoiceScores(dict):
    """Log-probability per choice label; `error` is set (and the dict empty) when the item failed.

    `floored` lists the choices a backend could not see (outside its top-k) and so gave a floor
    value instead of a real log-probability.
    """

    def __init__(
        self, scores: dict[str, float] | None = None, error: str | None = None, floored: list[str] | None = None
    ):
        super().__init__(scores or {})
        self.error = error
        self.floored = floored or []


def is_chat(prompt: Prompt) -> bool:
    return not isinstance(prompt, str)
