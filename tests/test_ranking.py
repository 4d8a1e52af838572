"""Soft labels from pairwise ranking: both-order averaging and CoT clamping.

The judges here are small deterministic backends written for the purpose: the property under
test is the arithmetic over orders and principles, which needs a judge whose bias is known.
"""

import math

import pytest

from cai.critique import ComparisonConfig, plan_comparison_tasks, run_comparison_tasks
from cai.critique.rank import Candidate
from cai.critique.reading import prob_a
from cai.generators.records import Query
from cai.generators.streaming import collect
from cai.generators.types import ChoiceScores

from .judges import JUDGE_C, AlwaysA, PrefersGood

C = JUDGE_C
Q = Query(id="q-1", messages=[{"role": "user", "content": "Hello?"}], origin="seed")


def _tasks(cfg, first="GOOD answer", second="bad answer", ids=("r-1", "r-2")):
    groups = [(Q, [Candidate(id=ids[0], text=first), Candidate(id=ids[1], text=second)], [])]
    return plan_comparison_tasks(groups, C, cfg, "judge", seed=0)


def test_position_bias_cancels_to_one_half():
    cfg = ComparisonConfig(principles=3)
    out = collect(run_comparison_tasks(AlwaysA(), C, _tasks(cfg), cfg, seed=0))
    (c,) = out.records
    assert c.p_first == pytest.approx(0.5) and c.p_chosen == pytest.approx(0.5)
    assert len(c.judgements) == 6 and {j.order for j in c.judgements} == {"ab", "ba"}
    assert sorted(c.principle_ids) == ["kind", "safe", "true"]
    assert not c.order_consistent


def test_unbiased_judge_gives_confident_label_in_both_orders():
    cfg = ComparisonConfig(principles=2)
    (c,) = collect(run_comparison_tasks(PrefersGood(), C, _tasks(cfg), cfg, seed=0)).records
    assert c.chosen_id == "r-1" and c.p_chosen == pytest.approx(0.95)
    assert all(j.p_first == pytest.approx(0.95) for j in c.judgements)
    assert c.order_consistent
    # swapping which answer comes first changes nothing but the bookkeeping
    (d,) = collect(
        run_comparison_tasks(PrefersGood(), C, _tasks(cfg, "bad answer", "GOOD answer"), cfg, seed=0)
    ).records
    assert d.chosen_id == "r-2" and d.p_chosen == pytest.approx(0.95)


def test_cot_probabilities_are_clamped_and_raw_kept():
    cfg = ComparisonConfig(method="cot", principles=2)
    (c,) = collect(run_comparison_tasks(PrefersGood(), C, _tasks(cfg), cfg, seed=0)).records
    assert c.p_chosen == pytest.approx(0.6)
    assert all(j.p_first == pytest.approx(0.6) and j.p_first_raw == pytest.approx(0.95) for j in c.judgements)
    assert all(j.reasoning == "One reply is better." for j in c.judgements)
    wide = ComparisonConfig(method="cot", principles=2, cot_clamp=(0.2, 0.8))
    (w,) = collect(run_comparison_tasks(PrefersGood(), C, _tasks(wide), wide, seed=0)).records
    assert w.p_chosen == pytest.approx(0.8)
    (b,) = collect(run_comparison_tasks(AlwaysA(), C, _tasks(cfg), cfg, seed=0)).records
    assert b.p_chosen == pytest.approx(0.5)


def test_bad_clamp_rejected():
    with pytest.raises(ValueError):
        ComparisonConfig(cot_clamp=(0.6, 0.9))


def test_identical_answers_are_not_ranked_and_ids_are_seeded():
    cfg = ComparisonConfig()
    assert _tasks(cfg, "same", "same") == []
    a = [t.id for t in _tasks(cfg)]
    b = [
        t.id
        for t in plan_comparison_tasks(
            [(Q, [Candidate(id="r-1", text="x"), Candidate(id="r-2", text="y")], [])], C, cfg, "judge", seed=1
        )
    ]
    assert a == [t.id for t in _tasks(cfg)] and a != b


def test_prob_a():
    assert prob_a({"A": math.log(0.3), "B": math.log(0.1)}) == pytest.approx(0.75)
    assert prob_a({"A": -math.inf, "B": -math.inf}) == 0.5


def test_failed_reading_fails_the_pair_only():
    class HalfBroken(PrefersGood):
        def choice_logprobs(self, prompts, choices):
            good = super().choice_logprobs(prompts, choices)
            return [ChoiceScores(error="too long") if "broken" in p[0]["content"] else g for p, g in zip(prompts, good)]

    cfg = ComparisonConfig(principles=1)
    tasks = _tasks(cfg) + _tasks(cfg, "GOOD broken", "bad", ids=("r-3", "r-4"))
    out = collect(run_comparison_tasks(HalfBroken(), C, tasks, cfg, seed=0))
    assert len(out.records) == 1 and [e["task_id"] for e in out.errors] == [tasks[1].id]


def test_revision_that_repeats_the_critique_is_not_kept():
    from cai.critique.revise import clean_revision, usable_revision

    crit = "The answer is rude and does not help the user with their question."
    assert not usable_revision("The answer is rude and does not help the user with the question.", crit)
    assert not usable_revision("", crit)
    assert usable_revision("Happy to help: first, preheat the oven to 200C.", crit)
    assert clean_revision("Revised answer: Sure, here it is.") == "Sure, here it is."


def test_failed_argument_fails_the_pair_in_the_stage_and_the_eval_alike():
    from cai.evaluation.labeler import label_pairs
    from cai.evaluation.pairs import LabeledPair
    from cai.generators.types import Completion

    class Silent(PrefersGood):
        def generate(self, chats, params):
            return [[Completion.failed("server down")] for _ in chats]

    cfg = ComparisonConfig(method="cot", principles=1)
    out = collect(run_comparison_tasks(Silent(), C, _tasks(cfg), cfg, seed=0))
    assert not out.records and out.errors[0]["error"] == "server down"
    pair = LabeledPair("p", Q.messages, "GOOD answer", "bad answer", "x:1")
    readings, errors = label_pairs(Silent(), C, [pair], method="cot", principles=1)
    assert readings == [] and [{k: e[k] for k in ("pair", "error")} for e in errors] == [
        {"pair": "x:1", "error": "server down"}
    ]
