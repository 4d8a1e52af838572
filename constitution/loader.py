"""Read principle files (YAML, or JSON) and report every problem with its line number.

YAML is parsed twice: once into plain data for pydantic, once into a node tree that keeps line
marks. Pydantic's error locations (`principles`, 0, `critique`) are walked down that tree to find
the line, so a user sees `harmless.yaml:42: principles[3].critique: must not be empty` rather
than a validation dump.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import ValidationError

from .errors import ConstitutionError, UserError
from .schema import Constitution, ConstitutionProblems, Problem, duplicate_ids

T = TypeVar("T")

_MESSAGES = {
    "extra_forbidden": "unknown key",
    "string_too_short": "must not be empty",
    "missing": "required field is missing",
    "too_short": "must not be empty",
}


def read_structured(path: str | Path) -> tuple[object, yaml.Node | None]:
    """Parse a YAML or JSON file into (data, node tree). Raises UserError naming the line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a file") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return parse_text(text, str(path), as_json=path.suffix.lower() == ".json")


def parse_text(text: str, source: str, as_json: bool = False) -> tuple[object, yaml.Node | None]:
    """`read_structured` on text already in memory (an editor's buffer); `source` names it in errors."""
    if as_json:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{source}:{e.lineno}: invalid JSON: {e.msg}") from None
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError:
            node = None  # valid JSON that YAML rejects: data is fine, only line numbers are lost
        return data, node
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 1
        raise UserError(f"{source}:{line}: invalid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise UserError(f"{source}: invalid YAML: {e}") from None
    return data, node


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
        if isinstance(ctx_error, ConstitutionProblems):
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


def raise_problems(problems: list[tuple[int, str]], source: str, error=ConstitutionError) -> None:
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


def validate(data: object, node: yaml.Node | None, source: str) -> Constitution:
    """Validate parsed data; on failure raise ConstitutionError with every problem located."""
    problems: list[tuple[int, str]] = list(duplicate_keys(node))
    constitution = None
    if not isinstance(data, dict):
        problems.append((1, "(top level): expected a mapping with name and principles"))
    else:
        try:
            constitution = Constitution.model_validate(data)
        except ValidationError as err:
            # Field errors stop pydantic before its cross-field checks; run those on the raw data.
            raw_ids = {
                kind: [x.get("id") if isinstance(x, dict) else None for x in data[kind]]
                for kind in ("principles", "traits")
                if isinstance(data.get(kind), list)
            }
            problems += located_problems(err, node, duplicate_ids(raw_ids))
    raise_problems(problems, source)
    assert constitution is not None
    return constitution


def load_constitution(path: str | Path) -> Constitution:
    """Load and validate a principle file. A bare name such as `harmless` means a shipped one."""
    path = resolve_path(path)
    data, node = read_structured(path)
    return validate(data, node, str(path))


def resolve_path(path: str | Path) -> Path:
    p = Path(path)
    if p.exists() or p.suffix or "/" in str(path):
        return p
    from .library import library_path

    shipped = library_path(str(path))
    if shipped is None:
        raise UserError(f"{path}: no such file, and no shipped constitution has that name")
    return shipped


def dump_constitution(c: Constitution) -> str:
    """YAML a user can edit: defaults and empty fields left out, keys in schema order."""
    data = c.model_dump(mode="json", exclude_defaults=True, exclude_none=True)
    data = {"name": c.name, "version": c.version, **data}
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


__all__ = ["load_constitution", "validate", "read_structured", "parse_text", "dump_constitution", "Problem"]
