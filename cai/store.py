"""The run directory: append-only stage files, errors, a frozen config, a manifest.

Each batch is written as one `write` followed by fsync, so `kill -9` loses at most the batch in
flight and can tear at most the last line; loading drops that torn line and truncates it away
so the next append starts clean. Records are never rewritten, so nothing is written twice.
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from cai.core.errors import UserError

M = TypeVar("M", bound=BaseModel)
_ID_PREFIX = b'{"id":"'


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """What the disk refuses (full, read-only, immutable, no permission) as one line naming the file.

    Records are appended whole and fsynced, so what was written before stays; a line cut by a full
    disk is the torn last line a rerun repairs."""
    try:
        yield
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"{path}: no space left on device; free some and rerun: nothing written is lost") from None
        raise UserError(f"{path}: cannot write ({e.strerror or e})") from None


def read_manifest(path: Path) -> dict:
    """A manifest, checked: a corrupt or hand-edited one is one line naming it, not a traceback."""
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: corrupt manifest ({e.msg}); delete it and rerun: it is rebuilt") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read the manifest ({e})") from None
    stages = m.get("stages") if isinstance(m, dict) else None
    if not isinstance(stages, dict) or not all(isinstance(s, dict) for s in stages.values()):
        raise UserError(
            f"{path}: not a manifest (expected an object with 'stages'); delete it and rerun: it is rebuilt"
        )
    for name, s in stages.items():
        for key in ("records", "planned", "tokens", "errors", "config_version"):
            if s.get(key) is not None and not isinstance(s[key], int):
                raise UserError(f"{path}: stages.{name}.{key}: expected a whole number; delete the file and rerun")
        if s.get("seconds") is not None and not isinstance(s["seconds"], int | float):
            raise UserError(f"{path}: stages.{name}.seconds: expected a number; delete the file and rerun")
    return m


def record_id_of(line: bytes, path: Path, lineno: int) -> str:
    """A stage line's id without parsing the record: records are dumped with `id` first."""
    if line.startswith(_ID_PREFIX):
        end = line.find(b'"', len(_ID_PREFIX))
        if end > 0:
            return line[len(_ID_PREFIX) : end].decode()
    try:
        return json.loads(line)["id"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{path}:{lineno}: corrupt record; remove the line or start a new --out") from None


class RunStore:
    def __init__(self, root: str | Path, shard: tuple[int, int] | None = None, create: bool = True):
        self.root = Path(root)
        self.create = create
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        self.suffix = f".shard-{shard[0]}-of-{shard[1]}" if shard and shard[1] > 1 else ""

    def stage_path(self, stage: str) -> Path:
        return self.root / f"{stage}{self.suffix}.jsonl"

    def _repair(self, path: Path) -> None:
        """Cut a torn last line (a killed writer) so the next append starts on a fresh line."""
        size = path.stat().st_size
        if size == 0:
            return
        with writing(path), open(path, "r+b") as f:
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            pos = size  # walk back to the last newline in blocks, never reading the whole file
            while pos > 0:
                step = min(1 << 16, pos)
                pos -= step
                f.seek(pos)
                i = f.read(step).rfind(b"\n")
                if i >= 0:
                    f.truncate(pos + i + 1)
                    return
            f.truncate(0)

    def iter_lines_at(self, path: Path) -> Iterator[tuple[int, int, bytes]]:
        """(byte offset, line number, line) of a stage file, streamed; a torn last line is cut first."""
        if not path.exists():
            return
        if self._writable(path):
            self._repair(path)
        offset = 0
        with open(path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip() and line.endswith(b"\n"):  # a torn line of a live writer is not read yet
                    yield offset, lineno, line
                offset += len(line)

    def _writable(self, path: Path) -> bool:
        """Only a writing store repairs, and only its own shard's files: another shard's writer may be live."""
        rest = path.name.partition(".")[2]
        return self.create and rest == (f"{self.suffix[1:]}.jsonl" if self.suffix else "jsonl")

    def _iter_lines(self, path: Path) -> Iterator[tuple[int, bytes]]:
        for _, lineno, line in self.iter_lines_at(path):
            yield lineno, line

    def rows(self, path: Path) -> Iterator[tuple[int, dict]]:
        """(line number, parsed row) of a JSONL file of this run."""
        for _, lineno, row in self.rows_at(path):
            yield lineno, row

    def rows_at(self, path: Path) -> Iterator[tuple[int, int, dict]]:
        """(byte offset, line number, parsed row) of a JSONL file of this run."""
        for offset, lineno, line in self.iter_lines_at(path):
            try:
                yield offset, lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(
                    f"{path}:{lineno}: corrupt record ({e.msg}); remove the line or start a new --out"
                ) from None

    def _read_lines(self, path: Path) -> list[dict]:
        return [row for _, row in self.rows(path)]

    def stage_paths(self, stage: str, all_shards: bool = False) -> list[Path]:
        """This shard's file of a stage, or every shard's (`stage.jsonl` and `stage.shard-i-of-n.jsonl`)."""
        if not all_shards:
            return [self.stage_path(stage)]
        return sorted(p for p in self.root.glob(f"{stage}*.jsonl") if p.name.split(".", 1)[0] == stage)

    def iter_records(self, stage: str, model: type[M], all_shards: bool = False) -> Iterator[M]:
        """Records of a stage, validated one line at a time; an id seen before is skipped."""
        seen: set[str] = set()
        for path in self.stage_paths(stage, all_shards):
            for lineno, row in self.rows(path):
                try:
                    rec = model.model_validate(row)
                except Exception as e:
                    raise UserError(
                        f"{path}:{lineno}: not a {model.__name__} record: {str(e).splitlines()[0]}"
                    ) from None
                if rec.id not in seen:  # type: ignore[attr-defined]
                    seen.add(rec.id)  # type: ignore[attr-defined]
                    yield rec

    def load(self, stage: str, model: type[M], all_shards: bool = False) -> list[M]:
        return list(self.iter_records(stage, model, all_shards))

    def ids(self, stage: str, all_shards: bool = False) -> set[str]:
        """The ids in a stage's files without building records: what planning a rerun needs."""
        out: set[str] = set()
        for path in self.stage_paths(stage, all_shards):
            for lineno, line in self._iter_lines(path):
                out.add(record_id_of(line, path, lineno))
        return out

    def _append(self, path: Path, rows: list[str]) -> None:
        if not rows:
            return
        with writing(path), open(path, "a", encoding="utf-8") as f:
            f.write("".join(r + "\n" for r in rows))
            f.flush()
            os.fsync(f.fileno())

    def append(self, stage: str, records: list[BaseModel]) -> None:
        self._append(self.stage_path(stage), [r.model_dump_json() for r in records])

    def set_state(self, stage: str, state: str) -> None:
        """Mark a stage's state (`stopped` when a signal ends the run) if the manifest has it."""
        if stage in self.manifest()["stages"]:
            self.update_manifest(stage, state=state)

    def append_errors(self, stage: str, errors: list[dict]) -> None:
        rows = [
            json.dumps({"stage": stage, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **e}, ensure_ascii=False)
            for e in errors
        ]
        self._append(self.root / f"errors{self.suffix}.jsonl", rows)

    def failures(self, stage: str) -> dict[str, dict]:
        """Per failed task of this shard: attempts so far, and the last error and its kind."""
        out: dict[str, dict] = {}
        for e in self._read_lines(self.root / f"errors{self.suffix}.jsonl"):
            if e.get("stage") != stage:
                continue
            f = out.setdefault(e["task_id"], {"attempts": 0})
            f["attempts"] = max(f["attempts"] + 1, e.get("attempt", 0))
            f["error"], f["kind"] = e.get("error", ""), e.get("kind", "permanent")  # older records: not retried
        return out

    def aside_paths(self, stage: str) -> list[Path]:
        """This shard's files of a stage moved aside by config changes (`superseded/vNNN/`)."""
        return sorted((self.root / "superseded").glob(f"v*/{self.stage_path(stage).name}"))

    def aside_ids(self, stage: str) -> set[str]:
        return {rid for path in self.aside_paths(stage) for rid in self.ids_in(path)}

    def reconcile(self, stage: str, move: set[str], restore: set[str], version: int) -> tuple[int, int]:
        """Move the records `move` names out of this shard's stage file to `superseded/vNNN/` (NNN: the
        config they were kept under), and take the records `restore` names back from `superseded/`,
        so the stage file holds what the current config wants. One rewrite of the stage file; the
        records moved aside are written there first, so a kill in between loses nothing.
        Returns (records restored, records moved aside)."""
        path = self.stage_path(stage)
        keep: list[bytes] = []
        aside: list[bytes] = []
        back: list[bytes] = []
        seen: set[str] = set()
        for lineno, line in self._iter_lines(path) if path.exists() else ():
            rid = record_id_of(line, path, lineno)
            if rid not in seen:
                seen.add(rid)
                (aside if rid in move else keep).append(line)
        for src in self.aside_paths(stage) if restore else ():
            for lineno, line in self._iter_lines(src):
                rid = record_id_of(line, src, lineno)
                if rid in restore and rid not in seen:
                    seen.add(rid)
                    back.append(line)
        if not aside and not back:
            return 0, 0
        if aside:
            target = self.root / "superseded" / f"v{version:03d}" / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            self._append(target, [line.decode().rstrip("\n") for line in aside])
        tmp = path.with_suffix(".jsonl.tmp")
        with writing(path):
            try:
                with open(tmp, "wb") as f:
                    f.writelines(keep + back)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        return len(back), len(aside)

    def ids_in(self, path: Path) -> set[str]:
        return {record_id_of(line, path, n) for n, line in self._iter_lines(path)} if path.exists() else set()

    @property
    def manifest_path(self) -> Path:
        return self.root / f"manifest{self.suffix}.json"

    def manifest(self) -> dict:
        if self.manifest_path.exists():
            return read_manifest(self.manifest_path)
        return {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "stages": {}}

    def update_manifest(self, stage: str, **fields) -> None:
        """Set a stage's figures (records, planned, tokens, seconds, errors, ...): totals, not increments,
        so a reader on another machine (`cai status`) sees a consistent stage while it runs."""
        m = self.manifest()
        s = m["stages"].setdefault(stage, {})
        s.update(fields)
        s["updated"] = m["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        tmp = self.manifest_path.with_suffix(".tmp")
        with writing(self.manifest_path):
            tmp.write_text(json.dumps(m, indent=2))
            os.replace(tmp, self.manifest_path)
