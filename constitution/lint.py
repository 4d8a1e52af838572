"""Advice on a principle file that validates but may steer a model poorly.

Errors stop a run; lint findings do not. They point at the things that, in our experience with
small models, make critiques vague or rankings noisy.
"""

from __future__ import annotations

import re
from pathlib import Path

from cai.core.files import line_of, parse_text, read_structured

from .loader import probes_path, resolve_path, validate, validate_probes
from .schema import Constitution, Probe

LONG_TEXT = 600  # characters; longer requests crowd a small model's context


def lint_file(path: str | Path) -> tuple[Constitution, list[str]]:
    """Validate (raising ConstitutionError on errors) and return warnings as `file:line: text`.

    A sibling probe file (NAME.probes.yaml) is checked too, its problems at its own lines; the
    constitution returned carries its probes."""
    path = resolve_path(path)
    data, node = read_structured(path)
    c = validate(data, node, str(path))
    warnings = [f"{path}:{line_of(node, loc)}: {msg}" for loc, msg in lint(c)]
    sibling = probes_path(path)
    if sibling is not None:
        data, node = read_structured(sibling)
        probes = validate_probes(data, node, str(sibling), c)
        warnings += [f"{sibling}:{line_of(node, loc)}: {msg}" for loc, msg in lint_probes(c, probes)]
        c = c.model_copy(update={"probes": [*c.probes, *probes]})
    return c, warnings


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
    return found + lint_probes(c, c.probes)


def lint_probes(c: Constitution, probes: list[Probe]) -> list[tuple[tuple, str]]:
    """Probes that validate but cannot tell a good wording from a bad one."""
    found: list[tuple[tuple, str]] = []
    principles = {p.id: p for p in c.principles}
    for i, probe in enumerate(probes):
        p = principles.get(probe.principle or "")
        if probe.kind == "ranking" and p is not None and p.comparison is None:
            found.append(
                (("probes", i, "principle"), f"{p.id} has no comparison question: the probe reads the generic one")
            )
        if probe.kind != "revision" or probe.expect is None or probe.expect.kind == "question":
            continue
        pattern = probe.expect.absent or probe.expect.present
        in_reply = re.search(pattern, probe.reply or "") is not None
        where = ("probes", i, "expect", probe.expect.kind)
        if probe.expect.absent is not None and not in_reply:
            found.append((where, "the pattern is not in the reply: there is nothing for the revision to remove"))
        elif probe.expect.present is not None and in_reply:
            found.append((where, "the pattern is already in the reply: a revision that changes nothing passes"))
    return found
