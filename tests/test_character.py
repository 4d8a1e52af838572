"""Character training: trait-targeted ranking, context distillation, the leak filter, the eval."""

import json

import pytest
from markupsafe import escape

from cai.constitution import load_constitution
from cai.critique.distill import distill_pairs, leak_reason, teacher_system_prompt
from cai.critique.rank import pool_for, ranking_principles
from cai.evaluation.character import leak_rate, trait_queries
from cai.evaluation.policy import Wins
from cai.generators.records import Query, Response
from tests.cli import cai

C = load_constitution("character")


@pytest.mark.parametrize(
    "answer, reason",
    [
        ("As my constitution says, I love questions!", "mentions 'constitution'"),
        ("My instructions tell me to be warm. Here is a recipe.", "mentions 'my instructions'"),
        ("I was told to be curious, so: why do you ask?", "mentions 'i was told to'"),
        (f"Speaking from my {C.traits[0].id} side: tell me more.", f"names the trait {C.traits[0].id!r}"),
        (" ".join(C.traits[1].text.split()[:9]) + " anyway, here is the answer.", "quotes the constitution"),
    ],
)
def test_leaks_are_caught(answer, reason):
    assert leak_reason(answer, C) == reason


@pytest.mark.parametrize(
    "answer",
    [
        "Good question! Volcanoes form where magma reaches the surface; want to know why some explode?",
        "I'm not sure, honestly. My best guess is about 40%, but check a recent source.",
        "",
    ],
)
def test_ordinary_answers_pass(answer):
    assert leak_reason(answer, C) is None


def test_teacher_prompt_carries_every_trait_and_forbids_mentioning_them():
    system = teacher_system_prompt(C)
    assert all(t.text in system for t in C.traits)
    assert "Never mention" in system


def test_trait_queries_are_ranked_on_their_trait():
    t = C.traits[2]
    q = Query(id="q-1", messages=[{"role": "user", "content": "?"}], origin="generated", trait_ids=[t.id])
    (p,) = pool_for(C, q)
    assert p.id == t.id and p.comparison == t.comparison
    untagged = Query(id="q-2", messages=[{"role": "user", "content": "?"}], origin="seed")
    assert {p.id for p in pool_for(C, untagged)} == {p.id for p in ranking_principles(C)} >= {t.id for t in C.traits}


def test_distill_pairs_skip_leaky_teachers_and_label_teacher_chosen():
    qs = [
        Query(id=f"q-{i}", messages=[{"role": "user", "content": "hi"}], origin="generated", trait_ids=["curiosity"])
        for i in range(3)
    ]

    def resp(rid, q, text, dropped=None):
        return Response(
            id=rid, query_id=q, sample_index=0, text=text, model="m", tokens=3, finish_reason="stop", dropped=dropped
        )

    teachers = [
        resp("t-0", "q-0", "Ooh, tell me more!"),
        resp("t-1", "q-1", "My traits say hi", "mentions 'my traits'"),
        resp("t-2", "q-2", "same"),
    ]
    students = [resp("s-0", "q-0", "Hello."), resp("s-1", "q-1", "Hello."), resp("s-2", "q-2", "same")]
    (pair,) = distill_pairs(qs, teachers, students, 0.9)
    assert (pair.chosen_id, pair.rejected_id, pair.p_chosen, pair.method) == ("t-0", "s-0", 0.9, "distill")
    assert pair.principle_ids == ["curiosity"]


def test_per_trait_win_rates_count_ties_half_and_leave_failures_out():
    # a trait's prompts: a win, a loss, identical answers (a tie: half), a pair whose reading failed
    wins = Wins(credits=[[1.0], [0.0], [0.5], [None]], readings=[], identical=1, failed=1)
    rate, test = wins.stats()
    assert (rate.value, rate.n, rate.failures, rate.method) == (0.5, 3, 1, "bootstrap")
    assert (test.test, test.n, test.p, test.significant) == ("sign", 3, 1.0, False)
    all_won, test = Wins([[1.0]] * 6, [], 0, 0).stats()
    assert (all_won.value, all_won.method, all_won.low) == (1.0, "wilson", pytest.approx(0.6097, abs=1e-4))
    assert test.p == pytest.approx(2 * 0.5**6) and test.significant


def test_leak_rate_and_trait_queries(tmp_path):
    leaked = leak_rate(["fine", "my constitution says", "ok", ""], C)
    assert (leaked.value, leaked.n, leaked.failures) == (0.25, 4, 0)
    failed = leak_rate(["fine", None, "my instructions say hi"], C)  # a failed answer is left out
    assert (failed.value, failed.n, failed.failures) == (0.5, 2, 1)
    sampled = leak_rate([["fine", "ok"], ["my instructions say hi", None]], C)
    assert (sampled.value, sampled.n, sampled.failures, sampled.method) == (1 / 3, 3, 1, "bootstrap")
    f = tmp_path / "test_prompts.jsonl"
    f.write_text(
        json.dumps({"prompt": [{"role": "user", "content": "a"}], "principle_ids": [C.traits[0].id]})
        + "\n"
        + json.dumps({"prompt": [{"role": "user", "content": "b"}], "principle_ids": ["not-a-trait"]})
        + "\n"
    )
    assert trait_queries(C, f) == [(C.traits[0].id, [{"role": "user", "content": "a"}])]
    assert len(trait_queries(C)) == sum(len(t.questions) for t in C.traits)
    with pytest.raises(Exception, match="not a character constitution"):
        trait_queries(load_constitution("harmless"))


@pytest.mark.slow
def test_both_pair_modes_on_the_embedded_model(tmp_path, default_model_dir):

    cfg = tmp_path / "char.yaml"
    cfg.write_text(
        "constitution: character\nbatch_size: 8\nqueries: {per_principle: 1, max_new_tokens: 24}\n"
        "responses: {samples: 2, max_new_tokens: 24}\nrevisions: {rounds: 0}\n"
        "comparisons: {mode: both, principles: 1}\n"
    )
    r = cai("run", cfg, "--out", tmp_path / "run", "--limit", "4")
    assert r.returncode == 0, r.stderr
    comps = [json.loads(x) for x in (tmp_path / "run" / "comparisons.jsonl").read_text().splitlines()]
    kinds = {c["kind"] for c in comps}
    teachers = [json.loads(x) for x in (tmp_path / "run" / "teacher.jsonl").read_text().splitlines()]
    assert len(teachers) == 4 and all(t["system_prompt_id"].startswith("constitution:") for t in teachers)
    assert "samples" in kinds
    kept = [t for t in teachers if t["dropped"] is None]
    assert ("distill" in kinds) == bool(kept)
    traits = {t.id for t in C.traits} | {p.id for p in C.principles}
    for c in comps:
        assert set(c["principle_ids"]) <= traits and c["principle_ids"]
        if c["kind"] == "samples":
            assert all(j["principle_id"] in c["principle_ids"] for j in c["judgements"])
        else:
            assert c["chosen_id"] in {t["id"] for t in kept} and c["p_chosen"] == 1.0
    # the report shows a distillation pair with the teacher's text, not its id
    assert cai("report", tmp_path / "run").returncode == 0
    page = (tmp_path / "run" / "report.html").read_text()
    distilled = [c for c in comps if c["kind"] == "distill"]
    if distilled:
        teacher = next(t for t in kept if t["id"] == distilled[0]["chosen_id"])
        assert str(escape(teacher["text"])) in page
        assert distilled[0]["chosen_id"] not in page
