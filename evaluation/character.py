"""Does a model hold the character? Per-trait win rates, over-refusal, and leaks.

For each trait, the feedback model compares the model's answer with the baseline's on that
trait's held-out queries, in both orders, asking the trait's own question. Two checks guard the
usual failures of character training: refusing ordinary requests, and talking about the
character instead of having it (naming traits, mentioning instructions). Every rate carries its
n and a 95% interval, model and baseline are compared by paired tests on the same prompts, and a
failed answer or reading is counted, never scored (see evaluation/policy.py).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from cai.constitution import Constitution
from cai.core.errors import UserError
from cai.critique.distill import leak_reason
from cai.critique.rank import trait_principle
from cai.critique.reading import reading_mode
from cai.generators.backends.base import BackendConfig

from .labeler import Reading
from .policy import (
    Failures,
    Policy,
    Sampling,
    answer,
    as_policy,
    benign_chats,
    feedback_config,
    labels,
    refusal_groups,
    refusal_rate,
    refusal_summary,
    refusals,
    win_credits,
)
from .stats import Rate, compare_paired, prompt_means, rate, sign_test


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


def leaks(answers: Sequence[Sequence[str | None]], c: Constitution) -> list[list[float | None]]:
    """1 where an answer talks about the character instead of having it, else 0; None where it failed."""
    return [[None if a is None else float(leak_reason(a, c) is not None) for a in g] for g in answers]


def leak_rate(answers: Sequence[str | None | Sequence[str | None]], c: Constitution, seed: int = 0) -> Rate:
    """The share of answers that leak: one answer per prompt, or per prompt a list of samples."""
    groups = [list(a) if isinstance(a, (list, tuple)) else [a] for a in answers]
    return rate(leaks(groups, c), seed)


def evaluate_character(
    model: Policy | BackendConfig | str,
    baseline: Policy | BackendConfig | str,
    c: Constitution,
    items: list[tuple[str, list[dict]]],
    feedback: BackendConfig | str = "default",
    max_new_tokens: int = 64,
    seed: int = 0,
    benign: list[list[dict]] | None = None,
    samples: int = 1,
    temperature: float = 0.0,
    max_failures: float | None = None,
) -> dict:
    """`benign`: the over-refusal prompts (conversations); default: the set that ships with cai.
    `max_failures`: past this share of failed items in any rate, raise `RunFailed`."""
    from cai.generators import load_backend

    if not items:
        raise UserError(f"{c.name}: no trait prompts to evaluate on")
    sampling = Sampling(samples, temperature, max_new_tokens, seed)
    fb = feedback_config(feedback)
    benign = benign if benign is not None else benign_chats()
    chats = [conv for _, conv in items]
    policies = {"model": as_policy(model), "baseline": as_policy(baseline)}
    failures = Failures()
    where = labels(len(chats), len(benign))
    answers = {who: answer(p, chats + benign, sampling, failures, who, where) for who, p in policies.items()}
    n = len(items)
    by_trait: dict[str, list[int]] = {}
    for i, (trait, _) in enumerate(items):
        by_trait.setdefault(trait, []).append(i)
    credits: list[list[float | None]] = [[] for _ in range(n)]
    readings: list[Reading] = []
    failed_pairs = 0
    feedback_backend = load_backend(fb)
    try:
        mode = reading_mode(feedback_backend)
        for trait, idx in by_trait.items():
            judge = Constitution(name=f"{c.name}:{trait}", principles=[trait_principle(c.trait(trait))])
            won = win_credits(
                feedback_backend, judge, [chats[i] for i in idx], [answers["model"][i] for i in idx],
                [answers["baseline"][i] for i in idx], failures, kind=f"character/{trait}", principles=1, seed=seed,
            )  # fmt: skip
            for i, g in zip(idx, won.credits):
                credits[i] = g
            readings += won.readings
            failed_pairs += won.failed
        refusal = {
            who: refusal_groups(feedback_backend, benign, ans[n:], failures, who) for who, ans in answers.items()
        }
    finally:
        feedback_backend.close()
    by_rate = {t: rate([credits[i] for i in idx], seed) for t, idx in by_trait.items()}
    by_test = {t: sign_test(prompt_means([credits[i] for i in idx])) for t, idx in by_trait.items()}
    overall, overall_test = rate(credits, seed), sign_test(prompt_means(credits))
    refused = {who: refusal_rate(g, seed) for who, g in refusal.items()}
    leaked = {who: leaks(ans[:n], c) for who, ans in answers.items()}
    leak_rates = {who: rate(g, seed) for who, g in leaked.items()}
    failures.check(
        {
            "win rate": overall,
            **{f"win rate ({t})": r for t, r in by_rate.items()},
            **{f"over-refusal ({who})": r for who, r in refused.items()},
        },
        max_failures,
    )
    return {
        "kind": "character",
        "model": policies["model"].name,
        "baseline": policies["baseline"].name,
        "policies": {who: p.to_json() for who, p in policies.items()},
        "constitution": c.name,
        "feedback": {"backend": fb.backend, "model": fb.model, "reading": mode},
        **sampling.to_json(),
        "prompts": n,
        "win_rate_by_trait": {t: r.value for t, r in by_rate.items()},
        "prompts_by_trait": {t: len(idx) for t, idx in by_trait.items()},
        "win_rate": overall.value,
        "reading_kinds": dict(Counter(r.kind for r in readings)),
        "errors": failed_pairs,
        "over_refusal": {who: refusal_summary(g, seed) for who, g in refusal.items()},
        "leak_rate": {who: r.value for who, r in leak_rates.items()},
        "rates": {
            "win_rate": overall.to_json(),
            "win_rate_by_trait": {t: r.to_json() for t, r in by_rate.items()},
            "over_refusal": {who: r.to_json() for who, r in refused.items()},
            "leak_rate": {who: r.to_json() for who, r in leak_rates.items()},
        },
        "tests": {
            "win_rate": overall_test.to_json(),
            "win_rate_by_trait": {t: v.to_json() for t, v in by_test.items()},
            "over_refusal": compare_paired(refusals(refusal["model"]), refusals(refusal["baseline"]), seed).to_json(),
            "leak_rate": compare_paired(leaked["model"], leaked["baseline"], seed).to_json(),
        },
        "failures": {who: failures.of(who) for who in policies},
        "first_error": failures.first,
    }
