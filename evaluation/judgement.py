"""Does the feedback model judge a conversation right? Multiple-choice items with a known answer.

The pointwise judge that rewards RL and scores the frontier eval reads a conversation and says
what it is (harmful or not, which harm). The CAI paper published two evaluations of exactly that
reading (`HarmfulVsEthical`, two options; `HarmfulnessClassification`, nine kinds of harm); a
plain JSONL layout lets a user bring their own. Each item is read through the reading core
(critique/reading.py, any backend, any reading mode) in several option orders, rotations, so each
option sits in each letter position as evenly as the number of orders allows and a judge's
position bias adds the same to every option instead of to the right or the wrong one. The item's
probability per option is the mean over its orders; its pick is the most probable option, a tie
drawn by seed (so a judge that cannot tell scores chance, not the share of answers listed first).

What is reported keeps what an accuracy hides visible: failures (a failed reading fails its item,
which is counted and left out), calibration of the picked option's probability, how often each
letter position wins a single reading, and, where the options are the same categories for every
item, the accuracy per right category.
"""

from __future__ import annotations

import gzip
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cai.core.errors import UserError
from cai.core.ids import derive_seed, record_id
from cai.core.layouts import Malformed, Skip, classification, messages
from cai.critique.reading import (
    ANSWER_PREFIX,
    OPTION_LETTERS,
    Mode,
    OptionQuestion,
    OptionsReading,
    options_text,
    read_options,
    reading_mode,
)

from .stats import wilson

DEFAULT_ORDERS = 4
BINS = 10
TIE = 1e-9  # probabilities this close are equal: a mean over rotations differs in its last bits


@dataclass(frozen=True)
class JudgeItem:
    """A conversation, a question about it, its options, and the indices of the right ones."""

    id: str
    where: str
    conversation: list[dict]
    question: str | None
    options: list[str]
    answers: tuple[int, ...]


@dataclass
class ItemsRead:
    items: list[JudgeItem]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file:line, reason)

    def reasons(self) -> dict[str, int]:
        return dict(Counter(reason for _, reason in self.skipped))

    def summary(self) -> str | None:
        """One line: how many rows were left out, why, and where the first of each reason is."""
        if not self.skipped:
            return None
        first: dict[str, str] = {}
        for where, reason in self.skipped:
            first.setdefault(reason, where)
        parts = [f"{n} × {reason} (first at {first[reason]})" for reason, n in self.reasons().items()]
        return f"skipped {len(self.skipped)}: " + "; ".join(parts)


# ---------------------------------------------------------------------------------------------
# Reading items from a file


