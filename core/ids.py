"""Record ids and seeds, both derived from strings rather than from a shared random stream.

A record's id hashes the inputs that made it, never the text a model generated, so a rerun knows
which ids exist before it generates anything and two shards of one config never mint the same
id. A seed derived from an id makes the text behind that id the same whatever batch, shard,
replica or resume it was generated in.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def record_id(kind: str, *parts: Any) -> str:
    blob = json.dumps([kind, *parts], sort_keys=True, default=str, ensure_ascii=False)
    return f"{kind[0]}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any printable parts (Python's hash() is salted per process)."""
    blob = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big") >> 1


def digest(value: Any, length: int = 16) -> str:
    """A short hash of any JSON-able value (key order ignored)."""
    blob = json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]
