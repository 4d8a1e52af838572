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
from .schema import Constitution, Probe, ProbeFile, Problem, duplicate_ids, probe_problems, probe_references


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
                for kind in ("principles", "traits", "probes")
                if isinstance(data.get(kind), list)
            }
            problems += located_problems(err, node, duplicate_ids(raw_ids) + _raw_probe_problems(data, data))
    raise_problems(problems, source, ConstitutionError)
    assert constitution is not None
    return constitution


def load_constitution(path: str | Path) -> Constitution:
    """Load and validate a principle file. A bare name such as `harmless` means a shipped one.
    A file that `extends:` others gives the constitution its layers merge into (see layers.py)."""
    path = resolve_path(path)
    data, node = read_structured(path)
    if isinstance(data, dict) and "extends" in data:
        from .layers import resolve_layers

        return resolve_layers(path, data, node).constitution
    return validate(data, node, str(path))


def _items(data: object, key: str) -> list[dict]:
    got = data.get(key) if isinstance(data, dict) else None
    return [x for x in got if isinstance(x, dict)] if isinstance(got, list) else []


def _raw_probe_problems(constitution: object, probes: object) -> list[Problem]:
    """Probes naming what the constitution lacks, on raw data (see `probe_references`)."""
    critiques = {
        x["id"].strip(): x.get("critique") is not None
        for x in _items(constitution, "principles")
        if isinstance(x.get("id"), str)
    }
    traits = {x["id"].strip() for x in _items(constitution, "traits") if isinstance(x.get("id"), str)}
    raw = probes.get("probes") if isinstance(probes, dict) else None
    refs = [(x.get("kind"), x.get("principle")) if isinstance(x, dict) else (None, None) for x in raw or []]
    return probe_references(critiques, traits, refs) if isinstance(raw, list) else []


# ---------------------------------------------------------------------------------------------
# Probes in a sibling file: NAME.probes.yaml beside NAME.yaml, so a constitution's tests can be
# kept (and changed) apart from the file a run reads.

PROBE_SUFFIXES = (".yaml", ".yml", ".json")


def probes_path(path: str | Path) -> Path | None:
    """The sibling probe file of a principle file, if there is one."""
    p = Path(path)
    for suffix in PROBE_SUFFIXES:
        candidate = p.with_name(f"{p.stem}.probes{suffix}")
        if candidate.is_file():
            return candidate
    return None


def validate_probes(data: object, node: yaml.Node | None, source: str, c: Constitution) -> list[Probe]:
    """A sibling probe file's probes, checked against the constitution they test; every problem
    located in that file (ConstitutionError)."""
    problems: list[tuple[int, str]] = list(duplicate_keys(node))
    probes: list[Probe] = []
    if not isinstance(data, dict):
        problems.append((1, "(top level): expected a mapping with probes"))
    else:
        try:
            probes = ProbeFile.model_validate(data).probes
        except ValidationError as err:
            raw_ids = [x.get("id") if isinstance(x, dict) else None for x in data.get("probes") or []]
            extra = duplicate_ids({"probes": raw_ids}) + _raw_probe_problems(c.model_dump(mode="json"), data)
            problems += located_problems(err, node, extra)
        else:
            inline = {x.id for x in c.probes}
            found = duplicate_ids({"probes": [x.id for x in probes]}) + probe_problems(c, probes)
            found += [
                Problem(("probes", i, "id"), f"duplicate id {x.id!r} (a probe of the constitution has it)")
                for i, x in enumerate(probes)
                if x.id in inline
            ]
            problems += [(line_of(node, p.loc), f"{field_name(p.loc)}: {p.msg}") for p in found]
    raise_problems(problems, source, ConstitutionError)
    return probes


def load_with_probes(path: str | Path) -> Constitution:
    """A principle file with its probes: its own `probes:` and those of a sibling NAME.probes.yaml."""
    path = resolve_path(path)
    c = load_constitution(path)
    sibling = probes_path(path)
    if sibling is None:
        return c
    data, node = read_structured(sibling)
    return c.model_copy(update={"probes": [*c.probes, *validate_probes(data, node, str(sibling), c)]})


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


__all__ = [
    "load_constitution",
    "load_with_probes",
    "probes_path",
    "validate",
    "validate_probes",
    "read_structured",
    "parse_text",
    "dump_constitution",
    "Problem",
]
