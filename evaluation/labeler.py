"""How good is the feedback model as a labeler? Agreement with people, and why it fails.

The labeler is the pipeline's own: each pair goes through the reading core the comparisons stage
uses (critique/reading.py: the same prompts, k sampled principles per pair, both orders, the same
CoT clamp, a failed reading failing its pair), so what is measured here is what labels a run.
Each single reading is kept, so the failure modes a mean hides stay visible: position bias (how
often "(A)" wins in one reading), order consistency (whether the two orders pick the same
answer), and calibration (does a 0.8 soft label come true 80% of the time). Letters parsed from
text (a server without log-probs) are 0 or 1, not probabilities; their readings are counted and
summarised apart. The metric functions are pure, over `Reading`s, so they can be checked on cases
built by hand.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from typing import Literal

from cai.constitution import Constitution
from cai.core.ids import derive_seed
from cai.critique.rank import pool_for
from cai.critique.reading import PairReading, PairToRead, ReadingConfig, read_pairs, seats
from cai.generators.records import Query

from .pairs import LabeledPair


@dataclass(frozen=True)
class Reading:
    """One reading of one pair under one principle in one order."""

    pair: int
    principle: str
    p_a: float  # probability the labeler gives to "(A)" (clamped for CoT, as the pipeline does)
    chosen_is_a: bool  # the human-preferred answer was shown as (A)
    kind: Literal["logprob", "parsed"] = "logprob"  # parsed: a letter read from text, p_a is 0 or 1
    floored: bool = False  # a letter was outside the backend's top-k and carries a floor value

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


def _metrics(readings: list[Reading], bins: int) -> dict:
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


def summarise(readings: list[Reading], bins: int = 5) -> dict:
    """Metrics over the log-prob readings (or the parsed ones when there are no others); parsed
    readings among log-prob ones are summarised on their own under `parsed`."""
    parsed = [r for r in readings if r.kind == "parsed"]
    scored = [r for r in readings if r.kind != "parsed"]
    out = _metrics(scored or parsed, bins)
    out["reading_kinds"] = dict(Counter(r.kind for r in readings))
    out["floored_readings"] = sum(r.floored for r in readings)
    if scored and parsed:
        out["parsed"] = _metrics(parsed, bins)
    return out


@dataclass
class PairLabel:
    """The labeler's verdict on one human-labelled pair: the core's readings, which seat the
    human-chosen answer took, and the soft label as the pipeline would record it."""

    index: int
    pair: LabeledPair
    chosen_first: bool
    reading: PairReading

    @property
    def p_human(self) -> float:
        """Probability the labeler gives to the answer people preferred."""
        p = self.reading.p_first
        return p if self.chosen_first else 1.0 - p

    @property
    def p_chosen(self) -> float:
        """The soft label of the answer the labeler prefers (>= 0.5), as a `Comparison` has it."""
        return max(self.p_human, 1.0 - self.p_human)


def read_labeled_pairs(
    backend, c: Constitution, pairs: list[LabeledPair], cfg: ReadingConfig, seed: int = 0, cache=None
) -> list[PairLabel]:
    """Read every pair through the pipeline's reading core. Which human answer sits first is
    drawn per pair from the seed (both orders are read either way, so only the bookkeeping moves).
    `cache`: a `ReadingCache`, so readings already made are not made again."""
    to_read, firsts = [], []
    for pair in pairs:
        chosen_first = derive_seed(seed, pair.id, "chosen-first") % 2 == 0
        first, second = (pair.chosen, pair.rejected) if chosen_first else (pair.rejected, pair.chosen)
        q = Query(id=pair.id, messages=pair.context, origin="seed")
        to_read.append(PairToRead(pair.id, pair.context, first, second, pool_for(c, q)))
        firsts.append(chosen_first)
    results = read_pairs(backend, to_read, cfg, seed, cache=cache)
    return [PairLabel(i, p, f, r) for i, (p, f, r) in enumerate(zip(pairs, firsts, results))]


def readings_of(labels: list[PairLabel]) -> tuple[list[Reading], list[dict]]:
    """Flatten verdicts into single readings for the metrics, and list the pairs that failed."""
    readings, errors = [], []
    for lab in labels:
        if lab.reading.error is not None:
            errors.append({"pair": lab.pair.where, "error": lab.reading.error})
            continue
        for j in lab.reading.judgements:
            p_a, chosen_is_a = seats(j, lab.chosen_first)
            kind = "parsed" if j.reading == "parsed" else "logprob"
            readings.append(Reading(lab.index, j.principle_id, p_a, chosen_is_a, kind, bool(j.floored)))
    return readings, errors


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
    """Rank every pair as the pipeline would; returns the readings and the pairs that failed."""
    cfg = ReadingConfig(
        method=method, principles=principles, cot_clamp=cot_clamp, cot_max_new_tokens=cot_max_new_tokens
    )
    return readings_of(read_labeled_pairs(backend, c, pairs, cfg, seed))


def readings_to_json(readings: list[Reading]) -> list[dict]:
    return [asdict(r) for r in readings]
