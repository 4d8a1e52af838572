"""Records → TRL conversational datasets, loadable with `datasets`.

Splits go by query, never by record: every answer, revision and pair of one query lands in the
same split, so a test pair never shares its prompt with a training pair.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from cai.critique.records import Comparison, Introspection, Revision
from cai.generators.records import Query

from .export_files import SPLITS, write_export

__all__ = ["SPLITS", "ExportConfig", "LengthControl", "build_rows", "is_test", "length_points", "write_export"]


class ExportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    test_fraction: float = Field(0.1, ge=0, lt=1, description="Share of queries held out for the test splits.")
    min_p_chosen: float = Field(0.5, ge=0.5, le=1, description="Drop pairs whose soft label is below this.")
    format: Literal["jsonl", "parquet"] = Field(
        "jsonl", description="jsonl for small runs; parquet (zstd, sharded) for large ones, as the Hub prefers."
    )
    shard_rows: int = Field(250_000, ge=1, description="Rows per Parquet file.")


def is_test(query_id: str, fraction: float) -> bool:
    h = int.from_bytes(hashlib.sha256(query_id.encode()).digest()[:8], "big")
    return h / 2**64 < fraction


def words(text: str) -> int:
    return len(text.split())


def length_points(comparisons: Iterable[Comparison], texts: Mapping[str, str]) -> tuple[array, array, list[str]]:
    """Per ranked pair (not distillation pairs, whose label is set, not read): how many more words
    (per 100) its first answer has than its second, its soft label seen from the first answer, and
    its kind. One streaming pass; the points are held as compact arrays."""
    x, y, kinds = array("d"), array("d"), []
    for c in comparisons:
        if c.kind == "distill":
            continue
        first, second = texts.get(c.first_id), texts.get(c.second_id)
        if first is None or second is None:
            continue
        x.append((words(first) - words(second)) / 100)
        y.append(c.p_first)
        kinds.append(c.kind)
    return x, y, kinds


@dataclass(frozen=True)
class LengthControl:
    """The slope of a run's soft labels on the answers' length difference (per 100 words), and how
    a label is corrected for it: the label the pair would get at equal length, p − slope ×
    difference, kept within [0, 1]. Taking the fitted slope out of every label leaves labels with
    no slope on length; an answer that is better for what it says, not for its length, keeps its
    win. A pair whose corrected label crosses 1/2 changes which answer is chosen."""

    slope: float | None
    low: float | None
    high: float | None
    n: int

    def card(self) -> dict:
        return {
            "slope_per_100_words": self.slope,
            "ci95": [self.low, self.high],
            "n": self.n,
            "fitted": "least squares of the soft label on (words of one answer - words of the other) / 100 over the "
            "run's ranked pairs, an intercept per kind of pair (samples, revision); distillation pairs are not "
            "corrected",
            "rows": "p_chosen is the corrected label, p_chosen_raw the label as ranked (both of the row's chosen "
            "answer); chosen and rejected swap where the corrected label crosses 1/2",
        }

    def relabel(self, c: Comparison, chosen: str, rejected: str) -> tuple[str, str, float, float]:
        """(chosen text, rejected text, corrected p_chosen, raw p_chosen) of a pair."""
        if c.kind == "distill" or self.slope is None:
            return chosen, rejected, c.p_chosen, c.p_chosen
        first, second = (chosen, rejected) if c.chosen_id == c.first_id else (rejected, chosen)
        p = min(1.0, max(0.0, c.p_first - self.slope * (words(first) - words(second)) / 100))
        return (first, second, p, c.p_first) if p >= 0.5 else (second, first, 1.0 - p, 1.0 - c.p_first)


def build_rows(
    queries: Iterable[Query],
    revisions: Iterable[Revision],
    comparisons: Iterable[Comparison],
    texts: Mapping[str, str],
    cfg: ExportConfig,
    introspections: Iterable[Introspection] = (),
    length: LengthControl | None = None,
) -> Iterator[tuple[str, dict]]:
    """(split name, row) pairs, streamed: queries are held as messages by id, answers looked up in
    `texts` (answers, teacher answers and revision finals by id) only when a pair needs them.
    SFT rows say what they are (`kind`): a query's final revision, or an introspection (a
    self-reflection or a self-interaction, split by its own id since it has no query). With
    `length`, preference rows carry the length-corrected label and the raw one."""
    kept: dict[str, list[dict]] = {}

    def split(qid: str) -> str:
        return "test" if is_test(qid, cfg.test_fraction) else "train"

    for q in queries:
        if q.dropped is not None:
            continue
        kept[q.id] = q.messages
        yield (
            f"{split(q.id)}_prompts",
            {"prompt": q.messages, "query_id": q.id, "principle_ids": q.principle_ids + q.trait_ids},
        )
    for v in revisions:
        messages = kept.get(v.query_id)
        if messages is None or not v.final.strip():
            continue
        yield (
            f"{split(v.query_id)}_sft",
            {
                "messages": messages + [{"role": "assistant", "content": v.final}],
                "query_id": v.query_id,
                "principle_ids": v.principle_ids,
                "kind": "revision",
            },
        )
    for i in introspections:
        if i.dropped is not None:
            continue
        yield (
            f"{split(i.id)}_sft",
            {"messages": i.messages, "query_id": None, "principle_ids": [i.trait_id], "kind": "introspection"},
        )
    for c in comparisons:
        messages = kept.get(c.query_id)
        if messages is None or (length is None and c.p_chosen < cfg.min_p_chosen):
            continue
        chosen, rejected = texts.get(c.chosen_id), texts.get(c.rejected_id)
        if chosen is None or rejected is None:
            continue
        p_chosen, raw = c.p_chosen, {}
        if length is not None:
            chosen, rejected, p_chosen, p_raw = length.relabel(c, chosen, rejected)
            if p_chosen < cfg.min_p_chosen:
                continue
            raw = {"p_chosen_raw": p_raw}
        yield (
            f"{split(c.query_id)}_prefs",
            {
                "prompt": messages,
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
                "p_chosen": p_chosen,
                **raw,
                "principle_ids": c.principle_ids,
                "kind": c.kind,
                "query_id": c.query_id,
            },
        )
