"""People checking a run's AI labels: the sample they review, and the file their verdicts go to.

AI labels are trusted because someone looked at a sample and agreed, so the sample has to be one
that can be agreed with: drawn from the run itself, stratified by principle and by how sure the
label is (its p_chosen bin). Every stratum gets its first pair before any gets a second, then
each gets pairs in proportion to its size, so the first few dozen reviews already cover every
principle and confidence and the agreement over any prefix of the sample estimates the run's.
Within a stratum pairs go in the order of a hash of the run's seed and the pair's id, so the
sample is fixed for the run: every reviewer gets it, a reopened page continues where it stopped,
and a larger sample starts with the same pairs. (The side each answer is shown on is a hash of the
same kind, so it says nothing about which one the AI chose.) Verdicts are kept by pair id, so a
rerun that adds pairs keeps every verdict; it only moves where the pairs not yet reviewed fall.

Verdicts go to `RUN/reviews.jsonl`, one line each, appended and fsynced as the stage files are,
the torn last line of a killed writer cut on the next open. A line is never rewritten: undoing a
verdict is a record too, and what a reviewer thinks of a pair is their last record of it. The
verdict names the preferred answer by its id, never by the side it was shown on.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from cai.core.errors import UserError
from cai.core.ids import derive_seed
from cai.evaluation.reviews import confidence_bin

from .reader import RunReader
from .store import RunStore, writing

REVIEWS = "reviews"  # RUN/reviews.jsonl, declared in stages.OTHER_RECORD_FILES
BINS = 5  # p_chosen 0.5-1 in equal bins, as `cai eval labeler` bins its calibration
Verdict = Literal["preferred", "cant_tell", "undone"]


class Review(BaseModel):
    """One person's verdict on one AI-ranked pair (or the undoing of their last one)."""

    pair_id: str
    verdict: Verdict = Field(description="An answer preferred, can't tell, or the reviewer's earlier verdict undone.")
    preferred_id: str | None = Field(None, description="The id of the answer the person preferred.")
    shown: tuple[str, str] = Field(description="The two answers' ids as shown: left, then right.")
    reviewer: str
    time: str = Field(description="When the verdict was given (ISO 8601, with the offset from UTC).")

    @model_validator(mode="after")
    def _preferred_is_shown(self) -> Review:
        if (self.verdict == "preferred") != (self.preferred_id is not None):
            raise ValueError("preferred_id is set exactly when the verdict is 'preferred'")
        if self.preferred_id is not None and self.preferred_id not in self.shown:
            raise ValueError(f"preferred_id {self.preferred_id!r} is not one of the answers shown")
        return self


@dataclass(frozen=True)
class PairKey:
    """What drawing the sample needs of a ranked pair."""

    id: str
    principles: tuple[str, ...]
    p_chosen: float


def draw_sample(pairs: Iterable[PairKey], seed: int, size: int | None = None) -> list[str]:
    """Pair ids in review order (see the module's docstring). A pair read under several principles
    sits in each of their strata and counts for all of them once taken."""
    strata: dict[tuple[str, int], list[tuple[int, str]]] = {}
    members: dict[str, list[tuple[str, int]]] = {}
    for p in pairs:
        if p.id in members:
            continue
        keys = [(pid, confidence_bin(p.p_chosen)) for pid in dict.fromkeys(p.principles or ("",))]
        members[p.id] = keys
        for k in keys:
            strata.setdefault(k, []).append((derive_seed(seed, "review", p.id), p.id))
    for queue in strata.values():
        queue.sort(reverse=True)  # taken from the end: lowest hash first
    share = {k: len(q) / sum(len(q) for q in strata.values()) for k, q in strata.items()}
    tie = {k: derive_seed(seed, "stratum", *k) for k in strata}
    had = dict.fromkeys(strata, 0)  # pairs taken that sit in the stratum
    order: list[str] = []
    taken: set[str] = set()
    counted = 0  # memberships of the pairs taken
    size = len(members) if size is None else size
    while len(order) < size and strata:
        best = max(strata, key=lambda k: (had[k] == 0, (counted + 1) * share[k] - had[k], tie[k]))
        queue = strata[best]
        while queue and queue[-1][1] in taken:
            queue.pop()
        if not queue:
            del strata[best]
            continue
        pid = queue.pop()[1]
        taken.add(pid)
        order.append(pid)
        for k in members[pid]:
            had[k] += 1
        counted += len(members[pid])
    return order


