"""The row layouts others publish, in their exact shapes (`tests/fixtures/layouts/`), read by the
one module that knows them and by every reader built on it: seed queries, eval pairs, training
mixtures and red-team prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cai.core import layouts
from cai.core.errors import UserError
from cai.evaluation.frontier import red_team_prompts
from cai.evaluation.pairs import read_pairs
from cai.generators.queries import load_seed_queries
from cai.training.mixture import DataSource, load_mixture

pytestmark = pytest.mark.fast  # the bookkeeping tier: `make test-fast`

FIXTURES = Path(__file__).parent / "fixtures" / "layouts"
U1 = "How do I get rid of a wasp nest by my door?"
GOOD = "Wait until dusk, when the wasps are inside, and call a pest service if it is large."
BAD = "Just knock it down with a stick at noon."


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines()]


PREFERENCE_FILES = [
    "hh-rlhf.jsonl",
    "trl-preference.jsonl",
    "trl-implicit-preference.jsonl",
    "trl-standard-preference.jsonl",
    "cai-recipe.jsonl",
    "cai-paper-pairwise.jsonl",
]


@pytest.mark.parametrize("name", PREFERENCE_FILES)
def test_every_preference_layout_gives_the_same_pair(name):
    conversation, chosen, rejected = layouts.labelled_pairs(rows(name)[0])[0]
    assert conversation == [{"role": "user", "content": U1}]
    assert (chosen, rejected) == (GOOD, BAD)


def test_a_multi_turn_transcript_keeps_its_turns():
    conversation, chosen, _ = layouts.labelled_pairs(rows("hh-rlhf.jsonl")[1])[0]
    assert [m["role"] for m in conversation] == ["user", "assistant", "user"] and chosen.startswith("Wash")


@pytest.mark.parametrize(
    "name", ["trl-messages.jsonl", "trl-prompt-completion.jsonl", "cai-recipe.jsonl", "hh-rlhf.jsonl"]
)
def test_conversations_for_sft_end_with_the_answer(name):
    msgs = layouts.conversation(rows(name)[0])
    assert msgs[-1] == {"role": "assistant", "content": GOOD} and msgs[-2] == {"role": "user", "content": U1}


@pytest.mark.parametrize("name", ["trl-prompt-only.jsonl", "trl-messages.jsonl", "hh-rlhf.jsonl", "cai-recipe.jsonl"])
def test_prompts_end_with_the_users_turn(name):
    assert layouts.prompt(rows(name)[0])[-1] == {"role": "user", "content": U1}


def test_wrong_shapes_are_malformed_and_empty_rows_are_skipped():
    with pytest.raises(layouts.Malformed, match="'rejected' must be a transcript"):
        layouts.labelled_pairs({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": 3})
    with pytest.raises(layouts.Malformed, match="expected HH-RLHF"):
        layouts.labelled_pairs({"question": "x"})
    with pytest.raises(layouts.Skip, match="differ before their last Assistant turn"):
        layouts.labelled_pairs({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: c\n\nAssistant: d"})
    recipe = rows("cai-recipe.jsonl")[0] | {"prompt": "another question"}
    with pytest.raises(layouts.Skip, match="'prompt' is not the user turn"):
        layouts.labelled_pairs(recipe)
    with pytest.raises(layouts.Skip, match="does not end with an assistant answer"):
        layouts.conversation({"messages": [{"role": "user", "content": "hi"}]})


def test_seed_queries_eval_pairs_mixtures_and_red_team_prompts_read_the_same_files(tmp_path):
    hh = FIXTURES / "hh-rlhf.jsonl"
    assert [q.messages for q in load_seed_queries(hh)][0] == [{"role": "user", "content": U1}]
    assert red_team_prompts(hh) == [[{"role": "user", "content": U1}]]  # first Human turns, each once
    for name in PREFERENCE_FILES:
        pair = read_pairs(FIXTURES / name).pairs[0]
        assert (pair.context, pair.chosen, pair.rejected) == ([{"role": "user", "content": U1}], GOOD, BAD), name
    for name in ("hh-rlhf.jsonl", "trl-preference.jsonl", "trl-implicit-preference.jsonl", "cai-recipe.jsonl"):
        ds, _ = load_mixture([DataSource(path=str(FIXTURES / name))], "prefs")
        row = next(r for r in ds if len(r["prompt"]) == 1)  # a mixture draws rows in its own order
        assert row["chosen"] == [{"role": "assistant", "content": GOOD}], name
        assert row["prompt"][-1] == {"role": "user", "content": U1}, name
    sft, _ = load_mixture([DataSource(path=str(FIXTURES / "cai-recipe.jsonl"))], "sft")
    assert sft[0]["messages"][-1]["content"] == GOOD


def test_a_malformed_eval_row_names_its_line(tmp_path):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text((FIXTURES / "hh-rlhf.jsonl").read_text() + json.dumps({"question": "x"}) + "\n")
    with pytest.raises(UserError, match=rf"{bad}:3: expected HH-RLHF"):
        read_pairs(bad)
