"""The judge-bias battery of `cai eval labeler`, the intervals on its rates, and length control of
a run's labels.

The judges have a known bias (tests/judges.py): one that loves length and reads nothing else, one
that reads only a quality mark hidden in each reply (no bias at all), one that prefers what its own
model wrote. Each is a registered backend, so the command reads through it as through any model,
in a subprocess as a user runs it; what is checked is that the battery finds the bias each one has
and none where there is none.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
import yaml

from cai.core.identity import identity
from cai.critique.rank import ComparisonConfig
from cai.critique.reading import ReadingConfig
from cai.evaluation.labeler import (
    fillers,
    labeler_rates,
    padded,
    read_labeled_pairs,
    readings_of,
    words,
)
from cai.evaluation.pairs import LabeledPair, read_pairs
from cai.tables import bias_rows

from .judges import JUDGE_C, ReadsQuality
from .testing_utils import CONFIG, REPO, read_jsonl, setup


def cai_judged(*args, cwd=None, timeout: float = 300):
    """`cai ARGS` in a subprocess with the biased judges and the scripted backend registered."""
    code = "import tests.judges, tests.testing_utils; from cai.cli import main; main()"
    env = {**os.environ, "COLUMNS": "250", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-c", code, *map(str, args)]
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def run_json(*args) -> dict:
    r = cai_judged(*args, "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout[r.stdout.index("{") :])


def quality_pairs(n: int = 40, seed: int = 1, models: bool = False) -> list[dict]:
    """Rows whose human-chosen reply has the higher hidden quality mark, and whose lengths are drawn
    apart from quality (3 to 40 words each). With `models`, every row names who wrote each reply,
    the chosen one by `self` in half of the rows and by `other` in the rest, each reply signed."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        chosen = f"[q={rng.randint(5, 9)}] " + " ".join(["word"] * rng.randint(3, 40))
        rejected = f"[q={rng.randint(0, 4)}] " + " ".join(["word"] * rng.randint(3, 40))
        row = {"prompt": f"Question {i}?", "chosen": chosen, "rejected": rejected}
        if models:
            mine, theirs = ("self", "other") if i % 2 == 0 else ("other", "self")
            row = {
                **row,
                "chosen": f"{chosen} (written by {mine})",
                "rejected": f"{rejected} (written by {theirs})",
                "chosen_model": mine,
                "rejected_model": theirs,
            }
        rows.append(row)
    return rows


