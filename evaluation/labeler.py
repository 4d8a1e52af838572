"""How good is the feedback model as a labeler? Agreement with people, and why it fails.

The labeler is the pipeline's own: each pair goes through the reading core the comparisons stage
uses (critique/reading.py: the same prompts, k sampled principles per pair, both orders, the same
CoT clamp, a failed reading failing its pair), so what is measured here is what labels a run.
Each single reading is kept, so the failure modes a mean hides stay visible: position bias (how
often "(A)" wins in one reading), order consistency (whether the two orders pick the same
answer), and calibration (does a 0.8 soft label come true 80% of the time). Letters parsed from
text (a server without log-probs) are 0 or 1, not probabilities; their readings are counted and
summarised apart. The metric functions are pure, over `Reading`s, so they can be checked on cases
built by hand. Every rate also comes with its n and a 95% interval (`labeler_rates`), the failed
pairs counted and left out.

The judge-bias battery measures what a judge prefers besides quality: position (which seat
wins), length (the slope of P(human-chosen) on the length difference, the human label fixed by
construction; and padded twins, an answer against itself with filler that adds nothing), and
self-preference (its own model's answers against another model's, and, where rows name who wrote
each answer, agreement when the human-chosen answer is its own against when it is the other's).
Every extra pair goes through the same reading core as the rest.
"""

from __future__ import annotations

import gzip
import json
import random
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Literal

from cai.constitution import Constitution
from cai.core.ids import derive_seed
from cai.critique.rank import pool_for
from cai.critique.reading import PairReading, PairToRead, ReadingConfig, draw_principles, read_pairs, seats
from cai.generators.records import Query
from cai.generators.types import SamplingParams

from .pairs import LabeledPair
from .stats import Rate, bootstrap, rate, slope, unpaired_bootstrap


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
    drawn: tuple[str, ...] = ()  # the principles it is read under, so a failed pair is counted under each

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
    return [
        PairLabel(i, p, f, r, tuple(x.id for x in draw_principles(t.pool, cfg.principles, seed, t.key)))
        for i, (p, f, r, t) in enumerate(zip(pairs, firsts, results, to_read))
    ]


def readings_of(labels: list[PairLabel]) -> tuple[list[Reading], list[dict]]:
    """Flatten verdicts into single readings for the metrics, and list the pairs that failed."""
    readings, errors = [], []
    for lab in labels:
        if lab.reading.error is not None:
            errors.append({"pair": lab.pair.where, "error": lab.reading.error, "principles": list(lab.drawn)})
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


# ---------------------------------------------------------------------------------------------
# Rates with their n and 95% interval


def _consistent(rs: list[Reading]) -> list[float]:
    """Per principle a pair was read under in both orders: 1 if both orders pick the same answer."""
    groups: dict[str, list[float]] = defaultdict(list)
    for r in rs:
        groups[r.principle].append(r.p_chosen - 0.5)
    return [float(g[0] * g[1] > 0) for g in groups.values() if len(g) == 2]


def labeler_rates(readings: list[Reading], failed: list[list[str]] = (), seed: int = 0) -> dict:
    """Each rate of `summarise` as {value, n, ci95, failures, interval}. `failed`: per failed pair,
    the principles it was to be read under; it is counted (a pair, its 2k readings, its k order
    checks) and left out. Wilson where each pair gives one yes/no; a bootstrap over pairs where a
    pair gives several readings or a tie scores 1/2."""
    by_pair: dict[int, list[Reading]] = defaultdict(list)
    for r in readings:
        by_pair[r.pair].append(r)
    probs = pair_probabilities(readings)
    lost = [[None] for _ in failed]
    consistency = [g for g in (_consistent(rs) for rs in by_pair.values()) if g]
    out: dict[str, Rate] = {
        "agreement": rate([[_credit(p)] for p in probs.values()] + lost, seed),
        "order_consistency": rate(consistency + [[None] * len(ps) for ps in failed if ps], seed),
        "position_bias": rate(
            [[_credit(r.p_a) for r in rs] for rs in by_pair.values()] + [[None] * 2 * len(ps) for ps in failed if ps],
            seed,
        ),
        "mean_p_chosen": bootstrap([[p] for p in probs.values()] + lost, seed),
    }
    by_principle: dict[str, list[Reading]] = defaultdict(list)
    for r in readings:
        by_principle[r.principle].append(r)
    per = {}
    for pid, rs in sorted(by_principle.items()):
        lost_here = [[None] for ps in failed if pid in ps]
        per[pid] = rate([[_credit(p)] for p in pair_probabilities(rs).values()] + lost_here, seed).to_json()
    return {**{k: v.to_json() for k, v in out.items()}, "by_principle": per}


def excludes(low: float | None, high: float | None, value: float) -> bool:
    """An interval that lies wholly on one side of `value`."""
    return low is not None and high is not None and (low > value or high < value)


