"""`cai constitution diff`: matched by id, renames found by content, word-level edits, diff's exit codes."""

import json

from cai.constitution import library_path
from cai.constitution.diff import diff_constitutions, word_diff
from cai.constitution.loader import load_constitution
from tests.cli import cai


def edited_copy(tmp_path):
    """The shipped harmless file with one of each kind of edit, made on its text as a user would."""
    text = library_path("harmless").read_text()
    text = text.replace("- id: general-harm", "- id: broad-harm", 1)  # rename
    text = text.replace("List the exact parts that do.", "List every part that does.", 1)  # word edit
    head, _, rest = text.partition("  - id: honesty\n")  # remove one principle, up to the next one
    text = head + rest[rest.index("  - id: ") :]
    text = text.replace(
        "principles:\n",
        "principles:\n  - id: brand-new\n    comparison: Which answer is kinder to a stranger?\n",
        1,
    )
    path = tmp_path / "edited.yaml"
    path.write_text(text)
    return path


def test_word_diff_marks_only_the_edit():
    assert word_diff("a quick brown fox", "a slow brown fox") == "a [-quick-] {+slow+} brown fox"
    assert word_diff("same words", "same  words") == "same words"


def test_diff_finds_each_kind_of_change(tmp_path):
    old = load_constitution("harmless")
    assert "honesty" in {p.id for p in old.principles}
    new = load_constitution(edited_copy(tmp_path))
    changes = diff_constitutions(old, new)
    kinds = {(c.kind, c.id) for c in changes}
    assert ("renamed", "broad-harm") in kinds
    assert ("removed", "honesty") in kinds
    assert ("added", "brand-new") in kinds
    edit = next(c for c in changes if c.kind == "changed")
    assert (edit.id, edit.field) == ("illegal-activity", "critique")
    assert edit.words.endswith("List [-the exact parts-] {+every part+} that [-do.-] {+does.+}")
    assert len(changes) == 4
    assert diff_constitutions(old, old) == []


def test_cli_exit_codes_like_diff(tmp_path):
    same = cai("constitution", "diff", "harmless", library_path("harmless"))
    assert same.returncode == 0 and "no changes" in same.stdout
    edited = edited_copy(tmp_path)
    r = cai("constitution", "diff", "harmless", edited, "--json")
    assert r.returncode == 1, r.stderr
    assert {c["kind"] for c in json.loads(r.stdout)} == {"renamed", "removed", "added", "changed"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nprinciples: [{id: a}]\n")
    r = cai("constitution", "diff", "harmless", bad)
    assert r.returncode == 2 and f"{bad}:" in r.stderr and "Traceback" not in r.stderr


def test_cli_prints_word_edits_as_written(tmp_path):
    r = cai("constitution", "diff", "harmless", edited_copy(tmp_path))
    assert r.returncode == 1, r.stderr
    out = " ".join(r.stdout.split())
    assert "List [-the exact parts-] {+every part+} that [-do.-] {+does.+}" in out
    assert "renamed principles[broad-harm]: general-harm -> broad-harm" in out and "4 change(s)" in out
