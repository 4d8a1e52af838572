"""Loading exported datasets for training, with clear errors for missing, empty or wrong data."""

from __future__ import annotations

from pathlib import Path

from cai.constitution import UserError

REQUIRED = {"sft": ["messages"], "prefs": ["prompt", "chosen", "rejected"], "prompts": ["prompt"]}


def load_split(source: str, kind: str, split: str = "train"):
    """`source` is a run's export folder (or a run folder), or one JSONL/Parquet file."""
    from datasets import load_dataset

    path = Path(source)
    if path.is_dir() and (path / "datasets").is_dir() and not (path / f"{split}_{kind}.jsonl").exists():
        path = path / "datasets"
    if path.is_dir():
        file = path / f"{split}_{kind}.jsonl"
        if not file.exists():
            raise UserError(f"{path}: no {split}_{kind}.jsonl (was the run exported with {kind} data?)")
    elif path.is_file():
        file = path
    else:
        raise UserError(f"{source}: dataset not found")
    fmt = "parquet" if file.suffix == ".parquet" else "json"
    if file.stat().st_size == 0:
        raise UserError(f"{file}: dataset is empty")
    try:
        ds = load_dataset(fmt, data_files=str(file), split="train")
    except Exception as e:  # datasets raises many types for unreadable files
        raise UserError(f"{file}: cannot read as {fmt}: {(str(e).splitlines() or [type(e).__name__])[0]}") from None
    if len(ds) == 0:
        raise UserError(f"{file}: dataset is empty")
    missing = [c for c in REQUIRED[kind] if c not in ds.column_names]
    if missing:
        raise UserError(f"{file}: missing column(s) {', '.join(missing)} for {kind} data")
    return ds
