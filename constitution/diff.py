"""What changed between two versions of a principle file, principle by principle.

A text diff of YAML mixes formatting with meaning and cannot tell a renamed principle from a
removed one plus a new one. This compares the parsed constitutions: items are matched by id,
an item whose id vanished while an item with the same content appeared is a rename, and changed
text fields get a word-level diff so a one-word edit in a long sentence is easy to see.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import asdict, dataclass
from typing import Literal

from .schema import Constitution

Kind = Literal["added", "removed", "renamed", "changed"]
_WORDS = re.compile(r"\S+")


@dataclass(frozen=True)
class Change:
    kind: Kind
    section: str  # principles, traits, few_shot, comparison_examples, or the constitution's own ("constitution")
    id: str  # the item's id (new id for a rename); the field name for constitution-level changes
    field: str | None = None
    old: object = None
    new: object = None
    words: str | None = None  # word diff: [-removed-]{+added+}

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def word_diff(old: str, new: str) -> str:
    """`old` and `new` merged word by word, with `[-gone-]` and `{+new+}` marking the edits."""
    a, b = _WORDS.findall(old), _WORDS.findall(new)
    out: list[str] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            out += a[i1:i2]
            continue
        if i2 > i1:
            out.append("[-" + " ".join(a[i1:i2]) + "-]")
        if j2 > j1:
            out.append("{+" + " ".join(b[j1:j2]) + "+}")
    return " ".join(out)


def _fields(item: dict, changes: list[Change], section: str, ident: str, other: dict) -> None:
    for key in sorted(set(item) | set(other)):
        old, new = item.get(key), other.get(key)
        if key == "id" or old == new:
            continue
        words = word_diff(old, new) if isinstance(old, str) and isinstance(new, str) else None
        changes.append(Change("changed", section, ident, key, old, new, words))


def _items(section: str, old: list[dict], new: list[dict]) -> list[Change]:
    before = {x["id"]: x for x in old}
    after = {x["id"]: x for x in new}
    changes: list[Change] = []
    gone = [i for i in before if i not in after]
    came = [i for i in after if i not in before]
    body = lambda x: {k: v for k, v in x.items() if k != "id"}  # noqa: E731
    for new_id in list(came):
        match = next((i for i in gone if body(before[i]) == body(after[new_id])), None)
        if match is not None:
            changes.append(Change("renamed", section, new_id, "id", match, new_id))
            gone.remove(match)
            came.remove(new_id)
    changes += [Change("removed", section, i, old=before[i]) for i in gone]
    changes += [Change("added", section, i, new=after[i]) for i in came]
    for i in before:
        if i in after:
            _fields(before[i], changes, section, i, after[i])
    return changes


def diff_constitutions(old: Constitution, new: Constitution) -> list[Change]:
    """Every difference in meaning between two constitutions; empty when they are equal."""
    a, b = old.model_dump(mode="json"), new.model_dump(mode="json")
    changes: list[Change] = []
    for key in ("name", "description", "version", "query_generation"):
        if a.get(key) != b.get(key):
            old_v, new_v = a.get(key), b.get(key)
            words = word_diff(old_v, new_v) if isinstance(old_v, str) and isinstance(new_v, str) else None
            changes.append(Change("changed", "constitution", key, key, old_v, new_v, words))
    changes += _items("principles", a["principles"], b["principles"])
    changes += _items("traits", a["traits"], b["traits"])
    # Examples have no ids: match them by position, which is how a user edits them.
    for section in ("few_shot", "comparison_examples"):
        xs, ys = a[section], b[section]
        for i in range(max(len(xs), len(ys))):
            x = xs[i] if i < len(xs) else None
            y = ys[i] if i < len(ys) else None
            if x is None:
                changes.append(Change("added", section, str(i), new=y))
            elif y is None:
                changes.append(Change("removed", section, str(i), old=x))
            elif x != y:
                _fields(x, changes, section, str(i), y)
    return changes
