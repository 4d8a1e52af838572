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
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cai.core.errors import UserError
from cai.core.ids import record_id
from cai.core.layouts import Malformed, Skip, Triple, labelled_pairs, prompt_options

__all__ = ["LabeledPair", "PairsRead", "Skip", "load_pairs", "parse_record", "prompt_options", "read_pairs"]


@dataclass(frozen=True)
class LabeledPair:
    """A conversation (ending with the user's turn) and two replies, `chosen` preferred by people."""

    id: str
    context: list[dict]
    chosen: str
    rejected: str
    where: str


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


def parse_record(rec: object, where: str) -> list[Triple]:
    """(context, chosen, rejected) triples from one record of any accepted layout (`cai.core.layouts`).

    Raises `Skip` for a record with no pair in it, `UserError` for one that fits no layout.
    """
    try:
        return labelled_pairs(rec)
    except Malformed as e:
        raise UserError(f"{where}: {e}") from None


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
