"""Readings kept on disk by what produced them, so an edited constitution re-reads only what changed.

A reading is a pure function of what the feedback model was shown and how the letter was read:
the prompt (conversation, the two answers in their order, the principle's comparison question,
the templates around them), the reading mode, the method and, for CoT, its length and seed, and
the model behind the backend. Its key hashes exactly those, never a principle's id or position
in the file, so after one principle's wording changes only that principle's readings miss; a
renamed or reordered principle still hits.

The store is one SQLite file: safe for two processes at once, and looked up by key without
loading the whole cache into memory. Only readings that worked are stored; a failed one is read
again next time.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

FILE_NAME = "readings.sqlite"


def backend_identity(backend, extra: object = None) -> str:
    """What a cached reading depends on about the model: backend name, model, and `extra`
    (e.g. the backend's options) when the caller knows them."""
    return json.dumps(
        [getattr(backend, "name", type(backend).__name__), getattr(backend, "model", ""), extra],
        sort_keys=True,
        default=str,
    )


class ReadingCache:
    """Letter readings by content hash. `hits` and `misses` count lookups since it was opened.

    `identity` names the model (see `backend_identity`); two backends must not share an identity
    unless they give the same readings.
    """

    def __init__(self, folder: str | Path, identity: str):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / FILE_NAME
        self.identity = identity
        self.hits = self.misses = 0
        self._db = sqlite3.connect(self.path, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS readings (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._db.commit()

    def key(self, *parts: object) -> str:
        blob = json.dumps([self.identity, *parts], sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def lookup(self, keys: list[str]) -> dict[str, dict]:
        """The stored readings among `keys`; counts a hit or a miss for each key."""
        found: dict[str, dict] = {}
        unique = list(dict.fromkeys(keys))
        for i in range(0, len(unique), 500):  # SQLite caps the number of bound parameters
            chunk = unique[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for k, v in self._db.execute(f"SELECT key, value FROM readings WHERE key IN ({marks})", chunk):
                found[k] = json.loads(v)
        hit = sum(1 for k in keys if k in found)
        self.hits += hit
        self.misses += len(keys) - hit
        return found

    def store(self, items: list[tuple[str, dict]]) -> None:
        if not items:
            return
        rows = [(k, json.dumps(v, ensure_ascii=False)) for k, v in items]
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO readings (key, value) VALUES (?, ?)", rows)

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM readings").fetchone()[0]

    def stats(self) -> dict:
        return {"hits": self.hits, "misses": self.misses}

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ReadingCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
