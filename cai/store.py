"""The run directory: append-only stage files, errors, a frozen config, a manifest.

Each batch is written as one `write` followed by fsync, so `kill -9` loses at most the batch in
flight and can tear at most the last line; loading drops that torn line and truncates it away
so the next append starts clean. Records are never rewritten, so nothing is written twice.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from cai.constitution import UserError

M = TypeVar("M", bound=BaseModel)
_ID_PREFIX = b'{"id":"'


class RunStore:
    def __init__(self, root: str | Path, shard: tuple[int, int] | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.suffix = f".shard-{shard[0]}-of-{shard[1]}" if shard and shard[1] > 1 else ""

    # -- files -------------------------------------------------------------------------------

    def stage_path(self, stage: str) -> Path:
        return self.root / f"{stage}{self.suffix}.jsonl"

    def _repair(self, path: Path) -> None:
        """Cut a torn last line (a killed writer) so the next append starts on a fresh line."""
        size = path.stat().st_size
        if size == 0:
            return
        with open(path, "r+b") as f:
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

    def _iter_lines(self, path: Path) -> Iterator[tuple[int, bytes]]:
        """(line number, line) of a stage file, streamed; a torn last line is cut first."""
        if not path.exists():
            return
        self._repair(path)
        with open(path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    yield lineno, line

    def _rows(self, path: Path) -> Iterator[tuple[int, dict]]:
        for lineno, line in self._iter_lines(path):
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(
                    f"{path}:{lineno}: corrupt record ({e.msg}); remove the line or start a new --out"
                ) from None

    def _read_lines(self, path: Path) -> list[dict]:
        return [row for _, row in self._rows(path)]

    def stage_paths(self, stage: str, all_shards: bool = False) -> list[Path]:
        """This shard's file of a stage, or every shard's (`stage.jsonl` and `stage.shard-i-of-n.jsonl`)."""
        if not all_shards:
            return [self.stage_path(stage)]
        return sorted(p for p in self.root.glob(f"{stage}*.jsonl") if p.name.split(".", 1)[0] == stage)

    def iter_records(self, stage: str, model: type[M], all_shards: bool = False) -> Iterator[M]:
        """Records of a stage, validated one line at a time; an id seen before is skipped."""
        seen: set[str] = set()
        for path in self.stage_paths(stage, all_shards):
            for lineno, row in self._rows(path):
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
                if line.startswith(_ID_PREFIX):  # records are dumped with `id` first
                    end = line.find(b'"', len(_ID_PREFIX))
                    out.add(line[len(_ID_PREFIX) : end].decode())
                    continue
                try:
                    out.add(json.loads(line)["id"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise UserError(f"{path}:{lineno}: corrupt record; remove the line or start a new --out") from None
        return out

    def _append(self, path: Path, rows: list[str]) -> None:
        if not rows:
            return
        with open(path, "a", encoding="utf-8") as f:
            f.write("".join(r + "\n" for r in rows))
            f.flush()
            os.fsync(f.fileno())

    def append(self, stage: str, records: list[BaseModel]) -> None:
        self._append(self.stage_path(stage), [r.model_dump_json() for r in records])

    def append_errors(self, stage: str, errors: list[dict]) -> None:
        rows = [json.dumps({"stage": stage, **e}, ensure_ascii=False) for e in errors]
        self._append(self.root / f"errors{self.suffix}.jsonl", rows)

    def failed_tasks(self, stage: str) -> set[str]:
        return {
            e["task_id"] for e in self._read_lines(self.root / f"errors{self.suffix}.jsonl") if e.get("stage") == stage
        }

    # -- frozen inputs and manifest ------------------------------------------------------------

    def freeze(self, name: str, text: str) -> None:
        """Write a frozen copy once; a rerun with different content is refused."""
        path = self.root / name
        if path.exists():
            if path.read_text(encoding="utf-8") != text:
                raise UserError(
                    f"{path}: this run was made with a different {name.split('.')[0]}; "
                    "rerun with the same one or choose a new --out"
                )
            return
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)

    @property
    def manifest_path(self) -> Path:
        return self.root / f"manifest{self.suffix}.json"

    def manifest(self) -> dict:
        if self.manifest_path.exists():
            return json.loads(self.manifest_path.read_text())
        return {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "stages": {}}

    def update_manifest(self, stage: str, records: int, tokens: int, seconds: float, errors: int, **extra) -> None:
        m = self.manifest()
        s = m["stages"].setdefault(stage, {"records": 0, "tokens": 0, "seconds": 0.0, "errors": 0})
        s["records"] = records
        s["tokens"] += tokens
        s["seconds"] = round(s["seconds"] + seconds, 3)
        s["errors"] = errors
        s.update(extra)
        m["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        m.update({k: v for k, v in extra.items() if k.startswith("run_")})
        tmp = self.manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(m, indent=2))
        os.replace(tmp, self.manifest_path)
