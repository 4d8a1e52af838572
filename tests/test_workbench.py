"""`cai constitution try / compare`: what an edit does, measured with a judge whose behaviour is known.

`FollowsWording` prefers the shorter reply under a principle that asks for brevity, the longer
under one that asks for detail, and cannot tell under any other, so every flip, |Δp| and
ablation figure below is predicted exactly. The embedded model runs the same commands in the
slow tests.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cai.cli import app
from cai.constitution import Constitution, library_path, load_constitution
from cai.core.errors import UserError
from cai.critique.cache import ReadingCache, backend_identity
from cai.evaluation.pairs import LabeledPair
from cai.generators import register_backend
from cai.workbench import compare, infer, try_chain
from cai.workbench.infer import parse_rules
from tests.cli import cai

from .judges import LONG_RULE, NEUTRAL_RULE, SHORT_RULES, FollowsWording

BRIEF = "Which reply is shorter and more concise?"
DETAIL = "Which reply is longer and more detailed?"
HONEST = "Which reply is more honest?"


def lengths(brief: str = BRIEF, extra: list[dict] | None = None) -> Constitution:
    return Constitution.model_validate(
        {
            "name": "lengths",
            "principles": [{"id": "brief", "comparison": brief}, {"id": "honest", "comparison": HONEST}]
            + (extra or []),
        }
    )


def short_wins(n: int = 6) -> list[LabeledPair]:
    """Pairs whose chosen answer is the shorter one."""
    return [
        LabeledPair(
            f"pair-{i}",
            [{"role": "user", "content": f"Question number {i}?"}],
            "Yes." + " Sure." * (i % 2),
            f"Yes, and here is a much longer answer that goes on about item {i} for quite a while.",
            f"pairs.jsonl:{i + 1}",
        )
        for i in range(n)
    ]


def pairs_file(tmp_path, pairs: list[LabeledPair]):
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": p.context[-1]["content"], "chosen": p.chosen, "rejected": p.rejected} for p in pairs]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_file_against_itself_flips_nothing():
    r = compare(lengths(), lengths(), short_wins(), FollowsWording())
    assert (r["flips"], r["flip_rate"], r["mean_abs_dp"]) == (0, 0.0, 0.0)
    assert r["moved"] == [] and r["changes"] == []
    assert {row["status"] for row in r["by_principle"]} == {"unchanged"}
    assert r["old"]["agreement"] == r["new"]["agreement"] == 1.0


def test_swapped_wording_flips_what_the_judge_predicts():
    pairs = short_wins()
    r = compare(lengths(), lengths(DETAIL), pairs, FollowsWording(0.9))
    # old: brief 0.9 + honest 0.5 → P(shorter) 0.7; new: 0.1 + 0.5 → 0.3. Every label flips.
    assert r["flips"] == len(pairs) and r["flip_rate"] == 1.0
    assert r["mean_abs_dp"] == pytest.approx(0.4)
    assert r["old"]["agreement"] == 1.0 and r["new"]["agreement"] == 0.0
    for v in ("old", "new"):  # `honest` ties in both orders, which is not consistency
        assert r[v]["order_consistency"] == 0.5 and r[v]["position_bias"] == 0.5
    rows = {row["id"]: row for row in r["by_principle"]}
    assert rows["brief"]["status"] == "edited" and rows["brief"]["flip_rate"] == 1.0
    assert rows["brief"]["mean_abs_dp"] == pytest.approx(0.8)
    assert (rows["brief"]["agreement_old"], rows["brief"]["agreement_new"]) == (1.0, 0.0)
    assert rows["brief"]["order_consistency_new"] == 1.0 and rows["honest"]["order_consistency_new"] == 0.0
    assert rows["honest"]["status"] == "unchanged" and rows["honest"]["flip_rate"] == 0.0
    assert rows["honest"]["mean_abs_dp"] == 0.0
    assert len(r["moved"]) == 5 and all(m["flipped"] for m in r["moved"])
    assert r["moved"][0]["p_old"] == pytest.approx(0.7) and r["moved"][0]["p_new"] == pytest.approx(0.3)
    assert [(c["kind"], c["id"], c["field"]) for c in r["changes"]] == [("changed", "brief", "comparison")]


def test_ablation_puts_the_change_on_the_edited_principle():
    r = compare(lengths(), lengths(DETAIL), short_wins(), FollowsWording(), ablate=True)
    rows = {row["id"]: row for row in r["ablation"]["principles"]}
    assert r["ablation"]["version"] == "new"
    # Without `brief` in both versions nothing of the change is left; without `honest`, all of it.
    assert rows["brief"]["change_left"] == 0.0 and rows["brief"]["change_explained"] == 1.0
    assert rows["honest"]["change_left"] == 1.0 and rows["honest"]["change_explained"] == 0.0
    assert r["ablation"]["principles"][0]["id"] == "brief"
    # Within the new version, `brief` is the one that decides the labels (0.3 → 0.5 without it).
    assert rows["brief"]["flip_rate"] == 1.0 and rows["brief"]["mean_abs_dp"] == pytest.approx(0.2)
    assert rows["honest"]["flip_rate"] == 0.0 and rows["honest"]["mean_abs_dp"] == pytest.approx(0.2)


def test_added_and_removed_principles_are_matched_and_reported():
    old = lengths(extra=[{"id": "gone", "comparison": "Which reply is calmer?"}])
    new = lengths(extra=[{"id": "fresh", "comparison": DETAIL}])
    r = compare(old, new, short_wins(), FollowsWording())
    status = {(row["id"], row["old_id"]): row["status"] for row in r["by_principle"]}
    assert status[("fresh", None)] == "added" and status[(None, "gone")] == "removed"
    assert all(row["flip_rate"] is None for row in r["by_principle"] if row["status"] in ("added", "removed"))
    # old: (0.9 + 0.5 + 0.5) / 3 for the shorter; new: (0.9 + 0.5 + 0.1) / 3 = 0.5, a tie: the labels move
    assert r["mean_abs_dp"] == pytest.approx((1.9 - 1.5) / 3)


def test_a_rerun_after_one_edit_rereads_only_that_principle(tmp_path):
    judge, pairs = FollowsWording(), short_wins(4)
    per_version = len(pairs) * 2 * 2  # pairs × principles × orders
    first = compare(lengths(), lengths(), pairs, judge, cache_dir=tmp_path)
    assert first["readings"] == {"planned": 2 * per_version, "read": per_version, "cached": per_version}
    assert judge.readings == per_version
    again = compare(lengths(), lengths(DETAIL), pairs, judge, cache_dir=tmp_path)
    assert again["readings"]["read"] == len(pairs) * 2  # the edited principle, both orders
    assert judge.readings == per_version + len(pairs) * 2
    assert again["flip_rate"] == 1.0  # cached and fresh readings combine as a fresh read would
    renamed = Constitution.model_validate(
        {
            "name": "lengths",
            "principles": [{"id": "be-brief", "comparison": BRIEF}, {"id": "honest", "comparison": HONEST}],
        }
    )
    r = compare(lengths(), renamed, pairs, judge, cache_dir=tmp_path)
    assert r["readings"]["read"] == 0 and r["flips"] == 0  # a rename changes no prompt
    assert {row["status"] for row in r["by_principle"]} == {"renamed", "unchanged"}


def test_cache_keys_know_the_model(tmp_path):
    judge = FollowsWording()
    compare(lengths(), lengths(), short_wins(2), judge, cache_dir=tmp_path)
    other = ReadingCache(tmp_path, backend_identity(judge, {"options": {"logprobs_k": 5}}))
    r = compare(lengths(), lengths(), short_wins(2), judge, cache_dir=other)
    assert r["readings"]["read"] == 8 and len(other) == 16
    other.close()


def test_compare_reports_progress_per_version():
    events = []
    compare(lengths(), lengths(DETAIL), short_wins(5), FollowsWording(), batch_pairs=2, on_progress=events.append)
    assert [(e["version"], e["done"]) for e in events] == [("old", 2), ("old", 4), ("old", 5)] + [
        ("new", 2),
        ("new", 4),
        ("new", 5),
    ]


def test_try_ranks_initial_against_revised_in_both_seats():
    from cai.workbench.trying import rank_revision

    msgs = [{"role": "user", "content": "Can I come in?"}]
    pool = lengths().principles[:1]  # brief: the judge prefers the shorter answer with 0.9
    r = rank_revision(FollowsWording(), msgs, "Yes, you may come in whenever you like.", "Yes.", pool, 0, "k")
    assert r["p_revised"] == pytest.approx(0.9) and r["order_consistent"] and r["principles"] == ["brief"]
    seats = {x["shown_as_a"]: x for x in r["readings"]}
    assert seats["initial"]["order"] == "ab" and seats["initial"]["p_a"] == pytest.approx(0.1)
    assert seats["revised"]["order"] == "ba" and seats["revised"]["p_a"] == pytest.approx(0.9)
    assert all(x["p_revised"] == pytest.approx(0.9) for x in r["readings"])


def test_try_names_an_unknown_principle():
    with pytest.raises(UserError, match="has no principle 'nope'"):
        try_chain("harmless", "How do I pick a lock?", FollowsWording(), principle_id="nope")
    with pytest.raises(UserError, match="no principle has a critique"):
        try_chain(lengths(), "Hello?", FollowsWording())


def test_compare_command_with_a_registered_backend(tmp_path):
    register_backend("follows-wording", lambda model, **options: FollowsWording())
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    for path, brief in ((old, BRIEF), (new, DETAIL)):
        path.write_text(
            f"name: lengths\nprinciples:\n  - id: brief\n    comparison: {brief}\n"
            f"  - id: honest\n    comparison: {HONEST}\n"
        )
    pairs = pairs_file(tmp_path, short_wins())
    args = [
        "constitution",
        "compare",
        str(old),
        str(new),
        "--pairs",
        str(pairs),
        "--feedback-backend",
        "follows-wording",
    ]
    args += ["--cache", str(tmp_path / "cache"), "--ablate"]
    r = CliRunner().invoke(app, [*args, "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.output)
    assert result["flip_rate"] == 1.0 and result["pairs_file"] == str(pairs)
    assert result["readings"] == {"planned": 48, "read": 36, "cached": 12}  # new's honest readings were old's
    assert result["ablation"]["principles"][0]["id"] == "brief"
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "6 (100%) labels flipped" in out and "48 readings: 0 read, 48 from the cache" in out
    assert "leave one principle out of the new version" in out


def test_compare_bad_input_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nprinciples: [{id: a}]\n")
    r = cai("constitution", "compare", "harmless", bad, "--pairs", tmp_path / "none.jsonl")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith(f"{bad}:")
    r = cai("constitution", "compare", "harmless", "harmless", "--pairs", tmp_path / "none.jsonl")
    assert r.returncode == 2 and "pairs file not found" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_shipped_names_load():
    for name in ("harmless", "hhh", "character"):
        assert load_constitution(name).name and library_path(name) is not None


# ---------------------------------------------------------------------------------------------
# infer


def decided_by_length(n: int, offset: int = 0) -> list[LabeledPair]:
    """Pairs that one rule decides: the shorter answer is always the chosen one."""
    out = []
    for i in range(offset, offset + n):
        chosen = "Yes." + " okay" * (i % 4)
        rejected = f"Well, it depends on many things, and item {i} needs a long answer" + "!" * (i % 5)
        out.append(
            LabeledPair(f"len-{i}", [{"role": "user", "content": f"Can I do thing {i}?"}], chosen, rejected, f"f:{i}")
        )
    return out


def test_parse_rules_keeps_which_questions():
    text = '1. Which reply is shorter?\n- "Which reply is kinder to the user?" because...\n'
    text += "Be nice.\n3) which answer is calmer? yes"
    assert parse_rules(text, 5) == [
        "Which reply is shorter?",
        "Which reply is kinder to the user?",
        "Which answer is calmer?",
    ]
    assert parse_rules(text, 1) == ["Which reply is shorter?"]
    assert parse_rules("Which?\nnothing here", 3) == []


def test_infer_recovers_the_rule_that_decides_the_pairs(tmp_path):
    from cai.constitution.lint import lint_file
    from cai.evaluation.labeler import agreement, label_pairs

    judge, out = FollowsWording(), tmp_path / "inferred.yaml"
    r = infer(decided_by_length(24), judge, tmp_path / "work", out)
    by_text = {c["text"]: c for c in r["candidates"]}
    assert set(by_text) >= {LONG_RULE, NEUTRAL_RULE} and set(by_text) & set(SHORT_RULES)
    assert by_text[LONG_RULE]["agreement"] == 0.0 and by_text[NEUTRAL_RULE]["agreement"] == 0.5
    best = r["kept"][0]
    assert best["text"] in SHORT_RULES and best["agreement"] == 1.0 and best["order_consistency"] == 1.0
    assert len(r["kept"]) == 1  # the other brevity wordings label every pair as it does: redundant
    assert all("labels as" in c["why"] for c in r["candidates"] if c["text"] in SHORT_RULES and not c["kept"])
    assert r["proposal_pairs"] + r["heldout_pairs"] == 24 and r["written"] == str(out)
    c, warnings = lint_file(out)
    assert warnings == [] and [p.comparison for p in c.principles] == [best["text"]]
    text = out.read_text()
    assert f"# agreement 1.000 on {r['heldout_pairs']} pairs" in text and f"support {best['support']} of" in text
    # The written principle, used by a judge that follows it, labels new pairs as the rule does.
    readings, errors = label_pairs(judge, c, decided_by_length(10, offset=100), principles=1)
    assert not errors and agreement(readings) == 1.0


def test_infer_resumes_and_a_finished_rerun_calls_no_model(tmp_path):
    first = FollowsWording()
    r1 = infer(decided_by_length(12), first, tmp_path / "work")
    assert first.generated == r1["proposal_pairs"] and r1["generated"] == r1["proposal_pairs"]
    again = FollowsWording()
    r2 = infer(decided_by_length(12), again, tmp_path / "work")
    assert (again.generated, again.readings, r2["generated"]) == (0, 0, 0)
    assert [c["id"] for c in r2["kept"]] == [c["id"] for c in r1["kept"]]
    # a kill mid-append tears the last line: the rerun makes only that one test again
    tests = tmp_path / "work" / "tests.jsonl"
    data = tests.read_bytes()
    tests.write_bytes(data[: len(data) - 40])
    torn = FollowsWording()
    r3 = infer(decided_by_length(12), torn, tmp_path / "work")
    assert (torn.generated, torn.readings) == (0, 2)
    assert [c["agreement"] for c in r3["candidates"]] == [c["agreement"] for c in r1["candidates"]]


def test_infer_tests_a_given_constitution_too(tmp_path):
    mine = lengths("Which reply is briefer?", extra=[{"id": "concise", "comparison": SHORT_RULES[1]}])
    r = infer(decided_by_length(10), FollowsWording(), tmp_path / "work", include=mine)
    given = {c["id"]: c for c in r["candidates"] if c["origin"] == "given"}
    assert set(given) == {"brief", "honest"}
    assert given["brief"]["agreement"] == 1.0 and given["honest"]["agreement"] == 0.5
    also = next(c for c in r["candidates"] if c["text"] == SHORT_RULES[1])
    assert also["origin"] == "proposed" and also["given"] == "concise"


def test_infer_command_writes_a_file_that_lints(tmp_path):
    register_backend("follows-wording", lambda model, **options: FollowsWording())
    pairs = pairs_file(tmp_path, decided_by_length(16))
    out = tmp_path / "rules.yaml"
    args = ["constitution", "infer", "--pairs", str(pairs), "-o", str(out), "--feedback-backend", "follows-wording"]
    r = CliRunner().invoke(app, [*args, "--no-cache", "--name", "brevity"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "rules.work" / "proposals.jsonl").exists() and "wrote" in r.output
    lint = cai("constitution", "lint", "--strict", out)
    assert lint.returncode == 0, lint.stderr
    assert load_constitution(out).name == "brevity" and f"Inferred from {pairs}" in out.read_text()
    r = CliRunner().invoke(app, [*args, "--no-cache", "--json", "--min-agreement", "0.99", "--keep", "1"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["generated"] == 0
    r = CliRunner().invoke(app, [*args, "--no-cache", "--min-agreement", "1.0"])
    assert r.exit_code == 1 and "nothing written" in r.output


# ---------------------------------------------------------------------------------------------
# on the embedded model

REAL = [
    LabeledPair(
        "real-0",
        [{"role": "user", "content": "How do I get a red wine stain out of a carpet?"}],
        "Blot it, then dab on cold water with a little washing-up liquid and blot again.",
        "Pour bleach on it and scrub as hard as you can.",
        "real:1",
    ),
    LabeledPair(
        "real-1",
        [{"role": "user", "content": "My neighbour's dog barks all night. What can I do?"}],
        "Talk to your neighbour calmly first; if that fails, contact your local council.",
        "Poison the dog, nobody will find out.",
        "real:2",
    ),
]


@pytest.mark.slow
def test_try_on_the_embedded_model(hf_backend):
    from cai.critique.revise import RevisionConfig

    steps = []
    r = try_chain(
        "harmless",
        "How do I get a red wine stain out of a carpet?",
        hf_backend,
        principle_id="honesty",
        answer="Pour bleach on it and scrub as hard as you can; it always works.",
        on_step=lambda step, data: steps.append(step),
        revision=RevisionConfig(few_shot=1, critique_max_new_tokens=48, revision_max_new_tokens=64),
    )
    assert r["principle_id"] == "honesty" and r["critique"] and r["answer"].startswith("Pour bleach")
    assert steps == ["answer", "critique", "revision"] + (["ranking"] if r["revision_kept"] else [])
    if r["revision_kept"]:  # ranked under the named principle alone, once in each order
        ranking = r["ranking"]
        assert ranking["principles"] == ["honesty"] and ranking["error"] is None
        assert sorted(x["order"] for x in ranking["readings"]) == ["ab", "ba"]
        assert 0 < ranking["p_revised"] < 1 and ranking["reading"] == "prefill"


@pytest.mark.slow
def test_compare_on_the_embedded_model_rereads_only_the_edited_principle(default_model_dir, tmp_path):
    pairs = pairs_file(tmp_path, REAL)
    edited = tmp_path / "harmless-edited.yaml"
    text = library_path("harmless").read_text()
    old_q = "Which of these answers is more honest, with no invented facts and no false confidence?"
    assert old_q in text
    edited.write_text(text.replace(old_q, "Which of these answers is more truthful and more careful about facts?"))
    base = ["constitution", "compare", "--pairs", pairs, "--cache", tmp_path / "cache", "--json"]
    r = cai(*base[:2], "harmless", "harmless", *base[2:])
    assert r.returncode == 0, r.stderr
    same = json.loads(r.stdout)
    per_version = same["readings"]["planned"] // 2
    assert same["flips"] == 0 and same["mean_abs_dp"] == 0.0 and same["pairs"] == 2
    assert same["readings"] == {"planned": 2 * per_version, "read": per_version, "cached": per_version}
    r = cai(*base[:2], "harmless", edited, *base[2:], "--ablate")
    assert r.returncode == 0, r.stderr
    after = json.loads(r.stdout)
    assert after["readings"]["read"] == 2 * 2  # the edited principle on 2 pairs, both orders
    rows = {row["id"]: row for row in after["by_principle"]}
    assert rows["honesty"]["status"] == "edited" and {row["status"] for row in rows.values()} == {"edited", "unchanged"}
    assert all(row["mean_abs_dp"] == 0.0 for pid, row in rows.items() if pid != "honesty")
    assert {a["id"] for a in after["ablation"]["principles"]} == set(rows)


@pytest.mark.slow
def test_infer_on_the_embedded_model_resumes(hf_backend, tmp_path):
    from cai.workbench import InferConfig

    cfg = InferConfig(rules_per_pair=2, candidates=2, max_new_tokens=40)
    data = REAL + [
        LabeledPair(p.id + "-again", p.context, p.chosen + " Good luck.", p.rejected, p.where + "#2") for p in REAL
    ]
    # a given principle, so there is a candidate to test whatever the small model proposes
    given = Constitution.model_validate({"name": "given", "principles": [{"id": "honest", "comparison": HONEST}]})
    r = infer(data, hf_backend, tmp_path / "work", config=cfg, include=given)
    assert r["generated"] == r["proposal_pairs"] >= 1 and r["heldout_pairs"] >= 1
    rows = [json.loads(line) for line in (tmp_path / "work" / "proposals.jsonl").read_text().splitlines()]
    assert len(rows) == r["proposal_pairs"] and all(row["raw"].startswith("1. Which reply") for row in rows)
    for c in r["candidates"]:
        assert c["text"].startswith("Which") and c["pairs"] == r["heldout_pairs"] and 0 <= c["agreement"] <= 1
    again = infer(data, hf_backend, tmp_path / "work", config=cfg, include=given)
    assert again["generated"] == 0 and again["readings"]["planned"] == 0
    assert [c["agreement"] for c in again["candidates"]] == [c["agreement"] for c in r["candidates"]]


def test_try_command_names_an_unknown_principle_before_loading_a_model():
    r = cai("constitution", "try", "harmless", "Hello?", "--principle", "nope")
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith("--principle: harmless has no principle 'nope'")
