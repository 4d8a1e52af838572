"""Human-labelled answer pairs for evaluation, read from the layouts people actually have.

Three layouts are accepted, line by line, in `.jsonl` or `.jsonl.gz`:

- HH-RLHF transcripts: `{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": ...}`. The
  two share every turn but the last assistant turn, which is the answer being compared.
- TRL preference records: `prompt` / `chosen` / `rejected` as message lists or strings (or the
  implicit-prompt form with only `chosen` / `rejected` conversations).
- The Constitutional AI paper's multiple-choice evaluations: `prompt` with `corrects` /
  `incorrects` answers, or `text_correct` / `text_incorrect` transcripts (a string or a list
  each). Every correct item is paired with every incorrect one.

A line that fits none of these stops the load with an error naming the file and line: a bad line
must not silently become a pair, nor silently vanish.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

from cai.constitution import UserError
from cai.generators.queries import parse_transcript
from cai.generators.records import record_id

_TRANSCRIPT_MARKS = ("\n\nHuman:", "\n\nAssistant:")


@dataclass(frozen=True)
class LabeledPair:
    """A conversation (ending with the user's turn) and two replies, `chosen` preferred by people."""

    id: str
    context: list[dict]
    chosen: str
    rejected: str
    where: str


def _is_transcript(text: str) -> bool:
    return ("\n\n" + text.lstrip("\n")).startswith(_TRANSCRIPT_MARKS[0]) and _TRANSCRIPT_MARKS[
        1
    ] in "\n\n" + text.lstrip("\n")


def _split_transcript(text: str, where: str) -> tuple[list[dict], str]:
    head, answer = _last_turn(text, where)
    ctx = parse_transcript(head)
    if not ctx or ctx[-1]["role"] != "user":
        raise UserError(f"{where}: a transcript must end with a Human turn followed by an Assistant turn")
    return ctx, answer


def _context_from_prompt(prompt: object, where: str) -> list[dict]:
    if isinstance(prompt, str):
        text = prompt.rstrip()
        if text.endswith("Assistant:"):
            text = text[: -len("Assistant:")].rstrip()  # a transcript left open for the answer
        msgs = parse_transcript(text) if _is_transcript(prompt) else [{"role": "user", "content": text.strip()}]
    elif isinstance(prompt, list) and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in prompt):
        msgs = [{"role": m.get("role", "user"), "content": m["content"].strip()} for m in prompt]
    else:
        raise UserError(f"{where}: 'prompt' must be a string or a list of {{role, content}} messages")
    if not msgs or msgs[-1]["role"] != "user" or not msgs[-1]["content"]:
        raise UserError(f"{where}: the prompt must end with a non-empty user message")
    return msgs


def _answer(obj: object, where: str, field: str) -> tuple[list[dict], str]:
    """(extra context, answer) from a reply given as a string or a message list."""
    if isinstance(obj, str):
        return [], obj.strip()
    if isinstance(obj, list) and obj and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in obj):
        if obj[-1].get("role", "assistant") != "assistant":
            raise UserError(f"{where}: '{field}' must end with an assistant message")
        extra = [{"role": m.get("role", "user"), "content": m["content"].strip()} for m in obj[:-1]]
        return extra, obj[-1]["content"].strip()
    raise UserError(f"{where}: '{field}' must be a string or a non-empty list of {{role, content}} messages")


class Inconsistent(Exception):
    """A record whose two transcripts differ before the last assistant turn: skipped, and counted."""


def _last_turn(text: str, where: str) -> tuple[str, str]:
    text = "\n\n" + text.lstrip("\n")
    cut = text.rfind("\n\nAssistant:")
    if cut < 0:
        raise UserError(f"{where}: a transcript has no Assistant turn")
    return text[:cut], text[cut + len("\n\nAssistant:") :].strip()


def _hh(rec: dict, where: str) -> list[tuple[list[dict], str, str]]:
    if not isinstance(rec["rejected"], str):
        raise UserError(f"{where}: 'rejected' must be a transcript string like 'chosen'")
    head_c, chosen = _last_turn(rec["chosen"], where)
    head_r, rejected = _last_turn(rec["rejected"], where)
    ctx = parse_transcript(head_c)
    if head_c != head_r or not ctx or ctx[-1]["role"] != "user":
        raise Inconsistent(where)
    return [(ctx, chosen, rejected)]


