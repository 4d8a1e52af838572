"""Human-labelled answer pairs for evaluation, read from the layouts people actually have.

Three layouts are accepted, line by line, in `.jsonl` or `.jsonl.gz`:

- HH-RLHF transcripts: `{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": ...}`. The
  two share every turn but the last assistant turn, which is the answer being compared.
- TRL preference records: `prompt` / `chosen` / `rejected` as message lists or strings (or the
  implicit-prompt form with only `chosen` / `rejected` conversations).
- The Constitutional AI paper's multiple-choice evaluations: a `prompt` holding a conversation,
  a question and options `(A) ...` / `(B) ...`, `corrects` / `incorrects` naming option letters
  (`[" (B)"]`), and, in the pairwise files, `text_correct` / `text_incorrect` transcripts ending
  in the right and the wrong answer. The letters are labels, never answers: the answers come
  from the transcripts, or from the prompt's options when there are no transcripts.

A line that is not JSON, or whose fields have the wrong types, stops the load with an error
naming the file and line. A record that is well-formed but holds no pair to recover (two equal
answers, transcripts that disagree before the answer, a multiple-choice item whose options rate
the conversation instead of answering it) is skipped and kept in the report with its reason, so
the user sees what was left out instead of an agreement computed on something else.
"""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cai.constitution import UserError
from cai.generators.queries import parse_transcript
from cai.generators.records import record_id

_TRANSCRIPT_MARKS = ("\n\nHuman:", "\n\nAssistant:")
_OPTION = re.compile(r"^[ \t]*\(([A-Z])\)[ \t]*", re.M)
_BRACKETED = re.compile(r"^[ \t]*\(([A-Z])\)[ \t]*\[\[\[(.*?)\]\]\]", re.M | re.S)
_ANSWER_CUE = re.compile(r"\n\s*The answer is:?\s*$")
_LETTER = re.compile(r"^\s*\(?([A-Z])\)?\s*$")

Triple = tuple[list[dict], str, str]


@dataclass(frozen=True)
class LabeledPair:
    """A conversation (ending with the user's turn) and two replies, `chosen` preferred by people."""

    id: str
    context: list[dict]
    chosen: str
    rejected: str
    where: str


class Skip(Exception):
    """A well-formed record with no pair in it: left out of the eval and reported with `reason`."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class PairsRead:
    """What one pass over a pairs file found: the pairs, and each record left out with its reason."""

    pairs: list[LabeledPair]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file:line, reason)

    def reasons(self) -> dict[str, int]:
        return dict(Counter(reason for _, reason in self.skipped))

    def summary(self) -> str | None:
        """One line for the terminal: how many were skipped, why, and where the first of each is."""
        if not self.skipped:
            return None
        first: dict[str, str] = {}
        for where, reason in self.skipped:
            first.setdefault(reason, where)
        parts = [f"{n} × {reason} (first at {first[reason]})" for reason, n in self.reasons().items()]
        return f"skipped {len(self.skipped)}: " + "; ".join(parts)


def _is_transcript(text: str) -> bool:
    padded = "\n\n" + text.lstrip("\n")
    return padded.startswith(_TRANSCRIPT_MARKS[0]) and _TRANSCRIPT_MARKS[1] in padded


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


def _last_turn(text: str) -> tuple[str, str]:
    """(everything before the last Assistant turn, that turn's text)."""
    text = "\n\n" + text.lstrip("\n")
    cut = text.rfind("\n\nAssistant:")
    if cut < 0:
        raise Skip("a transcript has no Assistant turn")
    return text[:cut], text[cut + len("\n\nAssistant:") :].strip()


def _split_pair(chosen: str, rejected: str) -> Triple:
    """Two transcripts that share the conversation and differ in their last Assistant turn."""
    head_c, answer_c = _last_turn(chosen)
    head_r, answer_r = _last_turn(rejected)
    if head_c.strip() != head_r.strip():
        raise Skip("the two transcripts differ before their last Assistant turn")
    ctx = parse_transcript(head_c)
    if not ctx or ctx[-1]["role"] != "user":
        raise Skip("the conversation before the answers does not end with a Human turn")
    return ctx, answer_c, answer_r


def _hh(rec: dict, where: str) -> list[Triple]:
    if not isinstance(rec["rejected"], str):
        raise UserError(f"{where}: 'rejected' must be a transcript string like 'chosen'")
    return [_split_pair(rec["chosen"], rec["rejected"])]


def _trl(rec: dict, where: str) -> list[Triple]:
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


def _strings(value: object, where: str, field: str) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(i, str) for i in items):
        raise UserError(f"{where}: '{field}' must be a string or a list of strings")
    return items


def _letters(value: object, where: str, field: str) -> list[str]:
    letters = []
    for item in _strings(value, where, field):
        m = _LETTER.match(item)
        if not m:
            raise Skip(f"'{field}' holds {item.strip()[:30]!r}, not an option letter such as ' (A)'")
        letters.append(m.group(1))
    return letters


