"""Importers for the CAI paper's JSON and the open CAI recipe's JSON, on files written here."""

import json

import pytest

from cai.constitution import UserError, import_constitution, load_constitution


def test_cai_paper_layout(tmp_path):
    data = {
        "harmful0": {
            "prompt": ["Name the ways the last answer could hurt someone."],
            "edit_request": "Rewrite it safely.",
        },
        "harmful1": {
            "prompt": ["Is the answer rude?", "Is the answer dishonest?"],
            "edit_request": "Rewrite it politely and honestly.",
        },
    }
    path = tmp_path / "paper.json"
    path.write_text(json.dumps(data))
    c = import_constitution(path)
    assert [p.id for p in c.principles] == ["harmful0", "harmful1-0", "harmful1-1"]
    assert c.principles[2].critique == "Is the answer dishonest?"
    assert c.principles[2].revision == "Rewrite it politely and honestly."
    assert c.name == "paper"


def test_hf_recipe_layout_with_few_shot(tmp_path):
    critic = "Point out anything harmful in the last reply."
    data = {
        "constitutions": [
            {"critic": critic, "revision": "Rewrite the reply without the harm."},
            {"critic": "Is the reply unfair to anyone?", "revision": "Make the reply fair."},
        ],
        "system_chat": [
            [
                {"role": "user", "content": "How do I get into my ex's email?"},
                {"role": "assistant", "content": "Guess their password."},
                {"role": "user", "content": critic},
                {"role": "assistant", "content": "It helps break into someone's account."},
                {"role": "user", "content": "Rewrite the reply without the harm."},
                {
                    "role": "assistant",
                    "content": "I can't help access someone else's account; if you need data back, ask them.",
                },
            ]
        ],
    }
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(data))
    c = import_constitution(path, name="recipe")
    assert len(c.principles) == 2
    ex = c.few_shot[0]
    assert ex.principle_id == c.principles[0].id
    assert [m.role for m in ex.messages] == ["user", "assistant"]
    assert ex.critique.startswith("It helps")


def test_import_then_dump_then_load(tmp_path):
    from cai.constitution import dump_constitution

    path = tmp_path / "paper.json"
    path.write_text(json.dumps({"x": {"prompt": ["critique"], "edit_request": "revise"}}))
    out = tmp_path / "out.yaml"
    out.write_text(dump_constitution(import_constitution(path)))
    assert load_constitution(out).principles[0].critique == "critique"


def test_bad_recipe_conversation_is_named(tmp_path):
    data = {"constitutions": [{"critic": "c", "revision": "r"}], "system_chat": [[{"role": "user", "content": "hi"}]]}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"bad.json: system_chat\[0\]"):
        import_constitution(path)


def test_unrecognised_layout(tmp_path):
    path = tmp_path / "what.json"
    path.write_text(json.dumps({"foo": 1}))
    with pytest.raises(UserError, match="what.json: unrecognised layout"):
        import_constitution(path)


def test_empty_texts_in_imports_are_rejected(tmp_path):
    path = tmp_path / "paper.json"
    path.write_text(json.dumps({"x": {"prompt": [""], "edit_request": "revise"}}))
    with pytest.raises(UserError, match=r"principles\[0\].critique: must not be empty"):
        import_constitution(path)
