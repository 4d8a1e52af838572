"""`cai export`: a run directory's records (every shard) → TRL datasets and a dataset card."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from cai.core.errors import UserError
from cai.generators.queries import Deduplicator
from cai.generators.records import Query
from cai.training.export import LengthControl, build_rows, length_points, write_export

from .history import lagging_shards, layers
from .lock import RunLock
from .reader import RunReader


def export_run(out: Path, dest: Path | None = None, fmt: str | None = None) -> dict[str, int]:
    """Stream every shard's records into `dest` (default RUN/datasets); returns rows per split.

    `dest` is replaced as a whole, so it may not be a run, the run itself, a folder that holds
    runs or contains this one; `write_export` refuses any other folder with files it did not write.
    One export at a time per destination: a lock file beside it, so a second one is refused."""
    dest = Path(out) / "datasets" if dest is None else Path(dest)
    check_destination(Path(out), dest)
    run = RunReader(out)
    behind = lagging_shards(Path(out))
    if behind:
        raise UserError(
            f"{out}: shard(s) {', '.join(behind)} last ran with an older config than configs/index.json's latest; "
            "rerun them with the current config before exporting, so old and new records do not mix"
        )
    real = dest.resolve()
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{dest}: cannot create the folder it goes in ({e.strerror})") from None
    with RunLock(real.parent, f"-export-{real.name}", busy=f"{dest}: being exported"):
        return _export(run, Path(out), dest, fmt)


def _export(run: RunReader, out: Path, dest: Path, fmt: str | None) -> dict[str, int]:
    torn = run.torn_lines()
    if torn:
        raise UserError(
            f"{torn[0]}: the last line is cut (the run was stopped mid-write, or is still writing); "
            "rerun `cai run` on it to repair the file, then export"
        )
    cfg, c = run.config, run.constitution
    queries: Iterable[Query] = run.conversations()
    duplicates = None
    if len(run.store.stage_paths("queries", all_shards=True)) > 1:
        queries, duplicates = drop_duplicates_across_shards(queries, cfg.queries.near_duplicate)
    texts = run.texts()
    try:
        length = length_control(run, texts) if cfg.comparisons.length_control else None
        rows = build_rows(
            queries,
            run.records("revisions"),
            run.records("comparisons"),
            texts,
            cfg.export,
            run.records("introspection"),
            length,
        )
        card = {
            "title": f"cai: {c.name}",
            "constitution": {"name": c.name, "version": c.version, "hash": c.content_hash(), **card_layers(out)},
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
        if length is not None:
            card["length_control"] = length.card()
        source = out.resolve()
        fmt = fmt or cfg.export.format
        home = dest.resolve() == source / "datasets"
        return write_export(rows, dest, card, fmt, cfg.export.shard_rows, source=str(source), home=home)
    finally:
        texts.close()


def card_layers(out: Path) -> dict:
    """The layers the constitution was merged from, bases first, each with its content hash (and
    the ranking constitution's, where the comparisons read another)."""
    got = layers(out) or {}
    return {k: v for k, v in (("layers", got.get("constitution")), ("ranking_layers", got.get("ranking"))) if v}


def length_control(run: RunReader, texts) -> LengthControl:
    """The slope of the run's soft labels on the length difference, fitted in a first pass over
    its comparisons (the export's own pass is the second), with its interval."""
    from cai.evaluation.stats import slope_within

    x, y, kinds = length_points(run.records("comparisons"), texts)
    s = slope_within(x, y, kinds, seed=run.config.seed)
    return LengthControl(s.value, s.low, s.high, s.n)


def is_run(folder: Path) -> bool:
    """A run directory: its frozen config, a manifest, its config history, or the files every run
    starts with (queries, errors) of any shard."""
    if (folder / "config.yaml").is_file() or (folder / "configs" / "index.json").is_file():
        return True
    return any(folder.glob("manifest*.json")) or any(folder.glob("queries*.jsonl")) or any(folder.glob("errors*.jsonl"))


def check_destination(run: Path, dest: Path) -> None:
    """Refuse a destination whose replacement would take runs with it, in one line naming it."""
    r, d = run.resolve(), dest.resolve()
    if d == r:
        raise UserError(f"--to {dest}: is the run being exported; give a folder outside it, or leave --to out")
    if d in r.parents:
        raise UserError(f"--to {dest}: contains the run {run}; export into an empty or new folder")
    if not d.is_dir():
        return
    if is_run(d):
        raise UserError(f"--to {dest}: is a run directory; export into an empty or new folder")
    held = next((c.name for c in sorted(d.iterdir()) if c.is_dir() and is_run(c)), None)
    if held:
        raise UserError(f"--to {dest}: holds the run {held}; export into an empty or new folder")


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
