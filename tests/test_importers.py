"""Importers for the CAI paper's JSON and the open CAI recipe's JSON, on files written here."""

import json

import pytest

from cai.constitution import import_constitution, load_constitution
from cai.core.errors import UserError


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


# The CAI paper's three prompt files, in their published layouts, with texts written here.

CRITIQUE = "Point out every way the assistant's last reply could lead someone into danger."
REVISION = "Rewrite the assistant's reply so that nothing in it could lead someone into danger."
PAPER_INSTRUCTIONS = {
    "harmful0": {
        "prompt": [f"\n\nCritiqueRequest: {CRITIQUE}\n\nCritique:"],
        "edit_request": f"\n\nRevisionRequest: {REVISION}\n\nRevision:",
    },
    "harmful1": {
        "prompt": ["\n\nCritiqueRequest: Say whether the assistant's last reply was unkind to anyone.\n\nCritique:"],
        "edit_request": "\n\nRevisionRequest: Rewrite the assistant's reply to be kind to everyone in it.\n\nRevision:",
    },
}
PAPER_RANKING = [
    "\nWhich assistant reply is safer and kinder? Options:",
    "\nPick the reply a careful, honest friend would give. Options:",
]
BATH = (
    "\n\nHuman: Can I leave my toddler in the bath alone for a minute?\n\nAssistant: Sure, a minute is fine."
    f"\n\nCritiqueRequest: {CRITIQUE}"
    "\n\nCritique: A toddler can drown in seconds; the reply tells the parent it is safe to leave."
    f"\n\nRevisionRequest: {REVISION}"
    "\n\nRevision: Please don't: small children can slip under the water in seconds. Take them out with you."
    "\n\nHuman:"
)
COWORKER = (
    "\n\nHuman: My coworker is slow.\n\nAssistant: Sorry to hear that.\n\nHuman: How do I tell him?"
    "\n\nAssistant: Tell him he is useless."
    "\n\nCritiqueRequest: Is the reply rude to the coworker?"
    "\n\nCritique: It insults the coworker instead of helping."
    "\n\nRevisionRequest: Rewrite the reply to be respectful."
    "\n\nRevision: Ask him privately whether something is slowing him down, and offer to help."
)


def _json(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(json.dumps(data, indent=2))
    return path


def test_cai_paper_labels_are_stripped(tmp_path):
    c = import_constitution(_json(tmp_path, "CritiqueRevisionInstructions.json", PAPER_INSTRUCTIONS))
    assert [(p.id, p.critique, p.revision) for p in c.principles][0] == ("harmful0", CRITIQUE, REVISION)
    for p in c.principles:
        for text in (p.critique, p.revision):
            assert "Request:" not in text and not text.endswith(("Critique:", "Revision:"))


def test_cai_paper_ranking_principles(tmp_path):
    path = _json(tmp_path, "RLMadisonInstructions.json", PAPER_RANKING)
    c = import_constitution(path)
    assert [p.comparison for p in c.principles] == [
        "Which assistant reply is safer and kinder?",
        "Pick the reply a careful, honest friend would give.",
    ]
    assert all(p.critique is None for p in c.principles)
    # ids follow the text, not its place in the list
    again = import_constitution(_json(tmp_path, "reordered.json", PAPER_RANKING[::-1]))
    assert {p.id: p.comparison for p in again.principles} == {p.id: p.comparison for p in c.principles}


def test_cai_paper_few_shot_json(tmp_path):
    c = import_constitution(_json(tmp_path, "CritiqueRevisionFewShotPrompts.json", [BATH, COWORKER]))
    bath, coworker = c.few_shot
    assert [m.role for m in bath.messages] == ["user", "assistant"]
    assert bath.messages[0].content == "Can I leave my toddler in the bath alone for a minute?"
    assert bath.critique.startswith("A toddler can drown") and bath.revision.endswith("Take them out with you.")
    assert [m.role for m in coworker.messages] == ["user", "assistant", "user", "assistant"]
    # alone, the file's own requests become the principles its examples belong to
    assert c.principle(bath.principle_id).critique == CRITIQUE
    assert c.principle(coworker.principle_id).revision == "Rewrite the reply to be respectful."


@pytest.mark.parametrize("separator", ["\n\n-----\n\n", "\n\n\n"])
def test_cai_paper_few_shot_text(tmp_path, separator):
    path = tmp_path / "few-shot.txt"
    path.write_text(BATH.strip().removesuffix("Human:").strip() + separator + COWORKER.strip() + "\n")
    c = import_constitution(path)
    assert len(c.few_shot) == 2
    assert c.few_shot[1].critique == "It insults the coworker instead of helping."


def test_paper_files_import_into_one_constitution(tmp_path):
    files = [
        _json(tmp_path, "CritiqueRevisionFewShotPrompts.json", [BATH, COWORKER]),
        _json(tmp_path, "CritiqueRevisionInstructions.json", PAPER_INSTRUCTIONS),
        _json(tmp_path, "RLMadisonInstructions.json", PAPER_RANKING),
    ]
    c = import_constitution(files, name="paper")
    assert c.name == "paper"
    assert len(c.critique_principles) == 3 and len(c.comparison_principles) == 2
    # the bath example uses harmful0's critique text, so it joins harmful0
    assert [ex.principle_id for ex in c.few_shot][0] == "harmful0"


def test_few_shot_example_missing_its_revision_is_named(tmp_path):
    path = tmp_path / "few-shot.txt"
    path.write_text("Human: Hi\n\nAssistant: Go away.\n\nCritiqueRequest: Is it rude?\n\nCritique: Yes.\n")
    with pytest.raises(UserError, match=r"few-shot.txt:5: RevisionRequest: missing"):
        import_constitution(path)


def test_cli_imports_several_paper_files_into_one(tmp_path):
    from tests.cli import cai

    src = _json(tmp_path, "RLMadisonInstructions.json", PAPER_RANKING)
    out = tmp_path / "mine.yaml"
    r = cai("constitution", "import", src, _json(tmp_path, "i.json", PAPER_INSTRUCTIONS), "-o", out)
    assert r.returncode == 0, r.stderr
    assert len(load_constitution(out).principles) == 4
