"""Advice on a principle file that validates but may steer a model poorly.

Errors stop a run; lint findings do not. They point at the things that, in our experience with
small models, make critiques vague or rankings noisy.
"""

from __future__ import annotations

import re
from pathlib import Path

from cai.core.files import line_of, parse_text, read_structured

from .layers import Layered, is_layered, resolve_layers
from .loader import probes_path, resolve_path, validate, validate_probes
from .schema import Constitution, Probe

LONG_TEXT = 600  # characters; longer requests crowd a small model's context


def lint_file(path: str | Path) -> tuple[Constitution, list[str]]:
    """Validate (raising ConstitutionError on errors) and return warnings as `file:line: text`.

    A sibling probe file (NAME.probes.yaml) is checked too, its problems at its own lines; the
    constitution returned carries its probes."""
    path = resolve_path(path)
    data, node = read_structured(path)
    if is_layered(data):
        c, warnings = _lint_layered(resolve_layers(path, data, node))
    else:
        c = validate(data, node, str(path))
        warnings = [f"{path}:{line_of(node, loc)}: {msg}" for loc, msg in lint(c)]
    sibling = probes_path(path)
    if sibling is not None:
        data, node = read_structured(sibling)
        probes = validate_probes(data, node, str(sibling), c)
        warnings += [f"{sibling}:{line_of(node, loc)}: {msg}" for loc, msg in lint_probes(c, probes)]
        c = c.model_copy(update={"probes": [*c.probes, *probes]})
    return c, warnings


def lint_text(
    text: str, source: str, as_json: bool = False, path: str | Path | None = None
) -> tuple[Constitution, list[str]]:
    """`lint_file` on an editor's unsaved text, reported under the name `source`; the bases it
    `extends:` are found beside `path`, the file the text is for (default: `source`)."""
    data, node = parse_text(text, source, as_json)
    if is_layered(data):
        return _lint_layered(resolve_layers(Path(path or source), data, node, source=source))
    c = validate(data, node, source)
    return c, [f"{source}:{line_of(node, loc)}: {msg}" for loc, msg in lint(c)]


def _lint_layered(layered: Layered) -> tuple[Constitution, list[str]]:
    """Warnings on the merged constitution, each at the line of the layer that wrote it."""
    c = layered.constitution
    return c, layered.warnings + [f"{layered.locate(loc)}: {msg}" for loc, msg in lint(c)]


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
    return found + lint_examples(c) + lint_probes(c, c.probes)


_FIXED_LETTER = re.compile(r"\([AB]\)|\b(?i:option|reply|response|answer|choice)\s+[AB]\b")


def lint_examples(c: Constitution) -> list[tuple[tuple, str]]:
    """Comparison examples that validate but would teach a letter, or sit under no question of their own."""
    found: list[tuple[tuple, str]] = []
    principles = {p.id: p for p in c.principles}
    for i, ex in enumerate(c.comparison_examples):
        if ex.reasoning and _FIXED_LETTER.search(ex.reasoning):
            found.append(
                (
                    ("comparison_examples", i, "reasoning"),
                    "names a reply by a fixed letter, but the better reply is shown under (A) in some prompts and "
                    "(B) in others: write (better) and (worse), which become the letters where it is shown",
                )
            )
        p = principles.get(ex.principle_id or "")
        if p is not None and p.comparison is None:
            found.append(
                (
                    ("comparison_examples", i, "principle_id"),
                    f"{p.id} has no comparison question: the example is shown under the generic one",
                )
            )
    return found


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
