"""Does a model hold the character? Per-trait win rates, over-refusal, and leaks.

For each trait, the feedback model compares the model's answer with the baseline's on that
trait's held-out queries, in both orders, asking the trait's own question. Two checks guard the
usual failures of character training: refusing ordinary requests, and talking about the
character instead of having it (naming traits, mentioning instructions).
"""

from __future__ import annotations

import json
from pathlib import Path

from cai.constitution import Constitution
from cai.core.errors import UserError
from cai.core.ids import record_id
from cai.critique.distill import leak_reason
from cai.critique.rank import trait_principle
from cai.critique.reading import reading_mode
from cai.generators.backends.base import BackendConfig

from .labeler import Reading, label_pairs
from .pairs import LabeledPair
from .policy import (
    benign_chats,
    feedback_config,
    generate_answers,
    refusal_probabilities,
    refusal_summary,
    win_rate,
)


def _prompt_rows(path: Path):
    """(file:line, row) of a prompts JSONL file, or of an export folder's test prompts (any format)."""
    if path.is_dir():
        from cai.training.data import load_split

        for i, row in enumerate(load_split(str(path), "prompts", "test"), 1):
            yield f"{path} (test prompts, row {i})", row
        return
    if not path.is_file():
        raise UserError(f"{path}: prompts file not found")
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                yield f"{path}:{lineno}", json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(
                    f"{path}:{lineno}: expected a JSON object with 'prompt' and 'principle_ids' ({e})"
                ) from None


def trait_queries(
    c: Constitution, prompts: str | Path | None = None, limit: int | None = None
) -> list[tuple[str, list[dict]]]:
    """(trait id, conversation) pairs: a run's held-out prompts tagged with a trait (an export
    folder's test prompts or a JSONL file of them), or else the constitution's own seed questions."""
    if not c.traits:
        raise UserError(f"{c.name}: not a character constitution (no traits)")
    ids = {t.id for t in c.traits}
    items: list[tuple[str, list[dict]]] = []
    if prompts is not None:
        for where, row in _prompt_rows(Path(prompts)):
            try:
                tags = [i for i in row.get("principle_ids", []) if i in ids]
                conv = (
                    row["prompt"] if isinstance(row["prompt"], list) else [{"role": "user", "content": row["prompt"]}]
                )
            except (KeyError, TypeError, AttributeError) as e:
                raise UserError(f"{where}: expected a JSON object with 'prompt' and 'principle_ids' ({e})") from None
            if tags:
                items.append((tags[0], conv))
        if not items:
            raise UserError(f"{prompts}: no prompt is tagged with a trait of {c.name}")
    else:
        for t in c.traits:
            items += [(t.id, [{"role": "user", "content": q}]) for q in t.questions]
    return items[:limit]


def per_trait_win_rates(
    readings_by_trait: dict[str, list[Reading]], prompts_by_trait: dict[str, int]
) -> dict[str, float]:
    return {t: win_rate(readings_by_trait.get(t, []), n) for t, n in prompts_by_trait.items()}


def leak_rate(answers: list[str], c: Constitution) -> float:
    return sum(leak_reason(a, c) is not None for a in answers) / max(1, len(answers))


def evaluate_character(
    model: str,
    baseline: str,
    c: Constitution,
    items: list[tuple[str, list[dict]]],
    feedback: BackendConfig | str = "default",
    max_new_tokens: int = 64,
    seed: int = 0,
    benign: list[list[dict]] | None = None,
) -> dict:
    """`benign`: the over-refusal prompts (conversations); default: the set that ships with cai."""
    from cai.generators import load_backend

    fb = feedback_config(feedback)
    benign = benign if benign is not None else benign_chats()
    chats = [conv for _, conv in items]
    answers = {
        name: generate_answers(m, chats + benign, max_new_tokens, seed)
        for name, m in (("model", model), ("baseline", baseline))
    }
    n = len(items)
    by_trait: dict[str, list[int]] = {}
    for i, (trait, _) in enumerate(items):
        by_trait.setdefault(trait, []).append(i)
    feedback_backend = load_backend(fb)
    readings: dict[str, list[Reading]] = {}
    errors = 0
    try:
        mode = reading_mode(feedback_backend)
        for trait, idx in by_trait.items():
            judge = Constitution(name=f"{c.name}:{trait}", principles=[trait_principle(c.trait(trait))])
            pairs = [
                LabeledPair(
                    record_id("pair", "character", trait, i),
                    chats[i],
                    answers["model"][i],
                    answers["baseline"][i],
                    f"{trait} #{k + 1}",
                )
                for k, i in enumerate(idx)
                if answers["model"][i] != answers["baseline"][i]
            ]
            readings[trait], failed = label_pairs(feedback_backend, judge, pairs, principles=1, seed=seed)
            errors += len(failed)
        refusal = {
            name: refusal_summary(refusal_probabilities(feedback_backend, benign, ans[n:]))
            for name, ans in answers.items()
        }
    finally:
        feedback_backend.close()
    counts = {t: len(idx) for t, idx in by_trait.items()}
    return {
        "kind": "character",
        "model": model,
        "baseline": baseline,
        "constitution": c.name,
        "feedback": {"backend": fb.backend, "model": fb.model, "reading": mode},
        "prompts": n,
        "win_rate_by_trait": per_trait_win_rates(readings, counts),
        "prompts_by_trait": counts,
        "win_rate": _overall(readings, counts),
        "errors": errors,
        "over_refusal": refusal,
        "leak_rate": {name: leak_rate(ans[:n], c) for name, ans in answers.items()},
    }


def _overall(readings: dict[str, list[Reading]], counts: dict[str, int]) -> float:
    rates = per_trait_win_rates(readings, counts)
    total = sum(counts.values())
    return sum(rates[t] * counts[t] for t in counts) / total if total else float("nan")
