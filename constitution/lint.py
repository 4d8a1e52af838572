"""Advice on a principle file that validates but may steer a model poorly.

Errors stop a run; lint findings do not. They point at the things that, in our experience with
small models, make critiques vague or rankings noisy.
"""

from __future__ import annotations

from pathlib import Path

from cai.core.files import line_of, parse_text, read_structured

from .loader import resolve_path, validate
from .schema import Constitution

LONG_TEXT = 600  # characters; longer requests crowd a small model's context


def lint_file(path: str | Path) -> tuple[Constitution, list[str]]:
    """Validate (raising ConstitutionError on errors) and return warnings as `file:line: text`."""
    path = resolve_path(path)
    data, node = read_structured(path)
    c = validate(data, node, str(path))
    return c, [f"{path}:{line_of(node, loc)}: {msg}" for loc, msg in lint(c)]


def lint_text(text: str, source: str, as_json: bool = False) -> tuple[Constitution, list[str]]:
    """`lint_file` on an editor's unsaved text, reported under the name `source`."""
    data, node = parse_text(text, source, as_json)
    c = validate(data, node, source)
    return c, [f"{source}:{line_of(node, loc)}: {msg}" for loc, msg in lint(c)]


def lint(c: Constitution) -> list[tuple[tuple, str]]:
    found: list[tuple[tuple, str]] = []
    if c.critique_principles and not c.few_shot:
        found.append(((), "no few_shot examples: small models follow the critique/revision format poorly without them"))
    if c.principles and not c.comparison_principles:
        found.append(
            (("principles",), "no principle has a comparison question; ranking will fall back to a generic one")
        )
    for i, p in enumerate(c.principles):
        for field in ("critique", "revision", "comparison"):
            text = getattr(p, field)
            if text and len(text) > LONG_TEXT:
                found.append((("principles", i, field), f"{len(text)} characters; keep requests short and concrete"))
    for i, t in enumerate(c.traits):
        if len(t.questions) < 3:
            found.append(
                (("traits", i, "questions"), "fewer than 3 seed questions; query generation will repeat itself")
            )
    if c.traits and not c.query_generation:
        found.append(((), "no query_generation guidance; trait queries will be written from the seed questions only"))
    return found
