"""How good is the feedback model as a labeler? Agreement with people, and why it fails.

The labeler is the project's own ranking (critique/rank.py): the same prompts, k sampled
principles per pair, both orders. Each single reading is kept, so the failure modes a mean hides
stay visible: position bias (how often "(A)" wins in one reading), order consistency (whether
the two orders pick the same answer), and calibration (does a 0.8 soft label come true 80% of
the time). The metric functions are pure, over `Reading`s, so they can be checked on cases
built by hand.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import asdict, dataclass

from cai.constitution import Constitution, derive_seed, weighted_sample
from cai.critique.rank import CHOICES, comparison_prompt, prob_first_letter, ranking_principles
from cai.generators.records import Query
from cai.generators.types import SamplingParams

from .pairs import LabeledPair


@dataclass(frozen=True)
class Reading:
    """One reading of one pair under one principle in one order."""

    pair: int
    principle: str
    p_a: float  # probability the labeler gives to "(A)" (clamped for CoT, as the pipeline does)
    chosen_is_a: bool  # the human-preferred answer was shown as (A)

    @property
    def p_chosen(self) -> float:
        """Probability this reading gives to the human-preferred answer."""
        return self.p_a if self.chosen_is_a else 1.0 - self.p_a


def _credit(p: float) -> float:
    """1 for a win, 0 for a loss, 1/2 for an exact tie (a labeler that cannot tell gets chance)."""
    return 1.0 if p > 0.5 else 0.0 if p < 0.5 else 0.5


def pair_probabilities(readings: list[Reading]) -> dict[int, float]:
    """Soft label per pair: mean over its readings of P(human-chosen answer is better)."""
    acc: dict[int, list[float]] = defaultdict(list)
    for r in readings:
        acc[r.pair].append(r.p_chosen)
    return {k: sum(v) / len(v) for k, v in sorted(acc.items())}


def agreement(readings: list[Reading]) -> float:
    probs = pair_probabilities(readings)
    return sum(_credit(p) for p in probs.values()) / len(probs) if probs else float("nan")


def agreement_by_principle(readings: list[Reading]) -> dict[str, dict]:
    """Per principle: pairs read, agreement of its own two-order mean, mean P(chosen)."""
    by: dict[str, list[Reading]] = defaultdict(list)
    for r in readings:
        by[r.principle].append(r)
    out = {}
    for pid, rs in sorted(by.items()):
        probs = pair_probabilities(rs)
        out[pid] = {
            "pairs": len(probs),
            "agreement": sum(_credit(p) for p in probs.values()) / len(probs),
            "mean_p_chosen": sum(probs.values()) / len(probs),
        }
    return out


def order_consistency(readings: list[Reading]) -> float:
    """Share of (pair, principle) groups whose two orders prefer the same answer."""
    groups: dict[tuple[int, str], list[float]] = defaultdict(list)
    for r in readings:
        groups[(r.pair, r.principle)].append(r.p_chosen - 0.5)
    both = [g for g in groups.values() if len(g) == 2]
    if not both:
        return float("nan")
    return sum(1 for a, b in both if a * b > 0) / len(both)


def position_bias(readings: list[Reading]) -> float:
    """How often "(A)" wins a single reading: 0.5 is none, 1.0 always A, 0.0 always B."""
    return sum(_credit(r.p_a) for r in readings) / len(readings) if readings else float("nan")


def calibration(probs: list[float], correct: list[float], bins: int = 5) -> tuple[float, list[dict]]:
    """Expected calibration error and its reliability table.

    `probs` are soft labels (the labeler's confidence in the answer it picked, 0.5-1) and
    `correct` 1/0 (1/2 for a tie) for whether that pick matched the human. Bins split 0.5-1 evenly.
    """
    rows = []
    n = len(probs)
    ece = 0.0
    for b in range(bins):
        lo, hi = 0.5 + 0.5 * b / bins, 0.5 + 0.5 * (b + 1) / bins
        idx = [i for i, p in enumerate(probs) if lo <= p < hi or (b == bins - 1 and p == hi)]
        if not idx:
            rows.append({"bin": f"{lo:.2f}-{hi:.2f}", "count": 0, "confidence": None, "accuracy": None})
            continue
        conf = sum(probs[i] for i in idx) / len(idx)
        acc = sum(correct[i] for i in idx) / len(idx)
        ece += len(idx) / n * abs(acc - conf)
        rows.append({"bin": f"{lo:.2f}-{hi:.2f}", "count": len(idx), "confidence": conf, "accuracy": acc})
    return ece, rows


def summarise(readings: list[Reading], bins: int = 5) -> dict:
    probs = pair_probabilities(readings)
    soft = [max(p, 1 - p) for p in probs.values()]
    correct = [_credit(p) for p in probs.values()]
    ece, table = calibration(soft, correct, bins)
    return {
        "pairs": len(probs),
        "readings": len(readings),
        "agreement": agreement(readings),
        "order_consistency": order_consistency(readings),
        "position_bias": position_bias(readings),
        "ece": ece,
        "mean_p_chosen": sum(probs.values()) / len(probs) if probs else float("nan"),
        "reliability": table,
        "by_principle": agreement_by_principle(readings),
    }


def label_pairs(
    backend,
    c: Constitution,
    pairs: list[LabeledPair],
    method: str = "logprob",
    principles: int = 4,
    seed: int = 0,
    cot_clamp: tuple[float, float] = (0.4, 0.6),
    cot_max_new_tokens: int = 96,
) -> tuple[list[Reading], list[dict]]:
    """Rank every pair as the pipeline would; returns the readings and the failed ones."""
    pool = ranking_principles(c)
    rng = random.Random(seed)
    plan = []  # (pair index, principle, chosen_is_a, query, a, b)
    for i, pair in enumerate(pairs):
        chosen_first = rng.random() < 0.5  # which human answer the pair shows first
        first, second = (pair.chosen, pair.rejected) if chosen_first else (pair.rejected, pair.chosen)
        q = Query(id=pair.id, messages=pair.context, origin="seed")
        for p in weighted_sample(pool, principles, f"{seed}/{pair.id}/principles"):
            plan.append((i, p, chosen_first, q, first, second))
            plan.append((i, p, not chosen_first, q, second, first))
    cot = method == "cot"
    errors: list[dict] = []
    reasons: list[str | None] = [None] * len(plan)
    if cot:
        chats = [comparison_prompt(q, p, a, b, cot=True) for _, p, _, q, a, b in plan]
        params = SamplingParams(
            temperature=0, max_new_tokens=cot_max_new_tokens, seed=derive_seed(seed, "eval-labeler")
        )
        for k, (comp,) in enumerate(backend.generate(chats, params)):
            reasons[k] = comp.text.strip() if not comp.error else ""
    prompts = [
        comparison_prompt(q, p, a, b, reasoning=reasons[k], cot=cot) if cot else comparison_prompt(q, p, a, b)
        for k, (_, p, _, q, a, b) in enumerate(plan)
    ]
    lo, hi = cot_clamp
    readings = []
    for (i, p, chosen_is_a, *_), s in zip(plan, backend.choice_logprobs(prompts, CHOICES)):
        if s.error:
            errors.append({"pair": pairs[i].where, "principle": p.id, "error": s.error})
            continue
        p_a = prob_first_letter(s)
        readings.append(Reading(i, p.id, min(hi, max(lo, p_a)) if cot else p_a, chosen_is_a))
    return readings, errors


def readings_to_json(readings: list[Reading]) -> list[dict]:
    return [asdict(r) for r in readings]
