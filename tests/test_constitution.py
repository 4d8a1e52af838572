"""Principle files: validation with located errors, shipped files, sampling, lint."""

import collections
import json

import pytest

from cai.constitution import (
    ConstitutionError,
    UserError,
    dump_constitution,
    library_names,
    load_constitution,
    weighted_sample,
)
from cai.constitution.lint import lint_file
from cai.constitution.schema import Constitution


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


GOOD = """\
name: tiny
principles:
  - id: kind
    critique: Say how the answer is unkind.
    revision: Rewrite it kindly.
    comparison: Which answer is kinder?
    weight: 2
  - id: true
    critique: Say what is false.
    revision: Rewrite it truthfully.
"""


def test_good_file_loads(tmp_path):
    c = load_constitution(write(tmp_path, GOOD.replace("id: true", "id: truth")))
    assert [p.id for p in c.principles] == ["kind", "truth"]
    assert c.principles[0].weight == 2
    assert c.comparison_principles == [c.principles[0]]


def test_duplicate_id_empty_critique_and_unknown_key_all_reported_with_lines(tmp_path):
    text = """\
name: bad
principles:
  - id: one
    critique: Say what is wrong.
    revision: Fix it.
  - id: one
    critique: ""
    revision: Fix it.
    colour: blue
"""
    path = write(tmp_path, text)
    with pytest.raises(ConstitutionError) as info:
        load_constitution(path)
    problems = info.value.problems
    assert f"{path}:6: principles[1].id: duplicate id 'one' (first used by principles[0])" in problems
    assert f"{path}:7: principles[1].critique: must not be empty" in problems
    assert f"{path}:9: principles[1].colour: unknown key 'colour'" in problems
    assert len(problems) == 3


def test_wrong_type_and_missing_field(tmp_path):
    text = (
        "name: x\nprinciples:\n  - id: a\n    critique: c\n    revision: r\n    weight: heavy\n"
        "  - critique: c\n    revision: r\n"
    )
    path = write(tmp_path, text)
    with pytest.raises(ConstitutionError) as info:
        load_constitution(path)
    joined = "\n".join(info.value.problems)
    assert f"{path}:6: principles[0].weight:" in joined
    assert f"{path}:7: principles[1].id: required field is missing" in joined


def test_bad_yaml_names_line(tmp_path):
    path = write(tmp_path, "name: x\nprinciples:\n  - id: [unclosed\n")
    with pytest.raises(UserError, match=rf"^{path}:\d+: invalid YAML"):
        load_constitution(path)


def test_duplicate_yaml_key_is_reported(tmp_path):
    path = write(
        tmp_path, GOOD.replace("id: true", "id: truth").replace("    weight: 2\n", "    weight: 2\n    weight: 3\n")
    )
    with pytest.raises(ConstitutionError, match="key appears twice"):
        load_constitution(path)


def test_half_a_principle_is_rejected(tmp_path):
    path = write(tmp_path, "name: x\nprinciples:\n  - id: a\n    critique: only a critique\n")
    with pytest.raises(ConstitutionError, match=r":3: principles\[0\]: a principle with a critique needs a revision"):
        load_constitution(path)


def test_json_accepted_and_errors_located(tmp_path):
    data = {"name": "j", "principles": [{"id": "a", "comparison": "Which is better?"}, {"id": "b", "comparison": ""}]}
    path = write(tmp_path, json.dumps(data, indent=2), "c.json")
    with pytest.raises(ConstitutionError) as info:
        load_constitution(path)
    assert info.value.problems == [f"{path}:10: principles[1].comparison: must not be empty"]


def test_missing_file():
    with pytest.raises(UserError, match="no-such.yaml: file not found"):
        load_constitution("no-such.yaml")


def test_few_shot_must_reference_known_principle(tmp_path):
    text = GOOD.replace("id: true", "id: truth") + (
        "few_shot:\n  - messages:\n      - {role: user, content: hi}\n      - {role: assistant, content: go away}\n"
        "    principle_id: nope\n    critique: rude\n    revision: hello!\n"
    )
    with pytest.raises(ConstitutionError, match=r":15: few_shot\[0\].principle_id: no principle has id 'nope'"):
        load_constitution(write(tmp_path, text))


@pytest.mark.parametrize("name", library_names())
def test_shipped_constitutions_load_and_round_trip(name, tmp_path):
    c, _warnings = lint_file(name)
    again = load_constitution(write(tmp_path, dump_constitution(c)))
    assert again == c
    assert again.content_hash() == c.content_hash()


def test_shipped_library_meets_its_promises():
    assert {"harmless", "hhh", "character"} <= set(library_names())
    harmless = load_constitution("harmless")
    assert len(harmless.critique_principles) >= 16
    tags = {t for p in harmless.principles for t in p.tags}
    assert "evasiveness" in tags or any("evasive" in p.id for p in harmless.principles)
    assert harmless.few_shot and harmless.query_generation
    assert all(p.comparison for p in load_constitution("hhh").principles)
    character = load_constitution("character")
    assert len(character.traits) >= 8 and all(len(t.questions) >= 3 for t in character.traits)


def test_content_hash_ignores_formatting(tmp_path):
    a = load_constitution(write(tmp_path, GOOD.replace("id: true", "id: truth"), "a.yaml"))
    b = load_constitution(write(tmp_path, "# a comment\n" + GOOD.replace("id: true", "id: truth"), "b.yaml"))
    c = load_constitution(write(tmp_path, GOOD.replace("id: true", "id: truth2"), "c.yaml"))
    assert a.content_hash() == b.content_hash() != c.content_hash()


def _principles(weights):
    return Constitution.model_validate(
        {"name": "w", "principles": [{"id": f"p{i}", "comparison": "?", "weight": w} for i, w in enumerate(weights)]}
    ).principles


def test_sampling_is_deterministic_per_seed_and_without_replacement():
    ps = _principles([1, 1, 1, 1, 1, 1])
    a = weighted_sample(ps, 4, seed="run-1/item-7")
    assert a == weighted_sample(ps, 4, seed="run-1/item-7")
    assert len({p.id for p in a}) == 4
    draws = {tuple(p.id for p in weighted_sample(ps, 4, seed=f"s{i}")) for i in range(20)}
    assert len(draws) > 10  # different seeds give different draws
    assert len(weighted_sample(ps, 10, seed=1)) == 6


def test_sampling_follows_weights():
    ps = _principles([8, 1, 1])
    firsts = collections.Counter(weighted_sample(ps, 1, seed=i)[0].id for i in range(3000))
    # P(first = p0) = 0.8; 3000 draws put it within a few points of that
    assert 0.75 < firsts["p0"] / 3000 < 0.85
    assert 0.07 < firsts["p1"] / 3000 < 0.13


def test_lint_warns_without_failing(tmp_path):
    _, warnings = lint_file(write(tmp_path, GOOD.replace("id: true", "id: truth")))
    assert any("few_shot" in w for w in warnings)
