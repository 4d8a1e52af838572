"""Structured files a user writes (YAML or JSON: principle files, run and training configs),
read within bounds and validated with every problem at its line.

YAML is composed into a node tree that keeps line marks, and the plain data for pydantic is built
from it. Pydantic's error locations (`principles`, 0, `critique`) are walked down that tree to find
the line, so a user sees `harmless.yaml:42: principles[3].critique: must not be empty` rather
than a validation dump.

A user's file is bounded before anything walks it: its size (checked before it is read), its
nesting, and how far its YAML aliases expand. Past a bound the file is refused with one line.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import ValidationError
from yaml.composer import Composer

from .errors import UserError

T = TypeVar("T")

_MESSAGES = {
    "extra_forbidden": "unknown key",
    "string_too_short": "must not be empty",
    "missing": "required field is missing",
    "too_short": "must not be empty",
}


# ---------------------------------------------------------------------------------------------
# Bounds on a user's file. A principle or config file is a few kilobytes and a few levels deep;
# without bounds a small hostile file could keep every command that reads it busy for hours.

MAX_FILE_BYTES = 8 << 20  # 8 MiB, checked before a file is read
MAX_DEPTH = 64  # mappings and sequences inside each other, aliases expanded
MAX_ALIAS_NODES = 10_000  # nodes aliases may add, expanded, beyond those the document itself holds
NESTED = f"nested deeper than {MAX_DEPTH} levels"
_PURE_PARSER_UP_TO = 256 << 10  # characters; see _loader_for


class FileLimitError(UserError):
    """A file past the size, alias or nesting bound: refused whole, before anything walks it."""


class BoundExceeded(yaml.YAMLError):
    def __init__(self, mark, message: str):
        super().__init__(message)
        self.line, self.message = (mark.line + 1 if mark else 1), message


class _Bounded(Composer):
    """PyYAML's composer, refusing nesting past MAX_DEPTH and aliases that expand too far.

    PyYAML lets all of an anchor's aliases share one node, so a "billion laughs" file composes
    in microseconds; it is every later walk of the tree (duplicate keys, pydantic, line lookup)
    that expands it. So the bounds are on the tree as those walks see it: each alias adds its
    target's expanded size and height, measured once per node. Aliases may add up to
    MAX_ALIAS_NODES nodes more than the document holds, so those walks stay linear in its size."""

    base: type = yaml.SafeLoader

    def __init__(self, stream):
        self.base.__init__(self, stream)
        Composer.__init__(self)  # libyaml's loader composes in C and has no anchors of its own
        self._depth = self._expanded = self._composed = 0
        self._measured: dict[int, tuple[int, int]] = {}

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None:  # else PyYAML's own "undefined alias" error
                size, height = self._measure(target, event.start_mark)
                if self._depth + height > MAX_DEPTH:
                    raise BoundExceeded(event.start_mark, f"{NESTED} (through alias *{event.anchor})")
                self._expanded += size
                if self._expanded > MAX_ALIAS_NODES + self._composed:
                    raise BoundExceeded(
                        event.start_mark,
                        f"too many YAML aliases (they expand to {self._expanded} nodes, "
                        f"over {MAX_ALIAS_NODES} more than the {self._composed} written)",
                    )
            return super().compose_node(parent, index)
        self._composed += 1
        if isinstance(event, yaml.ScalarEvent):
            return super().compose_node(parent, index)
        if self._depth >= MAX_DEPTH:
            raise BoundExceeded(event.start_mark, NESTED)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def _measure(self, node: yaml.Node, mark) -> tuple[int, int]:
        """(nodes, nesting) of `node` with its aliases expanded; its subtree is complete and bounded."""
        known = self._measured.get(id(node))
        if known is not None:
            return known
        if node.end_mark is None:  # still being composed: the alias is inside its own anchor
            raise BoundExceeded(mark, "a YAML alias inside the node it names (a recursive document)")
        if isinstance(node, yaml.ScalarNode):
            known = (1, 0)
        else:
            children = node.value if isinstance(node, yaml.SequenceNode) else [x for kv in node.value for x in kv]
            parts = [self._measure(c, mark) for c in children]
            known = (1 + sum(n for n, _ in parts), 1 + max((h for _, h in parts), default=0))
        self._measured[id(node)] = known
        return known


class _PureLoader(_Bounded, yaml.SafeLoader):
    base = yaml.SafeLoader


_FastLoader = _PureLoader
if getattr(yaml, "__with_libyaml__", False):

    class _FastLoader(_Bounded, yaml.CSafeLoader):  # libyaml's events, this composer
        base = yaml.CSafeLoader


def _loader_for(text: str) -> _Bounded:
    """PyYAML's pure-Python parser names the offending character in its messages, libyaml's does
    not but is five times faster: the one for every file a person writes, the other for big ones."""
    return (_PureLoader if len(text) <= _PURE_PARSER_UP_TO else _FastLoader)(text)


def compose_bounded(text: str) -> yaml.Node | None:
    loader = _loader_for(text)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


def load_bounded(text: str) -> tuple[yaml.Node | None, object]:
    """(node tree, data). A merge key (`<<`) rewrites the nodes it is built from, and the tree must
    keep the user's lines, so a document with one is parsed a second time for its data."""
    loader = _loader_for(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        if "<<" not in text:
            return node, loader.construct_document(node)
    finally:
        loader.dispose()
    again = _loader_for(text)
    try:
        return node, again.get_single_data()
    finally:
        again.dispose()


# A string (its closing quote optional, so an unclosed one ends the scan rather than restarting it
# at every later quote), or a bracket.
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]', re.S)


