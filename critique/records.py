"""Records of the critique/revision loop and of AI-ranked pairs."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Round(BaseModel):
    principle_id: str
    critique: str
    revision: str
    critique_raw: str
    revision_raw: str
    tokens: int = 0
    kept: bool = Field(
        True, description="False when the revision was empty or repeated the critique; the previous text was kept."
    )


class Revision(BaseModel):
    id: str
    response_id: str
    query_id: str
    initial: str
    rounds: list[Round]
    final: str
    principle_ids: list[str]


class Judgement(BaseModel):
    """One reading of the feedback model: one principle, one order of the two answers."""

    key: str | None = Field(
        None,
        description="What was read (model, settings, pair, order, the principle's question): a later record of the "
        "same pair takes this reading instead of asking again.",
    )
    principle_id: str
    order: Literal["ab", "ba"] = Field(description="`ab`: the first answer was shown as (A).")
    logp: dict[str, float] = Field(description="Log-probabilities of the choice letters (empty when parsed).")
    p_first: float = Field(description="Probability that the pair's first answer is better, from this reading.")
    p_first_raw: float | None = Field(None, description="Before clamping (CoT only).")
    reasoning: str | None = None
    reading: Literal["prefill", "first_token", "parsed"] = Field(
        "prefill",
        description="How the letter was read: next token after an assistant prefill, the first token of a "
        "one-letter answer, or parsed from text (then `logp` is empty and the probability 0 or 1).",
    )
    floored: list[str] = Field(
        default_factory=list, description="Letters outside the backend's top-k, scored with a floor value."
    )
    answer: str | None = Field(None, description="The text a parsed letter was read from.")


class Comparison(BaseModel):
    id: str
    query_id: str
    first_id: str
    second_id: str
    kind: Literal["samples", "revision", "distill"] = Field(
        description="Two samples, an initial answer against its revision, or a teacher against a student."
    )
    method: Literal["logprob", "cot", "distill"]
    principle_ids: list[str]
    judgements: list[Judgement]
    p_first: float = Field(description="Mean over principles and both orders.")
    chosen_id: str
    rejected_id: str
    p_chosen: float = Field(description="Soft label: probability that the chosen answer is better (>= 0.5).")
    order_consistent: bool = Field(description="Both orders favoured the same answer, on average over principles.")


class Introspection(BaseModel):
    """A self-reflection or a self-interaction of the model in character (SFT data)."""

    id: str
    kind: Literal["reflection", "interaction"]
    trait_id: str
    index: int = Field(description="Which prompt or dialogue of its trait and kind.")
    messages: list[dict[str, str]] = Field(
        description="The conversation as exported: the prompt (or the other instance's turns) as the user's, "
        "the model's answers as the assistant's."
    )
    model: str
    tokens: int = 0
    system_prompt_id: str | None = Field(None, description="Set when the constitution was in the system prompt.")
    dropped: str | None = Field(None, description="Why it is not exported (it leaks its instructions, an empty turn).")
