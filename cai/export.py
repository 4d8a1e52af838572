"""`cai export`: a run directory's records (every shard) → TRL datasets and a dataset card."""

from __future__ import annotations

from pathlib import Path

from cai.constitution import UserError
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
    texts = run.texts()
    try:
        rows = build_rows(
            run.records("queries"), run.records("revisions"), run.records("comparisons"), texts, cfg.export
        )
        card = {
            "title": f"cai: {c.name}",
            "constitution": {"name": c.name, "version": c.version, "hash": c.content_hash()},
            "policy": cfg.policy.model_dump(),
            "feedback": cfg.feedback_backend.model_dump(),
            "config": cfg.model_dump(mode="json"),
        }
        return write_export(rows, dest or Path(out) / "datasets", card, fmt or cfg.export.format, cfg.export.shard_rows)
    finally:
        texts.close()