def _trl(rec: dict, where: str) -> list[tuple[list[dict], str, str]]:
    if "prompt" in rec:
        ctx = _context_from_prompt(rec["prompt"], where)
        extra_c, chosen = _answer(rec["chosen"], where, "chosen")
        _, rejected = _answer(rec["rejected"], where, "rejected")
        return [(ctx + extra_c, chosen, rejected)]
    # implicit prompt: two whole conversations that differ in their last assistant turn
    extra_c, chosen = _answer(rec["chosen"], where, "chosen")
    _, rejected = _answer(rec["rejected"], where, "rejected")
    if not extra_c or extra_c[-1]["role"] != "user":
        raise UserError(f"{where}: 'chosen' has no user turn before its answer and there is no 'prompt'")
    return [(extra_c, chosen, rejected)]


def _items(value: object, where: str, field: str) -> list:
    items = value if isinstance(value, list) and not (value and isinstance(value[0], dict)) else [value]
    if not items or not all(isinstance(i, (str, list)) for i in items):
        raise UserError(f"{where}: '{field}' must be a string or a list of strings")
    return items


def _multiple_choice(rec: dict, where: str) -> list[tuple[list[dict], str, str]]:
    good_key = "corrects" if "corrects" in rec else "text_correct"
    bad_key = "incorrects" if "incorrects" in rec else "text_incorrect"
    if bad_key not in rec:
        raise UserError(f"{where}: '{good_key}' needs a matching 'incorrects' or 'text_incorrect' field")

    def read(item: object, field: str) -> tuple[list[dict], str]:
        if isinstance(item, str) and _is_transcript(item):
            return _split_transcript(item, where)
        if "prompt" not in rec:
            raise UserError(f"{where}: '{field}' holds a bare answer but the record has no 'prompt'")
        extra, answer = _answer(item, where, field)
        return _context_from_prompt(rec["prompt"], where) + extra, answer

    goods = [read(i, good_key) for i in _items(rec[good_key], where, good_key)]
    bads = [read(i, bad_key) for i in _items(rec[bad_key], where, bad_key)]
    return [(gctx, g, b) for gctx, g in goods for _, b in bads]


def parse_record(rec: object, where: str) -> list[tuple[list[dict], str, str]]:
    """(context, chosen, rejected) triples from one record of any accepted layout."""
    if not isinstance(rec, dict):
        raise UserError(f"{where}: expected a JSON object")
    if any(k in rec for k in ("corrects", "text_correct")):
        return _multiple_choice(rec, where)
    if "chosen" in rec and "rejected" in rec:
        if isinstance(rec["chosen"], str) and "prompt" not in rec and _is_transcript(rec["chosen"]):
            return _hh(rec, where)
        return _trl(rec, where)
    raise UserError(
        f"{where}: expected HH-RLHF ('chosen'/'rejected' transcripts), TRL ('prompt'/'chosen'/'rejected') "
        "or multiple-choice ('corrects'/'incorrects' or 'text_correct'/'text_incorrect') fields"
    )


def load_pairs(path: str | Path, limit: int | None = None) -> tuple[list[LabeledPair], int]:
    """Read labelled pairs; returns (pairs, skipped).

    `skipped` counts pairs with two equal (or empty) answers and HH-RLHF records whose two
    transcripts disagree before the last turn (a handful in the public data): neither has a
    preference to recover.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: pairs file not found")
    opener = gzip.open if path.suffix == ".gz" else open
    pairs: list[LabeledPair] = []
    skipped = 0
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if limit is not None and len(pairs) >= limit:
                    break
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{where}: invalid JSON: {e.msg}") from None
                try:
                    triples = parse_record(rec, where)
                except Inconsistent:
                    skipped += 1
                    continue
                for i, (ctx, chosen, rejected) in enumerate(triples):
                    if not chosen or not rejected or chosen == rejected:
                        skipped += 1  # no preference to recover from two equal (or empty) answers
                        continue
                    pid = record_id("pair", str(path.name), lineno, i)
                    pairs.append(LabeledPair(pid, ctx, chosen, rejected, where if i == 0 else f"{where}#{i}"))
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    if limit is not None:
        pairs = pairs[:limit]
    if not pairs:
        raise UserError(f"{path}: no usable pairs found")
    return pairs, skipped
