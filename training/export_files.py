"""Writing an export folder: JSONL or Parquet shards, streamed, swapped in whole, with a card.

Each data file's name carries a fingerprint of its bytes. `datasets` keys its cache for a local
folder by the folder's name and the card (its `configs` patterns and `dataset_info`), not by the
files' contents or the folder's full path: every run's export is called `datasets/`, so with fixed
file names a second run's folder (or one folder re-exported with more rows) would load the first
one's cached rows. With the fingerprint in the card's file patterns, the cache key changes
whenever the data does, and the card's split sizes let `datasets` check what it read.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Literal

import yaml

from cai.core.errors import UserError

SPLITS = ("train_sft", "test_sft", "train_prefs", "test_prefs", "train_prompts", "test_prompts")
ROW_GROUP = 10_000
Format = Literal["jsonl", "parquet"]
MARKER = ".cai-export.json"  # names what was exported and every file the export wrote


def write_export(
    rows: Iterable[tuple[str, dict]] | Mapping[str, list[dict]],
    out: Path,
    card: dict,
    fmt: Format = "jsonl",
    shard_rows: int = 250_000,
    source: str | None = None,
    home: bool = False,
) -> dict[str, int]:
    """Stream `(split, row)` pairs into `out`; returns rows per split.

    The folder is built beside `out` and renamed into place, so a reader never sees half an
    export and no file of an earlier export lingers. `out` must be missing, empty, or an earlier
    export of the same `source` (its marker names it) holding only files that export wrote;
    anything else is refused before a row is read, since replacing it would lose files export did
    not write. With `home`, `out` lives inside the exported run, so any earlier export there is
    that run's (also one from before exports carried a marker, recognised by its card)."""
    shown, out = Path(out), Path(out).resolve()
    earlier = _earlier_export(out, shown, source, home)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = out.with_name(f".{out.name}-{os.getpid()}-{secrets.token_hex(4)}")
        staging.mkdir()  # the umask's mode, as the folder it becomes should have
    except OSError as e:
        raise _disk_error(e, out, shown) from None
    try:
        writers: dict[str, SplitWriter] = {}
        for name, row in _pairs(rows):
            if name not in SPLITS:
                raise ValueError(f"unknown split {name!r}")
            if name not in writers:
                writers[name] = SplitWriter(staging, name, fmt, shard_rows)
            writers[name].write(row)
        names = sorted(writers, key=SPLITS.index)
        files = {name: writers[name].close() for name in names}
        counts = {name: writers[name].count for name in names}
        (staging / "README.md").write_text(dataset_card(files, counts, card, fmt), encoding="utf-8")
        written = ["README.md", *(f for name in names for f in files[name])]
        (staging / MARKER).write_text(json.dumps({"source": source, "files": written}, indent=1) + "\n")
        _swap_in(staging, out, shown, earlier)
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(e, OSError):
            raise _disk_error(e, out, shown) from None
        raise
    return counts


def _pairs(rows: Iterable[tuple[str, dict]] | Mapping[str, list[dict]]) -> Iterator[tuple[str, dict]]:
    if isinstance(rows, Mapping):
        return ((name, row) for name, items in rows.items() for row in items)
    return iter(rows)


