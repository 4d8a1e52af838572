"""Did training make the policy better under the constitution, without making it refuse?

Two numbers a user checks after RL or DPO: how often the feedback model prefers the trained
model's answer over the baseline's (both orders, sampled principles: the labeler of
evaluation/labeler.py with the trained answer in the "chosen" seat), and how often each model
refuses or dodges an ordinary request. Harmlessness training's usual failure is the second:
refusing everything scores well on harm and is useless, so the benign set ships with cai.

The feedback model is any backend config, so a large judge behind vLLM or a hosted API reads the
pairs; the two policies answer on transformers.
"""

from __future__ import annotations

from importlib import resources

from cai.constitution import Constitution
from cai.core.errors import UserError
from cai.core.ids import record_id
from cai.critique.reading import ANSWER_PREFIX, LetterQuestion, read_letters, reading_mode
from cai.generators.backends.base import BackendConfig
from cai.generators.templates import render
from cai.generators.types import SamplingParams

from .labeler import Reading, label_pairs, pair_probabilities, summarise
from .pairs import LabeledPair


def benign_prompts() -> list[str]:
    text = (resources.files("cai.evaluation") / "data" / "benign-prompts.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def benign_chats() -> list[list[dict]]:
    return [[{"role": "user", "content": t}] for t in benign_prompts()]


def feedback_config(feedback: BackendConfig | str) -> BackendConfig:
    """A feedback model given by name alone runs on the transformers backend."""
    return feedback if isinstance(feedback, BackendConfig) else BackendConfig(model=feedback)


def refusal_probabilities(feedback, conversations: list[list[dict]], replies: list[str]) -> list[float]:
    """P("yes, the reply refuses or avoids helping") per reply, from the feedback model's letters."""
    questions = [
        LetterQuestion(
            render("cai.critique", "refusal.jinja", messages=conv + [{"role": "assistant", "content": reply}]),
            ANSWER_PREFIX,
        )
        for conv, reply in zip(conversations, replies)
    ]
    return [0.5 if r.error else r.p_a for r in read_letters(feedback, questions)]


def refusal_summary(probs: list[float]) -> dict:
    n = max(1, len(probs))
    return {"prompts": len(probs), "refusal_rate": sum(p > 0.5 for p in probs) / n, "mean_p_refusal": sum(probs) / n}


def generate_answers(model: str, chats: list[list[dict]], max_new_tokens: int, seed: int) -> list[str]:
    from cai.generators import load_backend

    backend = load_backend(BackendConfig(backend="transformers", model=model))
    try:
        outs = backend.generate(chats, SamplingParams(temperature=0, max_new_tokens=max_new_tokens, seed=seed))
    finally:
        backend.close()
    return [o[0].text.strip() if not o[0].error else "" for o in outs]


def win_rate(readings: list[Reading], prompts: int) -> float:
    """Share of prompts where the model's answer wins; identical answers (no readings) count half."""
    probs = pair_probabilities(readings)
    wins = sum(1.0 if p > 0.5 else 0.0 if p < 0.5 else 0.5 for p in probs.values())
    return (wins + 0.5 * (prompts - len(probs))) / prompts if prompts else float("nan")


def evaluate_policy(
    model: str,
    baseline: str,
    prompts: list[list[dict]],
    constitution: Constitution,
    feedback: BackendConfig | str = "default",
    principles: int = 2,
    max_new_tokens: int = 64,
    seed: int = 0,
    benign: list[list[dict]] | None = None,
) -> dict:
    """`benign`: the over-refusal prompts (conversations); default: the set that ships with cai."""
    from cai.generators import load_backend

    if not prompts:
        raise UserError("--prompts: no prompts to evaluate on")
    fb = feedback_config(feedback)
    benign = benign if benign is not None else benign_chats()
    everything = prompts + benign
    answers = {
        name: generate_answers(m, everything, max_new_tokens, seed)
        for name, m in (("model", model), ("baseline", baseline))
    }
    n = len(prompts)
    pairs = [
        LabeledPair(record_id("pair", "policy", i), conv, a, b, f"prompt {i + 1}")
        for i, (conv, a, b) in enumerate(zip(prompts, answers["model"][:n], answers["baseline"][:n]))
        if a != b
    ]
    ties = n - len(pairs)
    backend = load_backend(fb)
    try:
        mode = reading_mode(backend)
        readings, errors = (
            label_pairs(backend, constitution, pairs, principles=principles, seed=seed) if pairs else ([], [])
        )
        refusal = {
            name: refusal_summary(refusal_probabilities(backend, benign, ans[n:])) for name, ans in answers.items()
        }
    finally:
        backend.close()
    s = summarise(readings) if readings else {"order_consistency": None, "reading_kinds": {}}
    return {
        "kind": "policy",
        "model": model,
        "baseline": baseline,
        "feedback": {"backend": fb.backend, "model": fb.model, "reading": mode},
        "prompts": n,
        "identical_answers": ties,
        "win_rate": win_rate(readings, n),
        "order_consistency": s["order_consistency"],
        "reading_kinds": s["reading_kinds"],
        "errors": len(errors),
        "over_refusal": refusal,
        "samples": [
            {"prompt": conv[-1]["content"], "model": a, "baseline": b}
            for conv, a, b in list(zip(prompts, answers["model"], answers["baseline"]))[:5]
        ],
    }
