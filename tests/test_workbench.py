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
from cai.constitution import Constitution, UserError, library_path, load_constitution
from cai.critique.cache import ReadingCache, backend_identity
from cai.evaluation.pairs import LabeledPair
from cai.generators import register_backend
from cai.workbench import compare, try_chain
from tests.cli import cai

from .judges import FollowsWording

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
    args = ["constitution", "compare", str(old), str(new), "--pairs", str(pairs), "--backend", "follows-wording"]
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