class SplitWriter:
    """One split's rows as they come: JSONL lines, or Parquet row groups in shards of `shard_rows`."""

    def __init__(self, folder: Path, name: str, fmt: Format, shard_rows: int):
        self.folder, self.name, self.fmt, self.shard_rows = folder, name, fmt, shard_rows
        self.count = 0
        self._parts: list[Path] = []
        self._buffer: list[dict] = []
        self._jsonl = None
        self._parquet = None
        self._part_rows = 0

    def write(self, row: dict) -> None:
        self.count += 1
        if self.fmt == "jsonl":
            if self._jsonl is None:
                self._parts.append(self.folder / f"{self.name}.part.jsonl")
                self._jsonl = open(self._parts[-1], "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
            self._jsonl.write(json.dumps(row, ensure_ascii=False) + "\n")
            return
        self._buffer.append(row)
        if len(self._buffer) >= min(ROW_GROUP, self.shard_rows - self._part_rows):
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._buffer:
            return
        table = pa.Table.from_pylist(self._buffer, schema=schemas()[self.name.split("_", 1)[1]])
        self._buffer = []
        if self._parquet is None:
            self._parts.append(self.folder / f"{self.name}.part{len(self._parts):05d}.parquet")
            self._parquet = pq.ParquetWriter(self._parts[-1], table.schema, compression="zstd")
            self._part_rows = 0
        self._parquet.write_table(table)
        self._part_rows += table.num_rows
        if self._part_rows >= self.shard_rows:
            self._parquet.close()
            self._parquet = None

    def close(self) -> list[str]:
        """Finish the files and give each its final, content-fingerprinted name."""
        if self._jsonl is not None:
            self._jsonl.close()
        self._flush()
        if self._parquet is not None:
            self._parquet.close()
        names, n = [], len(self._parts)
        for i, part in enumerate(self._parts):
            fp, ext = _file_digest(part), part.suffix[1:]
            name = f"{self.name}-{fp}.{ext}" if n == 1 else f"{self.name}-{i:05d}-of-{n:05d}-{fp}.{ext}"
            part.rename(self.folder / name)
            names.append(name)
        return names


@cache
def schemas() -> dict:
    """Arrow schemas of the three TRL formats, fixed so an empty list in the first rows cannot set a column's type."""
    import pyarrow as pa

    chat = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    ids = pa.list_(pa.string())
    return {
        "sft": pa.schema(
            [("messages", chat), ("query_id", pa.string()), ("principle_ids", ids), ("kind", pa.string())]
        ),
        "prefs": pa.schema(
            [
                ("prompt", chat),
                ("chosen", chat),
                ("rejected", chat),
                ("p_chosen", pa.float64()),
                ("principle_ids", ids),
                ("kind", pa.string()),
                ("query_id", pa.string()),
            ]
        ),
        "prompts": pa.schema([("prompt", chat), ("query_id", pa.string()), ("principle_ids", ids)]),
    }


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


def _swap_in(staging: Path, out: Path, shown: Path, earlier: set[str] | None) -> None:
    """Put `staging` where `out` is. An earlier export is renamed aside first and, once the new one
    is in, only the files it wrote are removed; a file that appeared in it meanwhile stops the swap."""
    if earlier is None:
        try:
            os.rename(staging, out)  # replaces an empty folder, never a filled one
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            raise UserError(f"{shown}: written by another process during the export; nothing replaced") from None
        return
    old = out.with_name(f".{out.name}-old-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.rename(out, old)
    except FileNotFoundError:
        raise UserError(f"{shown}: removed by another process during the export; nothing written") from None
    extra = sorted({p.name for p in old.iterdir()} - earlier)
    if extra:
        os.rename(old, out)
        raise UserError(f"{shown}: {extra[0]} appeared there during the export; nothing replaced")
    try:
        os.rename(staging, out)
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        raise UserError(
            f"{shown}: written by another process during the export; the earlier export is kept in {old}"
        ) from None
    for name in earlier:
        with contextlib.suppress(OSError):
            (old / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        old.rmdir()  # left in place if anything else is in it


def _earlier_export(out: Path, shown: Path, source: str | None, home: bool) -> set[str] | None:
    """The files at `out` that an export may replace: None if there is no folder, else every name in it."""
    if not out.exists():
        if out.is_symlink():
            raise UserError(f"{shown}: a link to a missing folder; export into an empty or new folder")
        return None
    if not out.is_dir():
        raise UserError(f"{shown}: is a file, not a folder; export into an empty or new folder")
    names = sorted(p.name for p in out.iterdir())
    if not names:
        return set()
    marker = _marker(out) or (_unmarked_export(out) if home else None)
    if marker is None:
        raise UserError(f"{shown}: holds {names[0]}, which export did not write and would lose; {_ADVICE}")
    if not home and marker["source"] != source:
        raise UserError(f"{shown}: holds an export of {marker['source'] or 'other data'}, not of {source}; {_ADVICE}")
    written = set(marker["files"]) | {MARKER}
    foreign = [n for n in names if n not in written or (out / n).is_symlink() or not (out / n).is_file()]
    if foreign:
        raise UserError(f"{shown}: holds {foreign[0]}, which export did not write and would lose; {_ADVICE}")
    return set(names)


_ADVICE = "export into an empty or new folder, or move it out first"


def _marker(folder: Path) -> dict | None:
    try:
        m = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(m, dict) or not isinstance(m.get("files"), list):
        return None
    if not all(isinstance(f, str) and f and "/" not in f and f not in (".", "..") for f in m["files"]):
        return None
    return {"source": m.get("source"), "files": m["files"]}


def _unmarked_export(folder: Path) -> dict | None:
    """An export written before the marker: its card and the data files the card lists."""
    try:
        text = (folder / "README.md").read_text(encoding="utf-8")
        header = yaml.safe_load(text.split("---\n", 2)[1]) if text.startswith("---\n") else None
        files = [f for c in header["configs"] for d in c["data_files"] for f in d["path"]]
    except (OSError, ValueError, yaml.YAMLError, IndexError, KeyError, TypeError):
        return None
    if "constitutional-ai" not in (header.get("tags") or []):
        return None
    return {"source": None, "files": ["README.md", *map(str, files)]}


def _disk_error(e: OSError, out: Path, shown: Path) -> OSError | UserError:
    """A full disk, a quota or a read-only folder where the export goes: one line, not a traceback."""
    if e.filename and not str(e.filename).startswith(str(out.parent)):
        return e  # something being read, not written
    if e.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(e):
        return UserError(f"no space left on device while writing {shown}")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UserError(f"{shown}: cannot write there ({e.strerror})")
    return e


def split_files(folder: Path, split: str, kind: str) -> list[Path]:
    """The data files of one split in an export folder (any format, sharded or not)."""
    name = f"{split}_{kind}"
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix in (".jsonl", ".parquet") and (p.stem == name or p.stem.startswith(name + "-"))
    )


def dataset_card(files: dict[str, list[str]], counts: dict[str, int], card: dict, fmt: str) -> str:
    configs: dict[str, list[dict]] = {}
    infos: dict[str, list[dict]] = {}
    for name, paths in files.items():
        split, kind = name.split("_", 1)
        configs.setdefault(kind, []).append({"split": split, "path": paths})
        infos.setdefault(kind, []).append({"name": split, "num_examples": counts[name]})
    header = {
        "configs": [{"config_name": k, "data_files": v} for k, v in configs.items()],
        "dataset_info": [{"config_name": k, "splits": v} for k, v in infos.items()],
        "tags": ["constitutional-ai", "rlaif", "trl"],
    }
    body = [
        f"# {card.get('title', 'cai dataset')}",
        "",
        "Synthetic data made with cai from a constitution, with no human labels.",
        "",
        "| split | rows | files |",
        "|---|---|---|",
        *[f"| {k} | {counts[k]} | {len(v)} × {fmt} |" for k, v in files.items()],
        "",
        "## Provenance",
        "",
        "```yaml",
        yaml.safe_dump(card, sort_keys=False, allow_unicode=True).strip(),
        "```",
        "",
        "Formats: `sft` is TRL conversational (`messages`); `prefs` is TRL conversational preference",
        "(`prompt`, `chosen`, `rejected`) with the soft label `p_chosen` and the `principle_ids` used;",
        '`prompts` is prompt-only for RL. Load one with `datasets.load_dataset(folder, "prefs")`.',
        "Each file name ends in a fingerprint of its contents, so a cache of other data never stands in for it.",
    ]
    return "---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n" + "\n".join(body) + "\n"
