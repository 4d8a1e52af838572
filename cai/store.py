"""The run directory: append-only stage files, errors, a frozen config, a manifest.

Each batch is written as one `write` followed by fsync, so `kill -9` loses at most the batch in
flight and can tear at most the last line; loading drops that torn line and truncates it away
so the next append starts clean. Records are never rewritten, so nothing is written twice.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from cai.constitution import UserError

M = TypeVar("M", bound=BaseModel)


class RunStore:
    def __init__(self, root: str | Path, shard: tuple[int, int] | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.suffix = f".shard-{shard[0]}-of-{shard[1]}" if shard and shard[1] > 1 else ""

    # -- files -------------------------------------------------------------------------------

    def stage_path(self, stage: str) -> Path:
        return self.root / f"{stage}{self.suffix}.jsonl"

    def _read_lines(self, path: Path) -> list[dict]:
        if not path.exists():
            return []
        data = path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a torn last line from a killed writer
            with open(path, "r+b") as f:
                f.truncate(end)
            data = data[:end]
        rows = []
        for lineno, line in enumerate(data.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UserError(
                    f"{path}:{lineno}: corrupt record ({e.msg}); remove the line or start a new --out"
                ) from None
        return rows

    def load(self, stage: str, model: type[M], all_shards: bool = False) -> list[M]:
        paths = sorted(self.root.glob(f"{stage}*.jsonl")) if all_shards else [self.stage_path(stage)]
        out, seen = [], set()
        for path in paths:
            for lineno, row in enumerate(self._read_lines(path), 1):
                try:
                    rec = model.model_validate(row)
                except Exception as e:
                    raise UserError(
                        f"{path}:{lineno}: not a {model.__name__} record: {str(e).splitlines()[0]}"
                    ) from None
                if rec.id not in seen:  # type: ignore[attr-defined]
                    seen.add(rec.id)  # type: ignore[attr-defined]
                    out.append(rec)
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
