"""Records → TRL conversational datasets, loadable with `datasets`.

Splits go by query, never by record: every answer, revision and pair of one query lands in the
same split, so a test pair never shares its prompt with a training pair.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from cai.critique.records import Comparison, Introspection, Revision
from cai.generators.records import Query

from .export_files import SPLITS, write_export

__all__ = ["SPLITS", "ExportConfig", "build_rows", "is_test", "write_export"]


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


def build_rows(
    queries: Iterable[Query],
    revisions: Iterable[Revision],
    comparisons: Iterable[Comparison],
    texts: Mapping[str, str],
    cfg: ExportConfig,
    introspections: Iterable[Introspection] = (),
) -> Iterator[tuple[str, dict]]:
    """(split name, row) pairs, streamed: queries are held as messages by id, answers looked up in
    `texts` (answers, teacher answers and revision finals by id) only when a pair needs them.
    SFT rows say what they are (`kind`): a query's final revision, or an introspection (a
    self-reflection or a self-interaction, split by its own id since it has no query)."""
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
        if messages is None or c.p_chosen < cfg.min_p_chosen:
            continue
        chosen, rejected = texts.get(c.chosen_id), texts.get(c.rejected_id)
        if chosen is None or rejected is None:
            continue
        yield (
            f"{split(c.query_id)}_prefs",
            {
                "prompt": messages,
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
                "p_chosen": c.p_chosen,
                "principle_ids": c.principle_ids,
                "kind": c.kind,
                "query_id": c.query_id,
            },
        )
