"""Loading exported datasets for training, with clear errors for missing, empty or wrong data."""

from __future__ import annotations

from pathlib import Path

from cai.core.errors import UserError

from .export_files import split_files

REQUIRED = {"sft": ["messages"], "prefs": ["prompt", "chosen", "rejected"], "prompts": ["prompt"]}


def load_split(source: str, kind: str, split: str = "train"):
    """`source` is a run's export folder (or a run folder), or one JSONL/Parquet file."""
    from datasets import load_dataset

    path = Path(source)
    if path.is_dir() and (path / "datasets").is_dir() and not split_files(path, split, kind):
        path = path / "datasets"
    if path.is_dir():
        files = split_files(path, split, kind)
        if not files:
            raise UserError(f"{path}: no {split}_{kind} data files (was the run exported with {kind} data?)")
    elif path.is_file():
        files = [path]
    else:
        raise UserError(f"{source}: dataset not found")
    file = files[0] if len(files) == 1 else path
    fmt = "parquet" if files[0].suffix == ".parquet" else "json"
    if all(f.stat().st_size == 0 for f in files):
        raise UserError(f"{file}: dataset is empty")
    try:
        ds = load_dataset(fmt, data_files=[str(f) for f in files], split="train")
    except Exception as e:  # datasets raises many types for unreadable files
        raise UserError(f"{file}: cannot read as {fmt}: {(str(e).splitlines() or [type(e).__name__])[0]}") from None
    if len(ds) == 0:
        raise UserError(f"{file}: dataset is empty")
    missing = [c for c in REQUIRED[kind] if c not in ds.column_names]
    if missing:
        raise UserError(f"{file}: missing column(s) {', '.join(missing)} for {kind} data")
    return ds