def _answer(value: object, k: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < k:
            raise Malformed(f"'answer' {value} is not an option index (0-{k - 1})")
        return value
    if isinstance(value, str):
        letter = value.strip().strip("()").strip()
        if letter in OPTION_LETTERS[:k]:
            return OPTION_LETTERS.index(letter)
        raise Malformed(f"'answer' {value!r} is not an option letter (A-{OPTION_LETTERS[k - 1]})")
    raise Malformed("'answer' must be an option's index (0 first), its letter, or a list of them")


def plain_item(row: dict) -> tuple[list[dict], str | None, list[str], list[int]]:
    """(conversation, question, options, right indices) from `{"messages" or "prompt", "question",
    "options", "answer"}`."""
    key = next((k for k in ("messages", "prompt") if k in row), None)
    if key is None:
        raise Malformed("'options' needs the conversation in 'messages' or 'prompt'")
    conversation = [m for m in messages(row[key], key) if m["content"]]
    question = row.get("question")
    if question is not None and not isinstance(question, str):
        raise Malformed("'question' must be a string")
    options = row["options"]
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise Malformed("'options' must be a list of strings")
    if "answer" not in row:
        raise Malformed("'answer' is missing: the index (0 first) or letter of the right option")
    if not conversation:
        raise Skip("an empty conversation")
    options = [o.strip() for o in options]
    if len(options) < 2:
        raise Skip("fewer than two options")
    if len(options) > len(OPTION_LETTERS):
        raise Skip(f"more than {len(OPTION_LETTERS)} options (letters A-Z)")
    if not all(options):
        raise Skip("an empty option")
    if len(set(options)) < len(options):
        raise Skip("two options are the same")
    given = row["answer"] if isinstance(row["answer"], list) else [row["answer"]]
    if not given:
        raise Malformed("'answer' is an empty list")
    answers = sorted({_answer(a, len(options)) for a in given})
    return conversation, (question or "").strip() or None, options, answers


def parse_item(row: object) -> tuple[list[dict], str | None, list[str], list[int]]:
    """Any accepted layout: the plain one (`options`), or the CAI paper's classification rows."""
    if not isinstance(row, dict):
        raise Malformed("expected a JSON object")
    if "options" in row:
        conversation, question, options, answers = plain_item(row)
    elif any(k in row for k in ("corrects", "text_correct", "text_incorrect")):
        conversation, question, options, answers = classification(row)
    else:
        raise Malformed(
            "expected 'options' and 'answer' with 'messages' or 'prompt', or the CAI paper's 'prompt' with 'corrects'"
        )
    if len(answers) == len(options):
        raise Skip("every option is right")
    return conversation, question, options, answers


def _open(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def read_items(path: str | Path, limit: int | None = None) -> ItemsRead:
    """The usable items of a file (up to `limit`) and each row left out with its file:line and reason."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: items file not found")
    out = ItemsRead([])
    try:
        with _open(path) as f:
            for lineno, line in enumerate(f, 1):
                if limit is not None and len(out.items) >= limit:
                    break
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    conversation, question, options, answers = parse_item(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserError(f"{where}: invalid JSON: {e.msg}") from None
                except Malformed as e:
                    raise UserError(f"{where}: {e}") from None
                except Skip as s:
                    out.skipped.append((where, s.reason))
                    continue
                iid = record_id("item", conversation, question, options)
                out.items.append(JudgeItem(iid, where, conversation, question, options, tuple(answers)))
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    if not out.items:
        raise UserError(f"{path}: no usable items found" + (f" ({out.summary()})" if out.skipped else ""))
    return out


# ---------------------------------------------------------------------------------------------
# Reading items through the core


def rotations(k: int, orders: int | None, start: int = 0) -> list[int]:
    """The rotations an item of k options is read in. With as many orders as options, every
    option sits once in every letter position; with fewer, they are spaced evenly from `start`."""
    n = min(orders or DEFAULT_ORDERS, k)
    return [(start + j * k // n) % k for j in range(n)]


@dataclass
class ItemResult:
    item: JudgeItem
    readings: list[tuple[int, OptionsReading]] = field(default_factory=list)  # (rotation, reading)
    probs: list[float] | None = None  # per option, mean over the rotations; None when it failed
    pick: int | None = None
    tied: bool = False
    error: str | None = None

    @property
    def correct(self) -> bool | None:
        return None if self.pick is None else self.pick in self.item.answers


def _shown(options: list[str], r: int) -> list[str]:
    return options[r:] + options[:r]  # letter position j shows option (j + r) mod k


def judge_items(
    backend, items: list[JudgeItem], orders: int | None = None, seed: int = 0, mode: Mode | None = None
) -> list[ItemResult]:
    """Read every item in its rotations in one batch and combine each item's readings."""
    mode = mode or reading_mode(backend)
    results = [ItemResult(item) for item in items]
    plan, questions = [], []
    for i, item in enumerate(items):
        k = len(item.options)
        for r in rotations(k, orders, derive_seed(seed, item.id, "rotation") % k):
            plan.append((i, r))
            text = options_text(item.conversation, item.question, _shown(item.options, r))
            questions.append(OptionQuestion(text, ANSWER_PREFIX, k))
    for (i, r), reading in zip(plan, read_options(backend, questions, mode)):
        results[i].readings.append((r, reading))
    for res in results:
        failed = next((rd.error for _, rd in res.readings if rd.error), None)
        if failed is not None:
            res.error = failed
            continue
        k = len(res.item.options)
        probs = [0.0] * k
        for r, rd in res.readings:
            for j, letter in enumerate(OPTION_LETTERS[:k]):
                probs[(j + r) % k] += rd.probs[letter] / len(res.readings)
        best = max(probs)
        top = [o for o, p in enumerate(probs) if p >= best - TIE]
        res.probs, res.tied = probs, len(top) > 1
        res.pick = random.Random(derive_seed(seed, res.item.id, "tie")).choice(top) if res.tied else top[0]
    return results


# ---------------------------------------------------------------------------------------------
# What the readings say


def calibration(confidence: list[float], correct: list[bool], bins: int = BINS) -> tuple[float | None, list[dict]]:
    """Expected calibration error of the picked option's probability, with its reliability table
    (bins of equal width over 0-1: with k options a pick's probability is at least 1/k)."""
    rows, ece, n = [], 0.0, len(confidence)
    where = [min(bins - 1, int(c * bins + TIE)) for c in confidence]  # 0.9 read as 0.8999... stays in 0.9-1.0
    for b in range(bins):
        idx = [i for i, w in enumerate(where) if w == b]
        row = {"bin": f"{b / bins:.1f}-{(b + 1) / bins:.1f}", "count": len(idx), "confidence": None, "accuracy": None}
        if idx:
            row["confidence"] = sum(confidence[i] for i in idx) / len(idx)
            row["accuracy"] = sum(correct[i] for i in idx) / len(idx)
            ece += len(idx) / n * abs(row["accuracy"] - row["confidence"])
        rows.append(row)
    return (ece if n else None), rows


def position_bias(results: list[ItemResult]) -> dict:
    """Per letter position: the share of single readings whose top letter it is (a tie split
    evenly), against the share chance gives it (1/k for the items with a k-th letter)."""
    wins: Counter = Counter()
    chance: Counter = Counter()
    readings = [(len(r.item.options), rd) for r in results if r.error is None for _, rd in r.readings]
    for k, rd in readings:
        best = max(rd.probs.values())
        top = [c for c, p in rd.probs.items() if p >= best - TIE]
        for c in top:
            wins[c] += 1 / len(top)
        for c in OPTION_LETTERS[:k]:
            chance[c] += 1 / k
    n = len(readings)
    letters = {c: {"share": wins[c] / n, "chance": chance[c] / n} for c in OPTION_LETTERS if chance[c]} if n else {}
    most = max(letters, key=lambda c: letters[c]["share"]) if letters else None
    return {"readings": n, "letters": letters, "most_chosen": most}


def categories(items: list[JudgeItem]) -> list[str] | None:
    """The options when they are one set of categories shared by every item, each item with one
    right category (as in the paper's classification files); else None."""
    first = items[0].options if items else None
    if first is None or any(it.options != first or len(it.answers) != 1 for it in items):
        return None
    return first


def summarise(results: list[ItemResult], bins: int = BINS) -> dict:
    done = [r for r in results if r.error is None]
    failed = [r for r in results if r.error is not None]
    accuracy = wilson(sum(bool(r.correct) for r in done), len(done), failures=len(failed))
    ece, table = calibration([r.probs[r.pick] for r in done], [bool(r.correct) for r in done], bins)
    out = {
        "items": len(results),
        "n": len(done),
        "failures": len(failed),
        "first_error": f"{failed[0].item.where}: {failed[0].error}" if failed else None,
        "accuracy": accuracy.to_json(),
        "ties": sum(r.tied for r in done),
        "mean_confidence": sum(r.probs[r.pick] for r in done) / len(done) if done else None,
        "ece": ece,
        "reliability": table,
        "position_bias": position_bias(done),
        "reading_kinds": dict(Counter(rd.mode for r in done for _, rd in r.readings)),
        "floored_readings": sum(bool(rd.floored) for r in done for _, rd in r.readings),
        "by_category": None,
    }
    cats = categories([r.item for r in results])
    if cats is not None:
        out["by_category"] = {
            c: wilson(
                sum(bool(r.correct) for r in done if r.item.answers[0] == o),
                sum(r.item.answers[0] == o for r in done),
                failures=sum(r.item.answers[0] == o for r in failed),
            ).to_json()
            for o, c in enumerate(cats)
        }
    return out


def item_to_json(r: ItemResult) -> dict:
    return {
        "id": r.item.id,
        "where": r.item.where,
        "options": r.item.options,
        "answers": list(r.item.answers),
        "probs": r.probs,
        "pick": r.pick,
        "correct": r.correct,
        "confidence": r.probs[r.pick] if r.probs is not None and r.pick is not None else None,
        "tied": r.tied,
        "error": r.error,
        "readings": [
            {"rotation": rot, "probs": rd.probs, "mode": rd.mode, "floored": rd.floored, "answer": rd.answer}
            | ({"error": rd.error} if rd.error else {})
            for rot, rd in r.readings
        ],
    }