def write_rows(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def contains(v: dict, x: float) -> bool:
    low, high = v["ci95"]
    return low <= x <= high


# ---------------------------------------------------------------------------------------------
# Intervals, and failed pairs left out


def test_failed_pairs_are_counted_left_out_and_never_scored():
    pairs = [
        LabeledPair(
            f"p{i}",
            [{"role": "user", "content": f"Question {i}{' NOPE' if i in (2, 5) else ''}?"}],
            f"[q=7] good {i}",
            f"[q=1] bad {i}",
            f"x:{i}",
        )
        for i in range(12)
    ]
    cfg = ReadingConfig(principles=2)
    labels = read_labeled_pairs(ReadsQuality(fail="NOPE"), JUDGE_C, pairs, cfg, seed=3)
    readings, errors = readings_of(labels)
    assert [e["pair"] for e in errors] == ["x:2", "x:5"] and all(len(e["principles"]) == 2 for e in errors)
    assert {r.pair for r in readings} == set(range(12)) - {2, 5}  # no reading of a failed pair is scored
    rates = labeler_rates(readings, [e["principles"] for e in errors])
    agreement = rates["agreement"]
    assert (agreement["value"], agreement["n"], agreement["failures"]) == (1.0, 10, 2)
    assert agreement["interval"] == "wilson" and 0.6 < agreement["ci95"][0] < 0.8
    assert agreement["ci95"][1] == pytest.approx(1.0)
    pos = rates["position_bias"]
    assert (pos["n"], pos["failures"], pos["interval"]) == (40, 8, "bootstrap")  # readings, grouped by pair
    assert (rates["order_consistency"]["n"], rates["order_consistency"]["failures"]) == (20, 4)
    per = rates["by_principle"]
    assert sum(v["n"] for v in per.values()) == 20 and sum(v["failures"] for v in per.values()) == 4


def test_ties_score_one_half_and_take_the_bootstrap():
    pairs = [
        LabeledPair(f"t{i}", [{"role": "user", "content": "Q?"}], f"[q=3] a {i}", f"[q=3] b {i}", f"t:{i}")
        for i in range(6)
    ]
    readings, _ = readings_of(read_labeled_pairs(ReadsQuality(), JUDGE_C, pairs, ReadingConfig(principles=1)))
    agreement = labeler_rates(readings)["agreement"]
    assert agreement["value"] == 0.5 and agreement["interval"] == "bootstrap" and agreement["ci95"] == [0.5, 0.5]


def test_past_max_failures_the_command_exits_1_naming_the_first_error(tmp_path):
    rows = quality_pairs(20)
    for i in (3, 7, 11):
        rows[i]["prompt"] += " NOPE"
    pairs = write_rows(tmp_path / "pairs.jsonl", rows)
    args = ["eval", "labeler", "--pairs", pairs, "--feedback-backend", "reads-quality"]
    args += ["--feedback-option", "fail=NOPE", "--principles", "1", "--padded-pairs", "0"]
    r = cai_judged(*args)
    assert r.returncode == 1
    assert r.stderr.strip() == (
        f"{pairs}: 3 of 20 pairs failed to read (more than --max-failures 0.1); first: {pairs}:4: prompt too long"
    )
    res = run_json(*args, "--max-failures", "0.2")
    assert res["errors"] == 3 and res["first_error"] == f"{pairs}:4: prompt too long"
    assert (res["rates"]["agreement"]["n"], res["rates"]["agreement"]["failures"]) == (17, 3)
    assert res["bias"]["length"]["n"] == 17 and res["bias"]["length"]["failures"] == 3


def test_padded_twins_failing_past_max_failures_exit_1(tmp_path):
    """A judge failing on a word of one filler sentence fails the twins that got it, and only them."""
    pairs = write_rows(tmp_path / "pairs.jsonl", quality_pairs(10))
    word = "restate"
    (filler,) = [f for f in fillers() if word in f]
    twins = [padded(p.chosen, p.id) for p in read_pairs(pairs).pairs]
    failed = sum(filler in t for t in twins)
    assert 1 < failed < 10
    args = ["eval", "labeler", "--pairs", pairs, "--feedback-backend", "reads-quality", "--principles", "1"]
    r = cai_judged(*args, "--feedback-option", f"fail={word}")
    assert r.returncode == 1
    first = next(i for i, t in enumerate(twins) if filler in t) + 1
    assert r.stderr.strip() == (
        f"{pairs}: {failed} of 10 padded twins failed to read (more than --max-failures 0.1); "
        f"first: {pairs}:{first}: prompt too long"
    )
    res = run_json(*args, "--feedback-option", f"fail={word}", "--max-failures", "0.9")
    assert res["errors"] == 0 and res["bias"]["padded_twins"]["failures"] == failed
    assert res["bias"]["padded_twins"]["padded_wins"]["n"] == 10 - failed


# ---------------------------------------------------------------------------------------------
# Length


def test_padding_adds_only_filler_and_is_fixed_per_pair():
    twin = padded("Call the council.", "pair-1", seed=0)
    assert twin.startswith("Call the council. ") and twin == padded("Call the council.", "pair-1", seed=0)
    added = twin.removeprefix("Call the council. ")
    used = [f for f in fillers() if f in added]
    assert len(used) == 3 and len(added) == sum(map(len, used)) + 2  # three filler sentences and nothing else
    assert len({padded("x", f"pair-{i}") for i in range(10)}) > 1  # drawn per pair


def test_a_length_loving_judge_is_flagged_by_the_slope_and_the_padded_twins(tmp_path):
    pairs = write_rows(tmp_path / "pairs.jsonl", quality_pairs())
    res = run_json("eval", "labeler", "--pairs", pairs, "--feedback-backend", "loves-length", "--principles", "2")
    length = res["bias"]["length"]
    assert length["value"] > 0 and length["ci95"][0] > 0 and length["flagged"] and length["n"] == 40
    twins = res["bias"]["padded_twins"]
    assert twins["pairs"] == 40 and twins["words_added"] > 15
    assert twins["padded_wins"]["value"] == 1.0 and twins["padded_wins"]["ci95"][0] > 0.9
    assert twins["mean_p_padded"]["value"] > 0.95 and twins["flagged"]
    assert not res["bias"]["position"]["flagged"] and res["bias"]["position"]["value"] == 0.5
    table = cai_judged("eval", "labeler", "--pairs", pairs, "--feedback-backend", "loves-length", "--principles", "2")
    assert table.returncode == 0, table.stderr
    assert "judge bias" in table.stdout and "← longer favoured" in table.stdout
    assert "← padding favoured" in table.stdout
    assert f"+{length['value']:.3f} [+{length['ci95'][0]:.3f}, +{length['ci95'][1]:.3f}] n=40" in table.stdout


def test_an_unbiased_judge_shows_no_length_bias(tmp_path):
    pairs = write_rows(tmp_path / "pairs.jsonl", quality_pairs())
    res = run_json(
        "eval", "labeler", "--pairs", pairs, "--feedback-backend", "reads-quality", "--principles", "2",
        "--padded-pairs", "25",
    )  # fmt: skip
    length = res["bias"]["length"]
    assert contains(length, 0.0) and not length["flagged"]
    twins = res["bias"]["padded_twins"]
    assert twins["pairs"] == 25 and twins["padded_wins"]["value"] == 0.5  # every twin an exact tie
    assert twins["mean_p_padded"]["value"] == 0.5 and not twins["flagged"]
    assert res["rates"]["agreement"]["value"] == 1.0 and res["rates"]["agreement"]["n"] == 40


# ---------------------------------------------------------------------------------------------
# Self-preference


def test_a_self_loving_judge_prefers_its_own_answers(tmp_path):
    pairs = write_rows(tmp_path / "pairs.jsonl", quality_pairs(30))
    res = run_json(
        "eval", "labeler", "--pairs", pairs, "--feedback-backend", "loves-own", "--feedback-model", "self",
        "--against", "other", "--against-backend", "loves-own", "--principles", "1", "--padded-pairs", "0",
    )  # fmt: skip
    own = res["bias"]["self_preference"]
    assert own["judge"] == "loves-own:self" and own["other"] == "loves-own:other" and own["pairs"] == 30
    assert own["own_wins"]["value"] > 0.5 and own["own_wins"]["ci95"][0] > 0.5 and own["flagged"]
    assert own["mean_p_own"]["value"] == pytest.approx(0.85)
    assert "mixes" in own["note"] and own["per_pair"][0]["own"].endswith("(written by self)")
    (row,) = [v for k, v in bias_rows(res) if k.startswith("self-preference: loves-own:self's answers win")]
    assert row.endswith("← own favoured (or better)")
    assert res["bias"]["padded_twins"] is None


def test_an_unbiased_judge_against_another_model_sits_at_one_half(tmp_path):
    """Both models write answers with the same quality mark, so an unbiased judge ties them all."""
    rows = [{"prompt": f"[q=4] {i}", "chosen": "[q=2] a", "rejected": "[q=1] b"} for i in range(8)]
    pairs = write_rows(tmp_path / "pairs.jsonl", rows)
    res = run_json(
        "eval", "labeler", "--pairs", pairs, "--feedback-backend", "reads-quality", "--against", "x",
        "--against-backend", "loves-own", "--principles", "1", "--padded-pairs", "0",
    )  # fmt: skip
    own = res["bias"]["self_preference"]
    assert own["identical_answers"] == 0 and own["own_wins"]["value"] == 0.5 and not own["flagged"]


def test_rows_naming_each_answers_model_separate_self_preference_from_quality(tmp_path):
    pairs = write_rows(tmp_path / "pairs.jsonl", quality_pairs(24, models=True))
    args = ["eval", "labeler", "--pairs", pairs, "--principles", "1", "--padded-pairs", "0"]
    biased = run_json(*args, "--feedback-backend", "loves-own", "--feedback-model", "self")
    named = biased["bias"]["self_preference_labelled"]
    assert named["judge_model"] == "self" and named["pairs_naming_models"] == 24
    own, other = named["agreement_own_chosen"], named["agreement_other_chosen"]
    assert (own["value"], own["n"], other["value"], other["n"]) == (1.0, 12, 0.0, 12)
    assert named["gap"]["diff"] == 1.0 and named["gap"]["ci95"][0] > 0 and named["flagged"]
    fair = run_json(*args, "--feedback-backend", "reads-quality", "--feedback-model", "self")
    named = fair["bias"]["self_preference_labelled"]
    assert named["gap"]["diff"] == 0.0 and contains(named["gap"], 0.0) and not named["flagged"]


def test_against_the_feedback_model_itself_or_an_unknown_backend_is_one_line(tmp_path):
    pairs = write_rows(tmp_path / "pairs.jsonl", quality_pairs(4))
    base = ["eval", "labeler", "--pairs", pairs, "--feedback-backend", "loves-own", "--feedback-model", "self"]
    r = cai_judged(*base, "--against", "self")
    assert r.returncode == 2 and r.stderr.strip() == "--against: self is the feedback model itself; name another model"
    r = cai_judged(*base, "--against", "x", "--against-backend", "nope")
    assert r.returncode == 2 and r.stderr.strip().startswith("--against-backend: unknown backend 'nope'")


# ---------------------------------------------------------------------------------------------
# The same model as policy and judge


def test_same_model_as_policy_is_warned_in_eval_labeler(tmp_path):
    pairs = write_rows(tmp_path / "pairs.jsonl", quality_pairs(4))
    run = tmp_path / "run.yaml"
    run.write_text("constitution: harmless\npolicy: {backend: reads-quality, model: judge-7b}\n")
    r = cai_judged("eval", "labeler", "--pairs", pairs, "--feedback", run, "--padded-pairs", "0", "--json")
    assert r.returncode == 0, r.stderr
    line = "warning: the feedback model (reads-quality:judge-7b) is the policy's own model"
    assert line in r.stderr
    assert json.loads(r.stdout[r.stdout.index("{") :])["warnings"][0].startswith(line.removeprefix("warning: "))
    other = tmp_path / "policy.yaml"
    other.write_text("backend: transformers\nmodel: some-other-policy\n")
    args = ["eval", "labeler", "--pairs", pairs, "--feedback-backend", "reads-quality", "--padded-pairs", "0"]
    r = cai_judged(*args, "--feedback-model", "judge-7b", "--policy", other, "--json")
    assert (
        r.returncode == 0
        and "warning" not in r.stderr
        and json.loads(r.stdout[r.stdout.index("{") :])["warnings"] == []
    )
    r = cai_judged(*args, "--feedback-model", "judge-7b", "--policy", run, "--json")
    assert r.returncode == 0 and line in r.stderr


def test_same_model_is_noted_in_cai_run(tmp_path):
    config = setup(tmp_path / "src", CONFIG.replace("comparisons: {principles: 2}", "comparisons: {principles: 1}"))
    r = cai_judged("run", config, "--out", tmp_path / "run", "--limit", "2", cwd=config.parent)
    assert r.returncode == 0, r.stderr
    (note,) = [line for line in r.stdout.splitlines() if line.startswith("note: the feedback model")]
    assert note.startswith("note: the feedback model (scripted:default) is the policy's own model")
    assert r.stdout.index(note) < r.stdout.index("run summary")


# ---------------------------------------------------------------------------------------------
# Length control of a run's labels


def test_length_control_enters_no_record_id():
    plain, controlled = ComparisonConfig(), ComparisonConfig(length_control=True)
    assert identity(plain, "record") == identity(controlled, "record")
    assert identity(plain, "stage") == identity(controlled, "stage")


def _symmetric_slope(rows, key: str) -> float:
    """The slope of a label on the length difference, each pair counted from both of its answers."""
    xs, ys = [], []
    for r in rows:
        d = (words(r["chosen"][0]["content"]) - words(r["rejected"][0]["content"])) / 100
        xs += [d, -d]
        ys += [r[key], 1 - r[key]]
    return sum(x * (y - 0.5) for x, y in zip(xs, ys)) / sum(x * x for x in xs)


def test_length_control_takes_the_slope_out_of_the_exported_labels(tmp_path):
    import datasets

    judge = tmp_path / "loves-length"  # a model folder of its own, though this judge reads no weights
    judge.mkdir()
    (judge / "config.json").write_text("{}")
    config = CONFIG.replace(
        "comparisons: {principles: 2}",
        f"feedback: {{backend: loves-length, model: {judge}}}\ncomparisons: {{principles: 2, length_control: true}}",
    )
    run = tmp_path / "run"
    r = cai_judged("run", setup(tmp_path / "src", config), "--out", run, cwd=tmp_path / "src")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "note: the feedback model" not in r.stdout  # a feedback model of its own
    ranked = [c for c in read_jsonl(run / "comparisons.jsonl") if c["kind"] != "distill"]
    card = (run / "datasets" / "README.md").read_text()
    fit = yaml.safe_load(card.split("```yaml")[1].split("```")[0])["length_control"]
    assert fit["n"] == len(ranked) and fit["slope_per_100_words"] > 0 and fit["ci95"][0] > 0
    prefs = datasets.load_dataset(str(run / "datasets"), "prefs")
    rows = [*prefs["train"], *prefs["test"]]
    assert len(rows) == len(ranked)
    assert sorted(max(r["p_chosen_raw"], 1 - r["p_chosen_raw"]) for r in rows) == pytest.approx(
        sorted(c["p_chosen"] for c in ranked)
    )
    moved = 0
    for r in rows:
        d = words(r["chosen"][0]["content"]) - words(r["rejected"][0]["content"])
        shift = r["p_chosen"] - r["p_chosen_raw"]
        assert shift * d <= 1e-12  # a longer chosen answer loses label, a shorter one gains it
        assert r["p_chosen"] >= 0.5
        moved += abs(shift) > 1e-9
    assert moved > len(rows) // 2 and any(r["p_chosen_raw"] < 0.5 for r in rows)  # some pairs change sides
    raw, corrected = _symmetric_slope(rows, "p_chosen_raw"), _symmetric_slope(rows, "p_chosen")
    assert raw > 1 and abs(corrected) < 0.1 * raw


def test_the_report_shows_the_battery(tmp_path):
    run = tmp_path / "run"
    r = cai_judged("run", setup(tmp_path / "src"), "--out", run, "--limit", "2", cwd=tmp_path / "src")
    assert r.returncode == 0, r.stderr
    pairs = write_rows(tmp_path / "pairs.jsonl", quality_pairs(12))
    r = cai_judged(
        "eval", "labeler", "--pairs", pairs, "--feedback-backend", "loves-length", "--principles", "1",
        "--out-json", run / "eval-labeler.json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    res = json.loads((run / "eval-labeler.json").read_text())
    assert cai_judged("report", run).returncode == 0
    html = (run / "report.html").read_text()
    agreement = res["rates"]["agreement"]
    assert f"{agreement['value']:.3f} [{agreement['ci95'][0]:.3f}, {agreement['ci95'][1]:.3f}] n=12" in html
    assert "judge bias: length: slope of P(human-chosen)" in html and "← longer favoured" in html
    assert "judge bias: padded twins" in html
