"""The one way to read a run directory: every shard's records, texts by id, config, errors.

Export, the report, the demo and `cai status` all read runs that other processes wrote, often
split over shards (`STAGE.shard-i-of-n.jsonl`). Reading them by hand in each place let the
copies drift (a report that missed shard files and teacher answers), so they all come here.

Texts are looked up through an index of byte offsets rather than held in memory: a run of a
million pairs has hundreds of thousands of answers, and export needs only two of them at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from cai.constitution import Constitution, load_constitution
from cai.core.errors import UserError
from cai.core.files import read_structured, validate_model

from .config import RunConfig
from .refs import LineFile
from .stages import STAGES, text_fields
from .store import RunStore, read_manifest, record_id_of

M = TypeVar("M", bound=BaseModel)

NEWLINE = b"\n"
STAGE_RECORDS: dict[str, type[BaseModel]] = {s.name: s.record for s in STAGES}


class TextIndex:
    """id → text of answers, teacher answers and revisions, read from disk on demand."""

    def __init__(self, store: RunStore, stages: dict[str, str]):
        self._files: list[tuple[LineFile, str]] = []
        self._where: dict[str, tuple[int, int]] = {}
        for stage, fieldname in stages.items():
            for path in store.stage_paths(stage, all_shards=True):
                self._files.append((LineFile(path), fieldname))
                k = len(self._files) - 1
                for offset, lineno, line in store.iter_lines_at(path):
                    self._where.setdefault(record_id_of(line, path, lineno), (k, offset))

    def __contains__(self, rid: object) -> bool:
        return rid in self._where

    def __len__(self) -> int:
        return len(self._where)

    def get(self, rid: str, default: str | None = None) -> str | None:
        where = self._where.get(rid)
        if where is None:
            return default
        k, offset = where
        file, fieldname = self._files[k]
        return file.row(offset)[fieldname]

    def __getitem__(self, rid: str) -> str:
        text = self.get(rid)
        if text is None:
            raise KeyError(rid)
        return text

    def close(self) -> None:
        for file, _ in self._files:
            file.close()


class RunReader:
    """Read-only view of a run directory across all its shards."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not (self.root / "config.yaml").is_file():
            raise UserError(f"{self.root}: not a run directory (no config.yaml)")
        self.store = RunStore(self.root, create=False)

    @cached_property
    def config(self) -> RunConfig:
        path = self.root / "config.yaml"
        data, node = read_structured(path)
        return validate_model(RunConfig, data, node, str(path))

    @cached_property
    def constitution(self) -> Constitution:
        path = self.root / "constitution.yaml"
        if not path.is_file():
            raise UserError(f"{self.root}: no constitution.yaml; the run never started")
        return load_constitution(path)

    def records(self, stage: str, model: type[M] | None = None) -> Iterator[M]:
        """Every shard's records of a stage, streamed, each id once."""
        return self.store.iter_records(stage, model or STAGE_RECORDS[stage], all_shards=True)  # type: ignore[arg-type]

    def load(self, stage: str, model: type[M] | None = None) -> list[M]:
        return list(self.records(stage, model))

    def conversations(self) -> Iterator:
        """The conversations a run's answers answer: its queries, or with `queries.turns: k` each
        query's conversation at its k-th user turn (a seed that holds k turns already, as it is)."""
        k = self.config.queries.turns
        if k == 1:
            yield from self.records("queries")
            return
        for q in self.records("queries"):
            if sum(m["role"] == "user" for m in q.messages) >= k:
                yield q
        for t in self.records("turns"):
            if t.turn == k:
                yield t

    def ids(self, stage: str) -> set[str]:
        return self.store.ids(stage, all_shards=True)

    def texts(self) -> TextIndex:
        return TextIndex(self.store, text_fields())

    def torn_lines(self) -> list[str]:
        """`FILE:LINE` of each stage file whose last line was cut (a run stopped mid-write): its
        record is not read, and what links to it would silently go missing."""
        out = []
        for stage in (*STAGE_RECORDS, "errors"):
            for path in self.store.stage_paths(stage, all_shards=True):
                with open(path, "rb") as f:
                    size = f.seek(0, 2)
                    if size == 0 or (f.seek(size - 1) >= 0 and f.read(1) == NEWLINE):
                        continue
                    f.seek(0)
                    lines = sum(block.count(NEWLINE) for block in iter(lambda: f.read(1 << 20), b""))
                    out.append(f"{path}:{lines + 1}")
        return out

    def errors(self) -> list[dict]:
        """Every shard's error records (`errors.jsonl`, `errors.shard-i-of-n.jsonl`)."""
        return [row for path in self.store.stage_paths("errors", all_shards=True) for _, row in self.store.rows(path)]

    def open_errors(self) -> list[dict]:
        """The last error of each failed task that has not succeeded since (a rerun may have retried it)."""
        last: dict[tuple[str, str], dict] = {}
        for e in self.errors():
            last[(e.get("stage", ""), e.get("task_id", ""))] = e
        done = {stage: self.ids(stage) for stage in {k[0] for k in last} if stage in STAGE_RECORDS}
        return [e for (stage, tid), e in last.items() if tid not in done.get(stage, set())]

    def manifests(self) -> dict[str, dict]:
        """Each shard's manifest, keyed by its file name."""
        return {path.name: read_manifest(path) for path in sorted(self.root.glob("manifest*.json"))}

    def stages(self) -> dict[str, dict]:
        """Per stage, the shards' manifests added up (records, tokens, errors; seconds is the slowest shard's)."""
        total: dict[str, dict] = {}
        for m in self.manifests().values():
            for name, s in m.get("stages", {}).items():
                t = total.setdefault(name, {"records": 0, "tokens": 0, "seconds": 0.0, "errors": 0, "shards": 0})
                t["records"] += s.get("records", 0)
                t["tokens"] += s.get("tokens", 0)
                t["errors"] += s.get("errors", 0)
                t["seconds"] = max(t["seconds"], s.get("seconds", 0.0))
                t["shards"] += 1
        return total