# ---------------------------------------------------------------------------------------------
# Length: the slope on the length difference, and padded twins


def words(text: str) -> int:
    return len(text.split())


def length_bias(labels: list[PairLabel], seed: int = 0) -> dict:
    """The least-squares slope of P(human-chosen answer) on how many more words (per 100) the
    human-chosen answer has than the other. The human label is the same on every row (the chosen
    answer is always the human's), so the slope is what length moves beyond it: 0 for a judge
    that does not look at length, positive for one that likes it."""
    done = [lab for lab in labels if lab.reading.error is None and lab.reading.judgements]
    x = [(words(lab.pair.chosen) - words(lab.pair.rejected)) / 100 for lab in done]
    s = slope(x, [lab.p_human for lab in done], seed)
    return {
        **s.to_json(),
        "unit": "P(human-chosen) per 100 more words in the human-chosen answer",
        "failures": len(labels) - len(done),
        "mean_abs_difference_words": sum(abs(v) for v in x) * 100 / len(x) if x else None,
        "flagged": excludes(s.low, s.high, 0.0),
    }


@cache
def fillers() -> tuple[str, ...]:
    """The neutral filler sentences a padded twin gets (evaluation/data/padding.txt)."""
    text = (resources.files("cai.evaluation") / "data" / "padding.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


PAD_SENTENCES = 3


def padded(answer: str, key: str, seed: int = 0, sentences: int = PAD_SENTENCES) -> str:
    """The answer with `sentences` filler sentences added after it, drawn per pair from the seed."""
    rng = random.Random(derive_seed(seed, key, "padding"))
    return answer.rstrip() + " " + " ".join(rng.sample(fillers(), sentences))


def duel(
    backend, c: Constitution, items: list[tuple[str, list[dict], str, str]], cfg: ReadingConfig, seed: int = 0
) -> list[tuple[float | None, str | None]]:
    """Each (key, conversation, x, y) read through the pipeline's core (k principles, both orders):
    (P(x is better), None), or (None, error) where a reading failed. Which answer sits first is
    drawn per item from the seed, as for the labelled pairs."""
    to_read, x_first = [], []
    for key, context, x, y in items:
        first = derive_seed(seed, key, "x-first") % 2 == 0
        q = Query(id=key, messages=context, origin="seed")
        to_read.append(PairToRead(key, context, x if first else y, y if first else x, pool_for(c, q)))
        x_first.append(first)
    out: list[tuple[float | None, str | None]] = []
    for first, r in zip(x_first, read_pairs(backend, to_read, cfg, seed) if to_read else []):
        out.append((None, r.error) if r.error is not None else (r.p_first if first else 1.0 - r.p_first, None))
    return out


def _outcome(ps: list[float | None], seed: int) -> tuple[dict, dict]:
    """The win rate (p > 1/2 wins, 1/2 a tie) and the mean p, each with its interval."""
    wins = rate([[None if p is None else _credit(p)] for p in ps], seed)
    return wins.to_json(), bootstrap([[p] for p in ps], seed).to_json()


def padded_twins(backend, c: Constitution, pairs: list[LabeledPair], cfg: ReadingConfig, seed: int = 0) -> dict:
    """Each human-chosen answer against itself with neutral filler added. The two say the same, so
    an unbiased judge sits at 1/2; one that likes length gives the padded twin the win."""
    items = [(f"{p.id}/padded", p.context, padded(p.chosen, p.id, seed), p.chosen) for p in pairs]
    results = duel(backend, c, items, cfg, seed)
    ps = [p for p, _ in results]
    errors = [f"{pair.where}: {e}" for pair, (_, e) in zip(pairs, results) if e is not None]
    wins, mean = _outcome(ps, seed)
    added = [words(x) - words(p.chosen) for (_, _, x, _), p in zip(items, pairs)]
    return {
        "pairs": len(pairs),
        "words_added": sum(added) / len(added) if added else 0,
        "padded_wins": wins,
        "mean_p_padded": mean,
        "flagged": excludes(mean["ci95"][0], mean["ci95"][1], 0.5),
        "failures": len(errors),
        "first_error": errors[0] if errors else None,
    }


# ---------------------------------------------------------------------------------------------
# Self-preference

SELF_NOTE = (
    "with no labels, P(own wins) mixes which model answers better with the judge's taste for its own answers; "
    "rows naming each answer's model (chosen_model, rejected_model) separate them"
)


def same_model(a: str, b: str) -> bool:
    """Two model names for one model: the same name, or paths to the same folder."""
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def same_model_note(model: str) -> str:
    return (
        f"the feedback model ({model}) is the policy's own model: it ranks answers it wrote itself, and judges "
        "tend to prefer their own; measure it with `cai eval labeler --against OTHER_MODEL`, or rank with another model"
    )


def write_answers(backend, chats: list[list[dict]], max_new_tokens: int) -> list[tuple[str | None, str | None]]:
    """Each conversation's greedy answer: (text, None), or (None, error) for a failed or empty one."""
    if not chats:
        return []
    out: list[tuple[str | None, str | None]] = []
    for comps in backend.generate(chats, SamplingParams(temperature=0, max_new_tokens=max_new_tokens)):
        comp = comps[0]
        text = comp.text.strip()
        out.append((None, comp.error) if comp.error else (text, None) if text else (None, "an empty answer"))
    return out


def self_preference(
    judge,
    other,
    c: Constitution,
    pairs: list[LabeledPair],
    cfg: ReadingConfig,
    seed: int = 0,
    max_new_tokens: int = 128,
) -> dict:
    """The judge's own model and `other` answer each pair's conversation; the judge reads own
    against other. Identical answers are ties (1/2), not read; a failed answer or reading fails
    its pair (counted, left out)."""
    own = write_answers(judge, [p.context for p in pairs], max_new_tokens)
    theirs = write_answers(other, [p.context for p in pairs], max_new_tokens)
    ps: list[float | None] = [None] * len(pairs)
    errors: list[str] = []
    items, index, identical = [], [], 0
    for i, (pair, (a, ea), (b, eb)) in enumerate(zip(pairs, own, theirs)):
        if ea or eb:
            errors.append(f"{pair.where}: {'own' if ea else 'other'} answer: {ea or eb}")
        elif a == b:
            ps[i], identical = 0.5, identical + 1
        else:
            items.append((f"{pair.id}/self", pair.context, a, b))
            index.append(i)
    for i, (p, e) in zip(index, duel(judge, c, items, cfg, seed)):
        if e is not None:
            errors.append(f"{pairs[i].where}: {e}")
        ps[i] = p
    wins, mean = _outcome(ps, seed)
    return {
        "judge": f"{judge.name}:{judge.model}",
        "other": f"{other.name}:{other.model}",
        "pairs": len(pairs),
        "identical_answers": identical,
        "own_wins": wins,
        "mean_p_own": mean,
        "flagged": excludes(wins["ci95"][0], wins["ci95"][1], 0.5),
        "failures": len(errors),
        "first_error": errors[0] if errors else None,
        "note": SELF_NOTE,
        "per_pair": [
            {"pair": pair.where, "own": a, "other": b, "p_own": p}
            for pair, (a, _), (b, _), p in zip(pairs, own, theirs, ps)
        ],
    }


MODEL_FIELDS = ("chosen_model", "rejected_model")


def answer_models(pairs: list[LabeledPair]) -> dict[str, tuple[str, str]]:
    """The models that rows name as the writers of their two answers (`chosen_model`,
    `rejected_model`), by the pair's file:line. The pair layouts carry answers only, so the lines
    the pairs came from are read again for these two fields."""
    wanted: dict[Path, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    for p in pairs:
        path, _, line = p.where.partition("#")[0].rpartition(":")
        if path and line.isdigit():
            wanted[Path(path)][int(line)].append(p.where)
    out: dict[str, tuple[str, str]] = {}
    for path, lines in wanted.items():
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, text in enumerate(f, 1):
                if lineno > max(lines):
                    break
                if lineno not in lines:
                    continue
                rec = json.loads(text)
                names = [rec.get(k) if isinstance(rec, dict) else None for k in MODEL_FIELDS]
                if all(isinstance(n, str) and n.strip() for n in names):
                    for where in lines[lineno]:
                        out[where] = (names[0].strip(), names[1].strip())
    return out


def labelled_self_preference(labels: list[PairLabel], judge_model: str, seed: int = 0) -> dict | None:
    """On rows that name each answer's model, where exactly one answer is the judge's own model's:
    agreement with the human label when the human-chosen answer is the judge's own, against when
    it is the other model's, and the gap between them. A judge without self-preference agrees
    about as often either way; one with it agrees more when its own answer is the right one."""
    models = answer_models([lab.pair for lab in labels])
    own_chosen: list[float | None] = []
    other_chosen: list[float | None] = []
    for lab in labels:
        if lab.pair.where not in models:
            continue
        chosen, rejected = (same_model(m, judge_model) for m in models[lab.pair.where])
        if chosen == rejected:
            continue
        credit = None if lab.reading.error is not None else _credit(lab.p_human)
        (own_chosen if chosen else other_chosen).append(credit)
    if not models:
        return None
    gap = unpaired_bootstrap(own_chosen, other_chosen, seed)
    return {
        "judge_model": judge_model,
        "pairs_naming_models": len(models),
        "agreement_own_chosen": rate([[v] for v in own_chosen], seed).to_json(),
        "agreement_other_chosen": rate([[v] for v in other_chosen], seed).to_json(),
        "gap": gap.to_json(),
        "flagged": gap.diff is not None and excludes(gap.low, gap.high, 0.0),
    }
