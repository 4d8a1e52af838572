"""Read principle files and report every problem with its line number.

The reading itself (bounds, YAML and JSON, located problems) is `cai.core.files`, shared with
every config a user writes; here is what is particular to a constitution: its cross-field checks,
shipped names, and the YAML a user edits.
"""

from __future__ import annotations

from pathlib import Path

import yaml  # noqa: F401 - node types in signatures
from pydantic import ValidationError

from cai.core.files import (  # noqa: F401 - re-exported: where callers of this module found them
    MAX_ALIAS_NODES,
    MAX_DEPTH,
    MAX_FILE_BYTES,
    BoundExceeded,
    FileLimitError,
    compose_bounded,
    duplicate_keys,
    field_name,
    json_depth_over,
    line_of,
    load_bounded,
    located_problems,
    parse_text,
    raise_problems,
    read_limited,
    read_structured,
    validate_model,
)

from .errors import ConstitutionError, UserError
from .schema import Constitution, Problem, duplicate_ids


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
    raise_problems(problems, source, ConstitutionError)
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
