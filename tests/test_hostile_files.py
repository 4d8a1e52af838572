"""Files made to hang or crash whatever reads them: each ends in one located line and exit 2,
through the real command, long before the subprocess timeout (without the bounds the alias bomb
runs past a minute and deep nesting ends in a RecursionError traceback)."""

import json

import pytest

from cai.constitution.lint import lint_text
from cai.core.errors import UserError
from cai.core.files import MAX_ALIAS_NODES, MAX_DEPTH, MAX_FILE_BYTES
from tests.cli import cai

QUICK = 20  # seconds: the subprocess timeout, far above a refusal, far below a hang


def alias_bomb() -> str:
    """The "billion laughs": nine levels, each nine aliases of the one before (9**9 strings)."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [{','.join([f'*{prev}'] * 9)}]")
    return "\n".join(lines) + "\n"


def deep_block_yaml(levels: int) -> str:
    return "".join(f"{'  ' * i}k{i}:\n" for i in range(levels)) + f"{'  ' * levels}v\n"


def deep_alias_yaml() -> str:
    """Each part within the depth bound; the alias puts a deep anchor at a deep place."""
    half = MAX_DEPTH // 2 + 4
    return f"a: &deep {'[' * half}1{']' * half}\nb: {'[' * half}*deep{']' * half}\n"


# name -> (text, line the refusal names, what it says)
HOSTILE = {
    "bomb.yaml": (alias_bomb(), 5, "too many YAML aliases"),
    "deep-flow.yaml": ("name: " + "[" * 500 + "]" * 500 + "\n", 1, f"nested deeper than {MAX_DEPTH} levels"),
    "deep-block.yaml": (deep_block_yaml(500), MAX_DEPTH + 1, f"nested deeper than {MAX_DEPTH} levels"),
    "deep-alias.yaml": (deep_alias_yaml(), 2, f"nested deeper than {MAX_DEPTH} levels (through alias *deep)"),
    "recursive.yaml": ("a: &a [1, *a]\n", 1, "a YAML alias inside the node it names"),
    "deep.json": ('{"name":\n' + "[" * 500 + "]" * 500 + "}\n", 2, f"nested deeper than {MAX_DEPTH} levels"),
    # Tab-indented JSON is JSON that YAML will not parse: its nesting is checked on its own.
    "deep-tabs.json": ('{\n\t"name":\n\t' + "[" * 500 + "]" * 500 + "\n}\n", 3, f"nested deeper than {MAX_DEPTH}"),
}
# Not past a bound, but once a traceback or minutes of work: now plain located errors.
MALFORMED = {
    "long-int.yaml": ("name: x\nversion: " + "9" * 5000 + "\n", 2, "invalid YAML: Exceeds the limit"),
    "long-int.json": ('{"name": "x",\n "version": ' + "9" * 5000 + "}\n", 2, "invalid JSON: Exceeds the limit"),
    # Quotes that never close, in JSON YAML rejects (a tab): the nesting scan stays linear.
    "unclosed.json": ("\t" + '"\\' * 100_000, 1, "invalid JSON"),
}
# Past 256 KiB the loader parses with libyaml: the same bounds hold there. One line of padding
# (a comment, or blanks for JSON) takes a file past it.
PADDING = {"yaml": "# " + "padding " * 40_000 + "\n", "json": " " * 320_000 + "\n"}


def _one_line_refusal(r, path, line: int | None, says: str) -> None:
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    prefix = f"{path}:{line}: " if line is not None else f"{path}: "
    assert lines[0].startswith(prefix) and says in lines[0], (prefix, lines[0])


@pytest.mark.parametrize("padded", [False, True], ids=["pyyaml", "libyaml"])
@pytest.mark.parametrize("name", [*HOSTILE, *MALFORMED])
def test_hostile_file_is_one_line_and_exit_2(tmp_path, name, padded):
    text, line, says = {**HOSTILE, **MALFORMED}[name]
    f = tmp_path / name
    f.write_text(PADDING[f.suffix[1:]] + text if padded else text)
    r = cai("constitution", "lint", f, timeout=QUICK)
    _one_line_refusal(r, f, line + padded, says)


def test_alias_bomb_is_small_and_expands_past_the_bound():
    text = alias_bomb()
    assert len(text.encode()) < 600 and MAX_ALIAS_NODES < 9**9


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path):
    f = tmp_path / "huge.yaml"
    with open(f, "wb") as out:
        out.truncate(MAX_FILE_BYTES + 1)  # sparse: the size is there, the bytes need not be read
    r = cai("constitution", "lint", f, timeout=QUICK)
    _one_line_refusal(r, f, None, f"{MAX_FILE_BYTES + 1} bytes, over the 8 MiB limit for a principle or config file")

    j = tmp_path / "huge.json"
    j.write_text(json.dumps({"name": "x" * MAX_FILE_BYTES}))
    r = cai("run", j, "--out", tmp_path / "run", timeout=QUICK)  # a config file is bounded the same way
    _one_line_refusal(r, j, None, "over the 8 MiB limit")


def test_text_in_memory_over_the_size_limit_is_refused():
    with pytest.raises(UserError, match=r"^buffer.yaml: 8388610 bytes, over the 8 MiB limit"):
        lint_text("#" + "é" * (MAX_FILE_BYTES // 2) + "\n", "buffer.yaml")


ANCHORED = """\
# Anchors, aliases and a merge key, as people use them to avoid repeating themselves.
name: anchored
principles:
  - id: kind
    critique: &critique Point out where the answer is unkind.
    revision: &revision Rewrite the answer so it is kind, keeping what helps.
    comparison: &comparison Which answer is kinder?
    tags: &tags [tone, care]
  - id: kind-again
    critique: *critique
    revision: *revision
    comparison: *comparison
    tags: *tags
  - &honest
    id: honest
    comparison: Which answer is more honest?
    weight: 2.0
  - <<: *honest
    id: honest-again
"""


def test_a_file_with_a_few_anchors_still_lints(tmp_path):
    f = tmp_path / "anchored.yaml"
    f.write_text(ANCHORED)
    r = cai("constitution", "lint", f, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"ok {f} (anchored: 4 principles" in r.stdout

    # Problems are still reported at their own lines: a key in the anchored mapping where it is
    # written, and again where the merge key brings it in (merged keys are not "duplicates").
    broken = ANCHORED.replace("    weight: 2.0\n", "    weight: 2.0\n    colour: blue\n")
    f.write_text(broken)
    r = cai("constitution", "lint", f, timeout=120)
    lines = broken.splitlines()
    colour, merge = lines.index("    colour: blue") + 1, lines.index("  - <<: *honest") + 1
    assert r.returncode == 2 and r.stderr.splitlines() == [
        f"{f}:{colour}: principles[2].colour: unknown key 'colour'",
        f"{f}:{merge}: principles[3].colour: unknown key 'colour'",
    ]


def test_many_aliases_in_a_big_file_are_within_the_bound(tmp_path):
    """The alias bound grows with the file: a long file that reuses one tag list throughout is fine."""
    rows = [f"  - id: p{i}\n    comparison: Which answer is better on {i}?\n    tags: *tags\n" for i in range(3000)]
    text = "name: many\nprinciples:\n  - id: first\n    comparison: Which?\n    tags: &tags [a, b, c, d]\n"
    f = tmp_path / "many.yaml"
    f.write_text(text + "".join(rows))
    assert MAX_ALIAS_NODES < 3000 * 5
    r = cai("constitution", "lint", f, timeout=120)
    assert r.returncode == 0, r.stderr