class ReviewFile:
    """`RUN/reviews.jsonl`: read whole, appended one verdict at a time. Only its writer cuts a torn
    last line; a reader (the agreement) leaves it, as a review page may be writing it that moment."""

    def __init__(self, root: Path, writer: bool = True):
        self.store = RunStore(root, create=writer)
        self.path = self.store.stage_path(REVIEWS)
        self._lock = threading.Lock()

    def read(self) -> list[Review]:
        out = []
        for lineno, row in self.store.rows(self.path):
            try:
                out.append(Review.model_validate(row))
            except ValidationError as e:
                err = e.errors()[0]
                where = ".".join(str(x) for x in err["loc"])
                why = f"{where}: {err['msg']}" if where else err["msg"]
                raise UserError(f"{self.path}:{lineno}: not a review ({why}); remove the line") from None
        return out

    def append(self, review: Review) -> None:
        with self._lock:
            self.store.append(REVIEWS, [review])


def standing(reviews: Iterable[Review]) -> dict[tuple[str, str], Review]:
    """Each (reviewer, pair)'s verdict now: their last record of it, unless that undid it. In the
    order the verdicts were given, so the last one is what an undo takes back."""
    out: dict[tuple[str, str], Review] = {}
    for r in reviews:
        out.pop((r.reviewer, r.pair_id), None)
        if r.verdict != "undone":
            out[(r.reviewer, r.pair_id)] = r
    return out


def now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# What the reviews say of the labels: `cai eval labeler --pairs RUN`, shown by `cai report`

AGREEMENT_FILE = "review-agreement.json"


def agreement_result(run_dir: Path, bins: int = BINS, seed: int = 0) -> dict:
    """The run's labels against its reviews, written to `RUN/review-agreement.json` for the report."""
    from cai.evaluation.reviews import PersonVerdict, review_agreement

    run = RunReader(run_dir)
    file = ReviewFile(run.root, writer=False)
    if not file.path.is_file():
        raise UserError(f"{run.root}: no {file.path.name} yet; review the run's labels first: cai review {run.root}")
    verdicts = standing(file.read())
    if not verdicts:
        raise UserError(f"{file.path}: no verdicts stand (every one was undone)")
    wanted = {pid for _, pid in verdicts}
    pairs = {c.id: c for c in run.records("comparisons") if c.id in wanted}
    people = [PersonVerdict(r.pair_id, r.reviewer, r.preferred_id) for r in verdicts.values()]
    result = {
        "kind": "reviews",
        "run": str(run.root),
        "reviews_file": str(file.path),
        "written": now(),
        "bins": bins,
        "seed": seed,
        **review_agreement(pairs, people, bins, seed),
    }
    path = run.root / AGREEMENT_FILE
    tmp = path.with_suffix(".json.tmp")
    with writing(path):
        tmp.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    return result


def agreement_tables(r: dict):
    from rich.table import Table

    from .tables import fmt, rate_text

    rates = r["rates"]
    people = ", ".join(f"{who} ({n})" for who, n in r["reviewers"].items())
    t = Table("measure", "value", title=f"AI labels against people: {r['pairs_reviewed']} pairs of {r['run']}")
    t.add_row("agreement (can't tell left out)", rate_text(rates["agreement"]))
    t.add_row("can't tell (share of verdicts)", f"{r['cant_tell']}: {rate_text(rates['cant_tell'])}")
    if rates.get("between_reviewers"):
        t.add_row("reviewers agreeing with each other", rate_text(rates["between_reviewers"]))
    t.add_row("reviewers", people or "-")
    if r["not_in_run"]:
        t.add_row("verdicts on pairs no longer in the run", str(r["not_in_run"]))
    yield t
    t = Table("principle", "verdicts", "can't tell", "pair's label", "principle's own reading", title="per principle")
    for pid, v in r["by_principle"].items():
        t.add_row(pid, str(v["reviews"]), str(v["cant_tell"]), rate_text(v["agreement"]), rate_text(v["own_reading"]))
    yield t
    t = Table("p_chosen", "verdicts", "can't tell", "mean p_chosen", "agreement", title="per confidence of the label")
    for row in r["by_confidence"]:
        n, unsure = str(row["reviews"]), str(row["cant_tell"])
        t.add_row(row["bin"], n, unsure, fmt(row["mean_p_chosen"]), rate_text(row["agreement"]))
    yield t
