"""The principle file as the studio sees it: lint of unsaved text, the principle list, the
difference from the file on disk, structured edits and the guarded save.

Nothing here re-reads YAML for line numbers: problems come from the constitution loader and
linter, exactly as `cai constitution lint` prints them, and are only split back into line and
message for the editor's gutter.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import json
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from cai.constitution import Constitution
from cai.constitution.diff import diff_constitutions
from cai.constitution.layers import ITEMS, Layered, is_layered, resolve_layers
from cai.constitution.lint import lint_text
from cai.constitution.loader import probes_path, validate_probes
from cai.core.errors import UserError
from cai.core.files import FileLimitError, line_of, parse_text, read_limited

SUFFIXES = (".yaml", ".yml", ".json")


class StudioError(Exception):
    """A request the studio refuses, with the HTTP status that says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest_of(path: Path) -> str:
    """The digest of a file on disk, read in blocks: a huge file is not held in memory to be refused."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclass(frozen=True)
class Folder:
    """The edited file's folder: every path a request names must resolve inside it."""

    root: Path

    @classmethod
    def of(cls, file: Path) -> Folder:
        return cls(file.resolve().parent)

    def resolve(self, name: str) -> Path:
        if not name or "\x00" in name:
            raise StudioError(400, "path: must name a file")
        path = (self.root / name).resolve()  # an absolute name replaces root and is caught below
        if not path.is_relative_to(self.root):
            raise StudioError(403, f"{name}: outside {self.root}; only files in the edited file's folder can be opened")
        if path.suffix.lower() not in SUFFIXES:
            raise StudioError(400, f"{name}: not a principle file (expected {', '.join(SUFFIXES)})")
        if path.exists() and not path.is_file():
            raise StudioError(400, f"{name}: not a file")
        return path

    def name(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()


def is_json(path: Path) -> bool:
    return path.suffix.lower() == ".json"


def _located(line: str, source: str) -> dict:
    """`SOURCE:LINE: message` (as the loader and linter write it) → line and message."""
    m = re.match(rf"^{re.escape(source)}:(\d+): (.*)$", line, re.S)
    if m:
        return {"line": int(m.group(1)), "message": m.group(2), "text": line}
    return {"line": None, "message": line.removeprefix(f"{source}: "), "text": line}


def principle_rows(text: str, source: str, as_json: bool, c: Constitution) -> list[dict]:
    """The principles and traits the text itself writes (of a layer: its own, not its bases')."""
    data, node = parse_text(text, source, as_json)
    rows = []
    for kind, items in (("principles", c.principles), ("traits", c.traits)):
        if is_layered(data):
            own = [x.get("id") for x in data.get(kind) or [] if isinstance(x, dict)]
            written = [i.strip() for i in own if isinstance(i, str)]
            items = [c.principle(i) if kind == "principles" else c.trait(i) for i in written]
        for i, item in enumerate(items):
            uses = [f for f in ("critique", "comparison") if getattr(item, f, None)] if kind == "principles" else []
            rows.append(
                {
                    "kind": kind[:-1],
                    "id": item.id,
                    "line": line_of(node, (kind, i)),
                    "weight": item.weight,
                    "uses": uses,
                    "tags": list(item.tags),
                }
            )
    return rows


def effective_view(text: str, source: str, as_json: bool, path: Path | None) -> dict | None:
    """A layer's merged constitution, read-only: its layers, and each principle and trait with the
    layer it comes from and the layers that changed it. None for a file that extends nothing."""
    data, node = parse_text(text, source, as_json)
    if not is_layered(data):
        return None
    layered: Layered = resolve_layers(path or Path(source), data, node, source=source)
    rows = []
    for section in ITEMS:
        for ident, item in layered.state.items[section].items():
            rows.append(
                {
                    "kind": section[:-1],
                    "id": ident,
                    "layer": item.origin,
                    "changed_by": [{"layer": label, "fields": list(fields)} for label, fields, _ in item.changed],
                    "from": item.describe(),
                    "weight": item.data.get("weight", 1.0),
                    "question": item.data.get("comparison") or item.data.get("text"),
                    "here": item.place.path == source or any(p.path == source for _, _, p in item.changed),
                }
            )
    c = layered.constitution
    return {
        "layers": layered.records(),
        "hash": c.content_hash(),
        "principles": rows,
        "comparison_examples": len(c.comparison_examples),
        "removed": [{"id": i, "layer": label} for i, label in layered.state.removed.items()],
    }


def probe_rows(text: str, source: str, as_json: bool, c: Constitution) -> list[dict]:
    _, node = parse_text(text, source, as_json)
    return [
        {"id": x.id, "kind": x.kind, "principle": x.principle, "line": line_of(node, ("probes", i))}
        for i, x in enumerate(c.probes)
    ]


def with_probes(path: Path, c: Constitution) -> Constitution:
    """The editor's constitution with the probes of its sibling file on disk (NAME.probes.yaml)."""
    sibling = probes_path(path)
    if sibling is None:
        return c
    try:
        data, node = parse_text(read_limited(sibling).decode("utf-8"), sibling.name, is_json(sibling))
        return c.model_copy(update={"probes": [*c.probes, *validate_probes(data, node, sibling.name, c)]})
    except UnicodeDecodeError as e:
        raise StudioError(422, f"{sibling.name}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except UserError as e:
        raise StudioError(422, e.problems[0]) from None


def check(text: str, source: str, as_json: bool = False, path: Path | None = None) -> dict:
    """Errors and warnings of unsaved text at their lines, and its principles when it validates;
    of a layer (`extends:`, its bases found beside `path`), the merged view too.

    A text past the loader's size, nesting or alias bounds is refused whole (422), not linted."""
    try:
        c, warnings = lint_text(text, source, as_json, path)
    except FileLimitError as e:
        raise StudioError(422, e.problems[0]) from None
    except UserError as e:
        errors = [_located(p, source) for p in e.problems]
        return {"ok": False, "errors": errors, "warnings": [], "principles": [], "probes": []}
    return {
        "ok": True,
        "name": c.name,
        "hash": c.content_hash(),
        "errors": [],
        "warnings": [_located(w, source) for w in warnings],
        "principles": principle_rows(text, source, as_json, c),
        "probes": probe_rows(text, source, as_json, c),
        "effective": effective_view(text, source, as_json, path),
    }


def validated(
    text: str, source: str, as_json: bool, what: str = "the editor's text", path: Path | None = None
) -> Constitution:
    """The constitution the text holds (of a layer: merged with its bases beside `path`), or a 422
    naming its first problem."""
    try:
        return lint_text(text, source, as_json, path)[0]
    except FileLimitError as e:
        raise StudioError(422, e.problems[0]) from None
    except UserError as e:
        raise StudioError(422, f"{what} does not validate: {e.problems[0]}") from None


def diff(path: Path, source: str, text: str) -> dict:
    """What the editor's text changes against the file on disk: in meaning, and line by line."""
    on_disk = load(path)[0]
    lines = list(difflib.unified_diff(on_disk.splitlines(), text.splitlines(), "on disk", "editor", lineterm=""))
    out: dict = {"lines": lines, "changes": None, "note": None}
    if not path.exists():
        out["note"] = f"{source} is not on disk yet"
        return out
    try:
        old = validated(on_disk, source, is_json(path), "the file on disk", path)
        new = validated(text, source, is_json(path), "the editor's text", path)
    except StudioError as e:
        out["note"] = e.message
        return out
    out["changes"] = [c.to_json() for c in diff_constitutions(old, new)]
    return out


# ---------------------------------------------------------------------------------------------
# Saving

_save_lock = threading.Lock()


def load(path: Path) -> tuple[str, str]:
    """(text, base): base is the digest a later save must still find on disk ("" if no file).
    A file over the loader's size limit is refused before it is read."""
    if not path.exists():
        return "", ""
    try:
        data = read_limited(path)
    except UserError as e:
        raise StudioError(422, e.problems[0]) from None
    try:
        return data.decode("utf-8").replace("\r\n", "\n"), digest(data)
    except UnicodeDecodeError as e:
        raise StudioError(422, f"{path.name}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def atomic_write(path: Path, data: bytes) -> None:
    """Write beside the file, flush to disk, then rename over it: a reader sees old or new, never half."""
    mode = path.stat().st_mode & 0o7777 if path.exists() else None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save(path: Path, source: str, text: str, base: str) -> dict:
    """Write `text` if the file on disk is still the one the page loaded (`base`), else refuse (409).

    The text is written as typed, so comments, key order and quoting are the user's own. A file
    that does not validate is not written: a run reading it would stop on it."""
    try:
        result = check(text, source, is_json(path), path)
    except StudioError as e:  # past the loader's bounds
        raise StudioError(e.status, f"not saved: {e.message}") from None
    if not result["ok"]:
        first = result["errors"][0]["text"]
        raise StudioError(422, f"not saved: fix the errors first ({first})")
    if not path.parent.is_dir():
        raise StudioError(400, f"not saved: {source}: its folder does not exist")
    with _save_lock:
        current = digest_of(path) if path.exists() else ""
        if current != base:
            what = "was created" if not base else ("was deleted" if not current else "changed")
            raise StudioError(
                409,
                f"not saved: {source} {what} on disk since it was loaded. Reload it to see that version "
                "(your edits here are replaced), or copy your edits first.",
            )
        newline = "\r\n" if path.exists() and b"\r\n" in path.read_bytes() else "\n"
        data = text.replace("\r\n", "\n").replace("\n", newline).encode("utf-8")
        atomic_write(path, data)
    return {"base": digest(data), "check": result}


# ---------------------------------------------------------------------------------------------
# Structured edits from the principle list: a round trip through ruamel.yaml keeps comments and
# key order; JSON keeps key order.


def _yaml():
    from ruamel.yaml import YAML

    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.width = 4096  # never re-wrap a user's long lines
    return y


def _guess_indent(text: str) -> tuple[int, int]:
    from ruamel.yaml.util import load_yaml_guess_indent

    _, indent, offset = load_yaml_guess_indent(text)
    return indent or 2, offset or 0


def _principle_index(items: list, pid: str) -> int:
    for i, p in enumerate(items):
        if isinstance(p, dict) and p.get("id") == pid:
            return i
    raise StudioError(404, f"no principle has id {pid!r}")


def _new_id(items: list) -> str:
    taken = {p.get("id") for p in items if isinstance(p, dict)}
    n = 1
    while f"new-principle-{n}" in taken:
        n += 1
    return f"new-principle-{n}"


def apply_edit(data: dict, op: str, pid: str | None, value: float | None) -> None:
    items = data.get("principles")
    if items is None:
        items = data["principles"] = []
    if not isinstance(items, list):
        raise StudioError(422, "principles: expected a list")
    if op == "add":
        items.append(
            {
                "id": _new_id(items),
                "critique": "Point out where the last answer falls short of this principle.",
                "revision": "Rewrite the answer so it meets this principle, keeping what was useful.",
                "comparison": "Which of these answers better meets this principle?",
            }
        )
        return
    if pid is None:
        raise StudioError(422, f"{op}: needs the principle's id")
    i = _principle_index(items, pid)
    if op == "remove":
        del items[i]
    elif op == "weight":
        if value is None or not value > 0:
            raise StudioError(422, "weight: must be a number above 0")
        items[i]["weight"] = value
    elif op in ("up", "down"):
        j = i - 1 if op == "up" else i + 1
        if 0 <= j < len(items):
            items[i], items[j] = items[j], items[i]


def edit(text: str, source: str, as_json: bool, op: str, pid: str | None = None, value: float | None = None) -> str:
    """The text with one principle added, removed, moved or re-weighted, formatting kept."""
    try:
        data, _ = parse_text(text, source, as_json)  # unparsable text gets the loader's located message
    except FileLimitError as e:
        raise StudioError(422, e.problems[0]) from None
    except UserError as e:
        raise StudioError(422, f"fix the file first: {e.problems[0]}") from None
    if as_json:
        if not isinstance(data, dict):
            raise StudioError(422, "(top level): expected a mapping")
        apply_edit(data, op, pid, value)
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    y = _yaml()
    indent, offset = _guess_indent(text)
    y.indent(mapping=2, sequence=max(indent, offset + 2), offset=offset)
    data = y.load(text)
    if not isinstance(data, dict):
        raise StudioError(422, "(top level): expected a mapping")
    apply_edit(data, op, pid, value)
    buf = io.StringIO()
    y.dump(data, buf)
    return buf.getvalue()
