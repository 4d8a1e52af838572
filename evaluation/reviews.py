"""How often people agree with a run's own AI labels, from their reviews of a sample of its pairs.

No model is asked anything: the labels are the run's comparisons as written (`chosen_id`,
`p_chosen`, and each principle's own readings), and the people's verdicts name the answer they
preferred by its id. A "can't tell" is no vote for either answer, so it is counted apart (its
share has an interval of its own) and left out of agreement rather than scored as a half.
Agreement is Wilson's interval where each pair has one verdict; where several people reviewed a
pair their verdicts are not independent evidence, and the interval is a bootstrap over pairs.

Per principle, a pair counts under every principle it was ranked under, twice over: the pair's
label (what training sees), and that principle's own reading of the pair (its two orders'
mean), which says which principle's question leads the labeler astray. Per confidence bin, the
agreement beside the bin's mean p_chosen is the calibration a soft label promises.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from itertools import combinations

from cai.critique.records import Comparison

from .stats import rate


@dataclass(frozen=True)
class PersonVerdict:
    """One person's standing verdict on one pair: the answer they preferred, or None (can't tell)."""

    pair_id: str
    reviewer: str
    preferred_id: str | None


def confidence_bin(p_chosen: float, bins: int = 5) -> int:
    """Which of `bins` equal bins over 0.5-1 a soft label falls in (1.0 in the last)."""
    return min(bins - 1, max(0, int((p_chosen - 0.5) * 2 * bins)))


def _credit(picked_first: float, c: Comparison, preferred: str) -> float:
    """1 when the AI's pick is the person's, 0 when not, 1/2 for an AI tie (`picked_first` 0.5)."""
    if picked_first == 0.5:
        return 0.5
    picked = c.first_id if picked_first > 0.5 else c.second_id
    return float(picked == preferred)


def _label(c: Comparison) -> float:
    return 0.5 if c.p_chosen == 0.5 else float(c.chosen_id == c.first_id)


def _own_reading(c: Comparison, principle: str) -> float | None:
    """P(first answer better) from the principle's own readings of the pair (None: it has none, as
    a distillation pair, whose label is fixed, has none)."""
    ps = [j.p_first for j in c.judgements if j.principle_id == principle]
    return sum(ps) / len(ps) if ps else None


def _agreement(items: list[tuple[str, float]], seed: int) -> dict:
    """(pair id, credit) items as a rate whose groups are pairs."""
    groups: dict[str, list[float]] = defaultdict(list)
    for pid, credit in items:
        groups[pid].append(credit)
    return rate(list(groups.values()), seed).to_json()


def _share(items: list[tuple[str, bool]], seed: int) -> dict:
    return _agreement([(pid, float(flag)) for pid, flag in items], seed)


def _group(rows: list[tuple[str, Comparison, PersonVerdict]], seed: int) -> dict:
    decided = [(pid, c, v) for pid, c, v in rows if v.preferred_id is not None]
    return {
        "reviews": len(rows),
        "cant_tell": len(rows) - len(decided),
        "agreement": _agreement([(pid, _credit(_label(c), c, v.preferred_id)) for pid, c, v in decided], seed),
    }


def _between_reviewers(rows: list[tuple[str, Comparison, PersonVerdict]], seed: int) -> dict | None:
    """Where two or more people picked an answer for the same pair: how often any two agree."""
    by: dict[str, list[str]] = defaultdict(list)
    for pid, _, v in rows:
        if v.preferred_id is not None:
            by[pid].append(v.preferred_id)
    items = [(pid, a == b) for pid, picks in by.items() for a, b in combinations(picks, 2)]
    return _share(items, seed) if items else None


def review_agreement(pairs: dict[str, Comparison], verdicts: list[PersonVerdict], bins: int = 5, seed: int = 0) -> dict:
    """Agreement of the run's labels with people's verdicts: overall, per principle, per p_chosen
    bin and per kind of pair, "can't tell" counted apart. Verdicts on pairs no longer in the run
    (moved aside by a config change) are counted as `not_in_run` and left out."""
    rows = [(v.pair_id, pairs[v.pair_id], v) for v in verdicts if v.pair_id in pairs]
    overall = _group(rows, seed)
    by_principle: dict[str, dict] = {}
    principles = sorted({p for _, c, _ in rows for p in c.principle_ids})
    for principle in principles:
        here = [r for r in rows if principle in r[1].principle_ids]
        own = [
            (pid, _credit(p, c, v.preferred_id))
            for pid, c, v in here
            if v.preferred_id is not None and (p := _own_reading(c, principle)) is not None
        ]
        by_principle[principle] = {**_group(here, seed), "own_reading": _agreement(own, seed)}
    by_confidence = []
    for b in range(bins):
        lo, hi = 0.5 + 0.5 * b / bins, 0.5 + 0.5 * (b + 1) / bins
        here = [r for r in rows if confidence_bin(r[1].p_chosen, bins) == b]
        mean = sum(c.p_chosen for _, c, _ in here) / len(here) if here else None
        by_confidence.append({"bin": f"{lo:.2f}-{hi:.2f}", "mean_p_chosen": mean, **_group(here, seed)})
    kinds = sorted({c.kind for _, c, _ in rows})
    return {
        "reviews": len(verdicts),
        "not_in_run": len(verdicts) - len(rows),
        "pairs_reviewed": len({pid for pid, _, _ in rows}),
        "reviewers": dict(Counter(v.reviewer for _, _, v in rows)),
        "cant_tell": overall["cant_tell"],
        "rates": {
            "agreement": overall["agreement"],
            "cant_tell": _share([(pid, v.preferred_id is None) for pid, _, v in rows], seed),
            "between_reviewers": _between_reviewers(rows, seed),
        },
        "by_principle": by_principle,
        "by_confidence": by_confidence,
        "by_kind": {k: _group([r for r in rows if r[1].kind == k], seed) for k in kinds},
    }