def prompt_options(prompt: str) -> tuple[list[dict], str, dict[str, str]]:
    """(conversation, question, {letter: option text}) from a multiple-choice prompt.

    The options are the last run of lines `(A) ...`, `(B) ...`, ... (each optionally wrapped in
    `[[[ ]]]`, as in the paper's files); the question is the paragraph just before them; the
    conversation is the HH-style transcript before that, from its first `Human:` turn.
    """
    bracketed = list(_BRACKETED.finditer(prompt))
    if len(bracketed) >= 2:  # the paper's pairwise files: options fenced, so an answer may hold "(A)" itself
        options = {m.group(1): m.group(2).strip() for m in bracketed}
        head = prompt[: bracketed[0].start()].rstrip()
    else:
        marks = list(_OPTION.finditer(prompt))
        letters = [m.group(1) for m in marks]
        start = next(
            (j for j in range(len(marks)) if letters[j:] == [chr(65 + k) for k in range(len(marks) - j)]), None
        )
        if start is None or len(marks) - start < 2:
            raise Skip("no options (A), (B), ... found in the prompt")
        marks = marks[start:]
        options = {}
        for m, nxt in zip(marks, [*marks[1:], None]):
            text = prompt[m.end() : nxt.start() if nxt else len(prompt)]
            options[m.group(1)] = _ANSWER_CUE.sub("", text.rstrip()).strip()
        head = prompt[: marks[0].start()].rstrip()
    cut = head.rfind("\n\n")
    question = head[cut:].strip() if cut >= 0 else head.strip()
    head = head[:cut] if cut >= 0 else ""
    human = re.search(r"(?:^|\n)Human:", head)
    if human is None:
        raise Skip("no Human/Assistant conversation before the options")
    return parse_transcript(head[human.start() :]), question, options


def _multiple_choice(rec: dict, where: str) -> list[Triple]:
    if "text_correct" in rec or "text_incorrect" in rec:
        if not ("text_correct" in rec and "text_incorrect" in rec):
            raise UserError(f"{where}: 'text_correct' and 'text_incorrect' come together")
        goods = _strings(rec["text_correct"], where, "text_correct")
        bads = _strings(rec["text_incorrect"], where, "text_incorrect")
        return [_split_pair(g, b) for g in goods for b in bads]
    if "prompt" not in rec:
        raise UserError(f"{where}: 'corrects' needs a 'prompt' with the options, or 'text_correct'/'text_incorrect'")
    if not isinstance(rec["prompt"], str):
        raise UserError(f"{where}: 'prompt' must be a string holding the conversation and the options")
    correct = _letters(rec["corrects"], where, "corrects")
    conversation, _, options = prompt_options(rec["prompt"])
    if not conversation or conversation[-1]["role"] != "user":
        raise Skip("the options rate the conversation instead of answering it")
    incorrect = _letters(rec["incorrects"], where, "incorrects") if "incorrects" in rec else None
    if incorrect is None:
        incorrect = [k for k in options if k not in correct]
    missing = [k for k in correct + incorrect if k not in options]
    if missing:
        raise Skip(f"the prompt has no option ({missing[0]})")
    return [(conversation, options[g], options[b]) for g in correct for b in incorrect]


def parse_record(rec: object, where: str) -> list[Triple]:
    """(context, chosen, rejected) triples from one record of any accepted layout.

    Raises `Skip` for a record with no pair in it, `UserError` for one that fits no layout.
    """
    if not isinstance(rec, dict):
        raise UserError(f"{where}: expected a JSON object")
    if any(k in rec for k in ("corrects", "text_correct", "text_incorrect")):
        return _multiple_choice(rec, where)
    if "chosen" in rec and "rejected" in rec:
        if isinstance(rec["chosen"], str) and "prompt" not in rec and _is_transcript(rec["chosen"]):
            return _hh(rec, where)
        return _trl(rec, where)
    raise UserError(
        f"{where}: expected HH-RLHF ('chosen'/'rejected' transcripts), TRL ('prompt'/'chosen'/'rejected') "
        "or multiple-choice ('prompt' with 'corrects', or 'text_correct'/'text_incorrect') fields"
    )


def _open(path: Path, mode: str):
    return gzip.open(path, mode, encoding="utf-8") if path.suffix == ".gz" else open(path, mode, encoding="utf-8")


def read_pairs(path: str | Path, limit: int | None = None) -> PairsRead:
    """Read labelled pairs and the records left out, each with its file:line and reason."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: pairs file not found")
    out = PairsRead([])
    try:
        with _open(path, "rt") as f:
            for lineno, line in enumerate(f, 1):
                if limit is not None and len(out.pairs) >= limit:
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
                except Skip as s:
                    out.skipped.append((where, s.reason))
                    continue
                for i, (ctx, chosen, rejected) in enumerate(triples):
                    at = where if i == 0 else f"{where}#{i}"
                    if not chosen or not rejected:
                        out.skipped.append((at, "an empty answer"))
                    elif chosen == rejected:
                        out.skipped.append((at, "the two answers are the same"))
                    else:
                        pid = record_id("pair", str(path.name), lineno, i)
                        out.pairs.append(LabeledPair(pid, ctx, chosen, rejected, at))
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    if limit is not None:
        out.pairs = out.pairs[:limit]
    if not out.pairs:
        raise UserError(f"{path}: no usable pairs found" + (f" ({out.summary()})" if out.skipped else ""))
    return out


def load_pairs(path: str | Path, limit: int | None = None) -> tuple[list[LabeledPair], int]:
    """Read labelled pairs; returns (pairs, how many were skipped). `read_pairs` also says why."""
    read = read_pairs(path, limit)
    return read.pairs, len(read.skipped)


def pair_rows(pairs: list[LabeledPair]) -> list[dict]:
    """The pairs as TRL conversational preference rows, each with the file:line it came from."""
    return [
        {
            "prompt": p.context,
            "chosen": [{"role": "assistant", "content": p.chosen}],
            "rejected": [{"role": "assistant", "content": p.rejected}],
            "source": p.where,
        }
        for p in pairs
    ]


def write_pairs(pairs: list[LabeledPair], path: str | Path) -> Path:
    """Write the pairs as read, so a user can check what an eval compared (`.gz` compresses)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _open(path, "wt") as f:
            for row in pair_rows(pairs):
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    except OSError as e:
        raise UserError(f"{path}: cannot write ({e.strerror or e})") from None
    return path
