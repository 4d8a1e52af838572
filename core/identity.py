"""What shapes output, declared once on the config fields, and every identity derived from it.

Record ids, the reading cache key, the run's config history ("what changed, from which stage")
and the refusal to mix backend options all need to know which settings change what a model
writes. Kept as lists in each place, they drifted: a path as typed entered one id, a mode that
only selects pairs re-ranked every pair, an API key emptied a cache. So each field says it once,
in its type (`Annotated[int, OPERATIONAL]`), and `identity()` is the only reader of that:

- unmarked: shapes the records; enters their ids;
- `OPERATIONAL`: how fast or where work runs (batch sizes, retries, timeouts, executors,
  addresses); enters no id, cache or stage identity;
- `SELECTS`: which records exist, not what one holds (which pairs of a query are ranked, whether
  distillation pairs are made); enters the stage's identity, no record's id;
- `Source(...)`: a file read as input; enters by its content, never by the path as typed, and no
  record's id (the records read from it carry ids of their own content);
- `ROLE`: a model role (a backend config); enters a stage's identity as the model and the
  options that shape output, and ids as the model's name, where the stage that uses it says so.

Secrets (`SecretStr`) enter nothing, whatever their mark.

Three views: `record` (what a record id hashes), `stage` (what decides whether a stage's records
still hold after a config edit) and `config` (whether an edited config is a new version at all:
everything but secrets, sources by content).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, SecretStr

View = Literal["record", "stage", "config"]


@dataclass(frozen=True)
class Mark:
    kind: Literal["operational", "selects", "role"]


@dataclass(frozen=True)
class Source:
    """A file read as input. `digest(value)` says what of it matters (default: its bytes)."""

    digest: Callable[[str], str] | None = None


OPERATIONAL = Mark("operational")
SELECTS = Mark("selects")
ROLE = Mark("role")


def file_digest(value: str | None) -> str | None:
    """A file's content hash; a value that names no file (a shipped name, a hub id) stands for itself."""
    if value is None:
        return None
    p = Path(value)
    if not p.is_file():
        return value
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()[:16]


def mark_of(model: type[BaseModel], name: str) -> Mark | Source | None:
    for m in model.model_fields[name].metadata:
        if isinstance(m, Mark | Source):
            return m
    return None


def marked(model: type[BaseModel], kind: str) -> list[str]:
    """The fields of `model` with a given mark (`operational`, `selects`, `role`, `source`)."""
    out = []
    for name in model.model_fields:
        m = mark_of(model, name)
        if (isinstance(m, Source) and kind == "source") or (isinstance(m, Mark) and m.kind == kind):
            out.append(name)
    return out


def _plain(value: Any, view: View) -> Any:
    if isinstance(value, SecretStr):
        return _SKIP
    if isinstance(value, BaseModel):
        return identity(value, view)
    if isinstance(value, dict):
        out = {k: _plain(v, view) for k, v in value.items()}
        return {k: v for k, v in out.items() if v is not _SKIP}
    if isinstance(value, list | tuple):
        return [_plain(v, view) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


_SKIP = object()


def identity(model: BaseModel, view: View = "record") -> dict[str, Any]:
    """The fields of `model` that matter in `view`, as plain data (nested models in the same view).

    A model may refine its own identity with `identity_hook(view, data) -> data` (a value that
    resolves a default, a setting that means nothing while another is off); the hook sees the
    view so a refinement is declared once, beside the fields it refines.
    """
    cls = type(model)
    out: dict[str, Any] = {}
    for name in cls.model_fields:
        m = mark_of(cls, name)
        value = getattr(model, name)
        if isinstance(m, Mark):
            if m.kind == "operational" and view != "config":
                continue
            if m.kind == "selects" and view == "record":
                continue
            if m.kind == "role" and view == "record":
                continue
        if isinstance(m, Source):
            if view == "record":
                continue
            value = (m.digest or file_digest)(value) if value is not None else None
        plain = _plain(value, view)
        if plain is not _SKIP:
            out[name] = plain
    hook = getattr(model, "identity_hook", None)
    return hook(view, out) if hook is not None else out
