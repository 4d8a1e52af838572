"""Turning a prompt into the exact text and tokens a model sees.

Shared by every backend that holds a tokenizer, so the transformers and vLLM backends score the
very same string. A chat whose last message is the assistant's is *continued* (the model writes
on from that text) rather than answered: that is how a ranking prompt pre-fills "(" before the
choice letter.
"""

from __future__ import annotations

from .types import Prompt


def ends_with_assistant(prompt: Prompt) -> bool:
    return not isinstance(prompt, str) and bool(prompt) and prompt[-1].get("role") == "assistant"


def render(tokenizer, prompt: Prompt) -> str:
    """Apply the model's chat template (or pass a raw string through)."""
    if isinstance(prompt, str):
        return prompt
    if not prompt:
        raise ValueError("empty chat")
    cont = ends_with_assistant(prompt)
    return tokenizer.apply_chat_template(
        prompt, tokenize=False, add_generation_prompt=not cont, continue_final_message=cont
    )


def encode(tokenizer, prompt: Prompt) -> list[int]:
    """Token ids of a prompt. Templated text already holds its special tokens; raw text gets the
    tokenizer's usual ones (a BOS, for models that use it)."""
    text = render(tokenizer, prompt)
    return tokenizer(text, add_special_tokens=isinstance(prompt, str))["input_ids"]


def choice_token_ids(tokenizer, choices: list[str]) -> list[list[int]]:
    if not choices:
        raise ValueError("choices must not be empty")
    ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in choices]
    for c, t in zip(choices, ids):
        if not t:
            raise ValueError(f"choice {c!r} encodes to no tokens")
    return ids


def context_error(n_tokens: int, limit: int) -> str:
    return f"prompt is {n_tokens} tokens; the model's context is {limit}"


def encode_batch(
    tokenizer, prompts: list[Prompt], reserve: int, limit: int
) -> tuple[list[list[int] | None], dict[int, str]]:
    """Token ids per prompt, or None with an error message for a prompt that cannot be rendered
    or that leaves fewer than `reserve` tokens of the context: those items fail alone."""
    encoded: list[list[int] | None] = []
    errors: dict[int, str] = {}
    for i, p in enumerate(prompts):
        try:
            ids = encode(tokenizer, p)
        except Exception as e:  # a malformed chat fails alone
            encoded.append(None)
            errors[i] = f"could not render prompt: {e}"
            continue
        if len(ids) + reserve > limit:
            encoded.append(None)
            errors[i] = context_error(len(ids), limit)
        else:
            encoded.append(ids)
    return encoded, errors
