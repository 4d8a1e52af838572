"""Records as planning sees them: ids, links and where each text lies, not the texts.

A rerun of a million-pair run plans every stage again to find what is left. Every planned task
needs its inputs' ids; only a task that runs needs their texts. Held as records for that, an
answer took about 1.3 KB and a query 1.7 KB (a million pairs: 600k answers and 170k queries, over
a gigabyte); a reference holds the ids and a byte offset (about 0.2 KB). Planned tasks carry
references, and the pipeline turns a task's references into records (`record()`) only for the
tasks that run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cai.core.errors import UserError
from cai.critique.records import Revision
from cai.generators.records import Query, Response

from .store import RunStore


class LineFile:
    """A stage file, opened at its first read; a line read back by its byte offset."""

    def __init__(self, path: Path):
        self.path = path
        self._f = None

    def row(self, offset: int) -> dict[str, Any]:
        if self._f is None:
            self._f = open(self.path, "rb")  # noqa: SIM115 - kept open for many reads, closed by close()
        self._f.seek(offset)
        line = self._f.readline()
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            where = f"{self.path}:{self._lineno(offset)}"
            raise UserError(
                f"{where}: corrupt record ({e.msg}); remove the line and rerun the run to remake it"
            ) from None
        if not isinstance(row, dict):
            raise UserError(f"{self.path}:{self._lineno(offset)}: corrupt record (not an object)")
        return row

    def _lineno(self, offset: int) -> int:
        with open(self.path, "rb") as f:
            return f.read(offset).count(b"\n") + 1

    @property
    def opened(self) -> bool:
        """Whether a line has been read back from it (planning a finished rerun reads none)."""
        return self._f is not None

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


@dataclass(frozen=True, slots=True)
class QueryRef:
    """A kept query (or a turn of a conversation): its id and what planning reads of it (the ids of
    its principles and traits, how many user turns it holds, which record a follow-up continues)."""

    id: str
    principle_ids: tuple[str, ...]
    trait_ids: tuple[str, ...]
    file: LineFile
    offset: int
    turns: int = 1
    parent: str | None = None

    def record(self) -> Query:
        return Query.model_validate(self.file.row(self.offset))


@dataclass(frozen=True, slots=True)
class AnswerRef:
    """An answer (or a teacher's answer): what planning reads of it, and where the rest is."""

    id: str
    query_id: str
    sample_index: int
    dropped: str | None
    file: LineFile
    offset: int

    @property
    def text(self) -> str:
        return self.file.row(self.offset)["text"]

    def record(self) -> Response:
        return Response.model_validate(self.file.row(self.offset))


@dataclass(frozen=True, slots=True)
class RevisionRef:
    """A revision: its links, whether the final text differs from the initial, and where both are."""

    id: str
    query_id: str
    response_id: str
    changed: bool
    file: LineFile
    offset: int

    @property
    def initial(self) -> str:
        return self.file.row(self.offset)["initial"]

    @property
    def final(self) -> str:
        return self.file.row(self.offset)["final"]

    def record(self) -> Revision:
        return Revision.model_validate(self.file.row(self.offset))


class Refs:
    """Builds references to this shard's records of a stage (an id seen before is skipped, as
    `RunStore.iter_records` does) and closes the files they read from."""

    def __init__(self, store: RunStore):
        self.store = store
        self.files: list[LineFile] = []

    def _rows(self, stage: str):
        seen: set[str] = set()
        for path in self.store.stage_paths(stage):
            file = LineFile(path)
            self.files.append(file)
            for offset, lineno, row in self.store.rows_at(path):
                rid = row.get("id") if isinstance(row, dict) else None
                if not isinstance(rid, str):
                    raise UserError(f"{path}:{lineno}: a record without an id; remove the line or start a new --out")
                if rid not in seen:
                    seen.add(rid)
                    yield file, offset, lineno, row

    def queries(self, stage: str = "queries") -> list[QueryRef]:
        """The kept queries (or turns) on disk (a dropped one is on record with the reason, and not used)."""
        out = []
        for file, offset, lineno, row in self._rows(stage):
            if row.get("dropped") is not None:
                continue
            try:
                principles, traits = tuple(row.get("principle_ids", ())), tuple(row.get("trait_ids", ()))
                turns = sum(1 for m in row["messages"] if m.get("role") == "user")
                out.append(QueryRef(row["id"], principles, traits, file, offset, turns, row.get("parent_id")))
            except (KeyError, TypeError, AttributeError):
                raise UserError(f"{file.path}:{lineno}: not a Query record") from None
        return out

    def find(self, stage: str, rid: str) -> QueryRef:
        """One record of a stage by id (a turn a follow-up continues, written in this run)."""
        for ref in self.queries(stage):
            if ref.id == rid:
                return ref
        raise KeyError(rid)

    def answers(self, stage: str = "responses", query_ids: dict[str, str] | None = None) -> list[AnswerRef]:
        """The answers (`responses`) or teacher answers (`teacher`) on disk. `query_ids` (id → id)
        lets each answer share its query's id string instead of holding a copy."""
        out = []
        canon = query_ids or {}
        for file, offset, lineno, row in self._rows(stage):
            try:
                qid = canon.get(row["query_id"], row["query_id"])
                ref = AnswerRef(row["id"], qid, int(row["sample_index"]), row.get("dropped"), file, offset)
            except (KeyError, TypeError, ValueError):
                raise UserError(f"{file.path}:{lineno}: not a Response record") from None
            out.append(ref)
        return out

    def revisions(self) -> list[RevisionRef]:
        out = []
        for file, offset, lineno, row in self._rows("revisions"):
            try:
                changed = row["final"] != row["initial"]
                ref = RevisionRef(row["id"], row["query_id"], row["response_id"], changed, file, offset)
            except (KeyError, TypeError):
                raise UserError(f"{file.path}:{lineno}: not a Revision record") from None
            out.append(ref)
        return out

    def close(self) -> None:
        for f in self.files:
            f.close()
        self.files.clear()
