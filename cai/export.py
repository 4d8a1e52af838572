"""`cai export`: a run directory's records (every shard) → TRL datasets and a dataset card."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from cai.constitution import UserError
from cai.generators.queries import Deduplicator
from cai.generators.records import Query
from cai.training.export import build_rows, write_export

from .history import lagging_shards
from .reader import RunReader


def export_run(out: Path, dest: Path | None = None, fmt: str | None = None) -> dict[str, int]:
    """Stream every shard's records into `dest` (default RUN/datasets); returns rows per split."""
    run = RunReader(out)
    behind = lagging_shards(Path(out))
    if behind:
        raise UserError(
            f"{out}: shard(s) {', '.join(behind)} last ran with an older config than configs/index.json's latest; "
            "rerun them with the current config before exporting, so old and new records do not mix"
        )
    cfg, c = run.config, run.constitution
    queries: Iterable[Query] = run.records("queries")
    duplicates = None
    if len(run.store.stage_paths("queries", all_shards=True)) > 1:
        queries, duplicates = drop_duplicates_across_shards(queries, cfg.queries.near_duplicate)
    texts = run.texts()
    try:
        rows = build_rows(
            queries,
            run.records("revisions"),
            run.records("comparisons"),
            texts,
            cfg.export,
            run.records("introspection"),
        )
        card = {
            "title": f"cai: {c.name}",
            "constitution": {"name": c.name, "version": c.version, "hash": c.content_hash()},
            "policy": cfg.policy.model_dump(),
            "feedback": cfg.feedback_backend.model_dump(),
            "config": cfg.model_dump(mode="json"),
        }
        if cfg.comparisons.mode != "rank":
            card["teacher"] = cfg.teacher_backend.model_dump()
        if cfg.introspection is not None:
            card["introspection"] = {
                "model": cfg.introspection_backend.model_dump(),
                "constitution_in_system_prompt": cfg.introspection.with_constitution,
            }
        if duplicates is not None:
            card["near_duplicates_across_shards"] = duplicates
        return write_export(rows, dest or Path(out) / "datasets", card, fmt or cfg.export.format, cfg.export.shard_rows)
    finally:
        texts.close()


def drop_duplicates_across_shards(queries: Iterable[Query], threshold: float) -> tuple[list[Query], int]:
    """Each shard drops the near-duplicates it writes, but cannot see the other shards' queries; here
    all of them meet. As in a run, seed queries are kept and only a generated query like an earlier
    one (seeds first, then shard by shard) is dropped, with everything made from it."""
    kept = [q for q in queries if q.dropped is None]
    dedupe = Deduplicator(threshold)
    for q in kept:
        if q.origin == "seed":
            dedupe.check(q.id, q.text)
    out, dropped = [], 0
    for q in kept:
        if q.origin != "seed" and dedupe.check(q.id, q.text) is not None:
            dropped += 1
        else:
            out.append(q)
    return out, dropped