def json_depth_over(text: str) -> int | None:
    """The line where JSON text nests past MAX_DEPTH, for the JSON that YAML cannot compose."""
    depth = 0
    for m in _JSON_TOKEN.finditer(text):
        c = m.group()
        if c in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return text.count("\n", 0, m.start()) + 1
        elif c in "]}":
            depth -= 1
    return None


def _mib(n: int) -> str:
    return f"{n / (1 << 20):g} MiB"


def _too_big(source: object, size: int) -> str:
    return f"{source}: {size} bytes, over the {_mib(MAX_FILE_BYTES)} limit for a principle or config file"


def read_limited(path: str | Path) -> bytes:
    """A user's file, its size checked before it is read: a huge one is refused, not loaded."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_FILE_BYTES:
                raise FileLimitError(_too_big(path, size))
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a file") from None
    except PermissionError:
        raise UserError(f"{path}: permission denied") from None
    if len(data) > MAX_FILE_BYTES:  # a pipe, or a file that grew: no size to check beforehand
        raise FileLimitError(f"{path}: over the {_mib(MAX_FILE_BYTES)} limit for a principle or config file")
    return data


def read_structured(path: str | Path) -> tuple[object, yaml.Node | None]:
    """Parse a YAML or JSON file into (data, node tree). Raises UserError naming the line."""
    path = Path(path)
    data = read_limited(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")  # as a text-mode read would
    return parse_text(text, str(path), as_json=path.suffix.lower() == ".json")


def parse_text(text: str, source: str, as_json: bool = False) -> tuple[object, yaml.Node | None]:
    """`read_structured` on text already in memory (an editor's buffer); `source` names it in errors."""
    if len(text) > MAX_FILE_BYTES // 4 and len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        raise FileLimitError(_too_big(source, len(text.encode("utf-8", "surrogatepass"))))
    if as_json:
        try:
            node = compose_bounded(text)
        except BoundExceeded as e:
            raise FileLimitError(f"{source}:{e.line}: {e.message}") from None
        except yaml.YAMLError:
            node = None  # valid JSON that YAML rejects: data is fine, only line numbers are lost
            line = json_depth_over(text)
            if line is not None:
                raise FileLimitError(f"{source}:{line}: {NESTED}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{source}:{e.lineno}: invalid JSON: {e.msg}") from None
        except ValueError as e:  # an integer too long for Python to convert
            raise UserError(f"{source}{_line_of_long_number(text)}: invalid JSON: {_first_clause(e)}") from None
        return data, node
    try:
        node, data = load_bounded(text)
    except BoundExceeded as e:
        raise FileLimitError(f"{source}:{e.line}: {e.message}") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 1
        raise UserError(f"{source}:{line}: invalid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise UserError(f"{source}: invalid YAML: {e}") from None
    except ValueError as e:  # a date such as 2024-13-01, or an integer too long for Python to convert
        raise UserError(f"{source}{_line_of_long_number(text)}: invalid YAML: {_first_clause(e)}") from None
    return data, node


def _first_clause(e: ValueError) -> str:
    return str(e).split(";")[0]


def _line_of_long_number(text: str) -> str:
    """`:LINE` of the first number longer than Python converts, if that is what failed ("" if not)."""
    limit = sys.get_int_max_str_digits()  # 0: no limit, so no number failed
    m = re.search(rf"\d{{{limit + 1},}}", text) if limit else None
    return ":" + str(text.count("\n", 0, m.start()) + 1) if m else ""


def field_name(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def line_of(node: yaml.Node | None, loc: tuple, key_line: bool = False) -> int:
    """The 1-based line of the deepest node `loc` reaches; for an unknown key, the key's line."""
    if node is None:
        return 1
    line = node.start_mark.line + 1
    for part in loc:
        child = None
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            for k, v in node.value:
                if k.value == part:
                    child = k if (key_line and part == loc[-1]) else v
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
        if child is None:
            break
        node, line = child, child.start_mark.line + 1
    return line


def duplicate_keys(node: yaml.Node | None, loc: tuple = ()) -> list[tuple[int, str]]:
    """PyYAML keeps the last of two equal keys without a word; a user's text would vanish."""
    found = []
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for k, v in node.value:
            if k.value in seen:
                found.append((k.start_mark.line + 1, f"{field_name(loc + (k.value,))}: key appears twice"))
            seen.add(k.value)
            found += duplicate_keys(v, loc + (k.value,))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            found += duplicate_keys(v, loc + (i,))
    return found


def _pydantic_problems(err: ValidationError) -> list[tuple[tuple, str, str]]:
    out = []
    for e in err.errors():
        loc = tuple(e["loc"])
        ctx_error = (e.get("ctx") or {}).get("error")
        if isinstance(getattr(ctx_error, "problems", None), list):  # cross-field problems, each located
            out += [(loc + p.loc, p.msg, "") for p in ctx_error.problems]
            continue
        msg = _MESSAGES.get(e["type"], e["msg"].removeprefix("Value error, "))
        if e["type"] == "extra_forbidden":
            msg = f"unknown key {loc[-1]!r}"
            out.append((loc, msg, "key"))
        else:
            out.append((loc, msg, ""))
    return out


def located_problems(err: ValidationError, node: yaml.Node | None, extra: list | None = None) -> list[tuple[int, str]]:
    """Turn pydantic errors (plus already-located extras) into (line, `field: message`) pairs."""
    found = _pydantic_problems(err)
    for p in extra or []:
        if (p.loc, p.msg, "") not in found:
            found.append((p.loc, p.msg, ""))
    return [(line_of(node, loc, key_line=(where == "key")), f"{field_name(loc)}: {msg}") for loc, msg, where in found]


def raise_problems(problems: list[tuple[int, str]], source: str, error: type[UserError] = UserError) -> None:
    if problems:
        lines = [f"{source}:{line}: {msg}" for line, msg in sorted(problems, key=lambda p: p[0])]
        raise error("\n".join(lines), problems=lines)


def validate_model(model: type[T], data: object, node: yaml.Node | None, source: str) -> T:
    """Validate any config model against parsed YAML, every problem located (UserError)."""
    problems = duplicate_keys(node)
    if not isinstance(data, dict):
        problems.append((1, "(top level): expected a mapping"))
    else:
        try:
            result = model.model_validate(data)
        except ValidationError as err:
            problems += located_problems(err, node)
    raise_problems(problems, source, UserError)
    return result
