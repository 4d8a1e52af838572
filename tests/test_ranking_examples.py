"""Comparison examples: ranked pairs shown to the feedback model before the pair it ranks.

The CAI paper's two ranking few-shot files are imported from fixtures in their published layout
(tests/fixtures/cai-paper, in words of our own). A judge that learns only from the examples in
its prompt (tests/judges.py `FollowsExamples`) shows where they sit: each prompt alternates the
letter of the better reply, both orders of a pair show the same examples, every example is shown
under (A) and under (B) over a set of pairs, and a judge that copies the examples' letters leans
both ways equally. Ids and reading keys move only where a prompt shows examples.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from cai.config import load_config
from cai.constitution import Constitution, load_constitution
from cai.constitution.lint import lint_file
from cai.core.identity import identity
from cai.critique.cache import ReadingCache
from cai.critique.rank import ComparisonConfig, comparison_id
from cai.critique.reading import PairToRead, ReadingConfig, read_pairs, reading_key, reading_settings
from cai.evaluation.pairs import LabeledPair
from cai.pipeline import Pipeline
from cai.workbench.compare import compare, without_examples
from tests.cli import cai
from tests.judges import FollowsExamples, examples_in
from tests.testing_utils import CALLS, CONSTITUTION, REPO, records, setup

PAPER = Path(__file__).parent / "fixtures" / "cai-paper"

# Two examples for every principle and one for `kind` alone. Every better reply says "gladly";
# no worse reply does: that is what a judge learning from them can pick up.
EXAMPLES = """\
name: examples
principles:
  - id: kind
    comparison: Which reply is kinder?
  - id: honest
    comparison: Which reply is more honest?
comparison_examples:
  - prompt: Can you help me move a sofa on Saturday?
    better: I would gladly help, but I cannot lift things; a friend or a moving service could.
    worse: No.
  - prompt: Is my poem any good?
    better: I gladly read it. The images are vivid; the ending could be clearer.
    worse: It is bad.
    reasoning: (better) is honest and useful; (worse) only judges.
  - principle_id: kind
    prompt: My dog died today.
    better: I am so sorry. I would gladly listen if you want to tell me about him.
    worse: Dogs do not live long anyway.
"""


def examples_c(text: str = EXAMPLES) -> Constitution:
    return Constitution.model_validate(__import__("yaml").safe_load(text))


def pairs(n: int, marked: bool = False) -> list[PairToRead]:
    """n pairs; with `marked`, the first reply holds the examples' word and the second does not."""
    out = []
    for i in range(n):
        first = f"Gladly, here is answer {i}." if marked else f"Here is answer {i}."
        out.append(PairToRead(f"pair-{i}", [{"role": "user", "content": f"Question {i}?"}], first, f"Answer {i}.", []))
    return out


def read(c: Constitution, todo: list[PairToRead], judge, **cfg) -> list:
    pool = c.principles
    todo = [PairToRead(p.key, p.messages, p.first, p.second, pool) for p in todo]
    return read_pairs(judge, todo, ReadingConfig(principles=len(pool), **cfg), seed=0)


# ---------------------------------------------------------------------------------------------
# Import


def test_import_reads_both_paper_files_in_their_published_layout(tmp_path):
    out = tmp_path / "paper.yaml"
    r = cai(
        "constitution", "import", "RLMadisonFewShotPrompts.json", "RLMadisonPrecogFewShotPrompts.json", "-o", out,
        cwd=PAPER,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "6 comparison examples" in r.stdout
    lint = cai("constitution", "lint", "--strict", out)
    assert lint.returncode == 0, (lint.stdout, lint.stderr)
    c = load_constitution(out)
    assert [p.id for p in c.principles] == ["helpful-honest-harmless"], "examples alone get one question"
    plain, argued = c.comparison_examples[:3], c.comparison_examples[3:]
    assert plain[0].prompt == "How can I get back at a coworker who embarrassed me in a meeting?"
    assert plain[0].better.startswith("That sounds upsetting.") and plain[0].worse.startswith("Spread a rumour")
    assert all(e.reasoning is None and e.principle_id is None for e in plain)
    # The first argued example: three turns; the answer was (B), so (B) is the better reply.
    assert [m.role for m in argued[0].messages] == ["user", "assistant", "user"]
    assert argued[0].messages[1].content.startswith("I\u2019m sorry, that must be worrying.")
    assert argued[0].better.startswith("Try fractions") and argued[0].worse.startswith("Some children")
    assert argued[0].reasoning == (
        "(worse) This response gives up on the child and offers no help.\n"
        "(better) This response is practical and kind, and it answers the parent's question.\n\n"
        "Therefore, option (better) is the best response."
    )
    # The second: the answer was (A); its (B) reply runs over several lines; "option B" is named.
    assert argued[1].better.startswith("Never mix bleach") and argued[1].worse.endswith("2. A cup of ammonia")
    assert "Option (worse) turns that into instructions" in argued[1].reasoning
    assert argued[1].reasoning.startswith("The question is about safety"), "the step-by-step cue is dropped"
    # The third: no leading newline, no (H)/(A) in its first line.
    assert argued[2].prompt == "Who painted the ceiling of the Sistine Chapel?"
    assert argued[2].reasoning == (
        "Option (worse) names the wrong artist, whereas option (better) is correct.  So option (better) is better, "
        "as it is more honest."
    )
    for e in argued:
        assert "(A)" not in e.reasoning and "(B)" not in e.reasoning and "Let's think" not in e.reasoning


def test_a_mangled_entry_is_one_line_naming_it(tmp_path):
    entries = json.loads((PAPER / "RLMadisonPrecogFewShotPrompts.json").read_text())
    for i, (old, new, says) in enumerate(
        [
            ("\n\nHuman:\nSo the answer is: (A)", "", "expected 'Assistant:' with the reasoning"),
            ("{}", "", "no {} where the principle goes"),
            (" (B) [[[", " (C) [[[", "expected the two replies after {}"),
        ]
    ):
        bad = [dict(e) for e in entries]
        bad[1]["prompt"] = bad[1]["prompt"].replace(old, new)
        path = tmp_path / f"bad{i}.json"
        path.write_text(json.dumps(bad))
        r = cai("constitution", "import", path, "--format", "cai-paper-ranking-cot-examples")
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip() == r.stderr.strip().splitlines()[0], "one line"
        assert f"{path}: [1].prompt: {says}" in r.stderr, r.stderr
    plain = json.loads((PAPER / "RLMadisonFewShotPrompts.json").read_text())
    plain[2]["incorrects"] = []
    (tmp_path / "plain.json").write_text(json.dumps(plain))
    r = cai("constitution", "import", tmp_path / "plain.json")
    assert r.returncode == 2 and "[2].incorrects: expected a non-empty list of replies" in r.stderr, r.stderr


def test_lint_finds_reasoning_that_names_a_fixed_letter(tmp_path):
    text = EXAMPLES.replace("(better) is honest and useful; (worse) only judges.", "Option B only judges, so A wins.")
    (tmp_path / "c.yaml").write_text(text)
    _, warnings = lint_file(tmp_path / "c.yaml")
    assert any(w.startswith(f"{tmp_path / 'c.yaml'}:14: names a reply by a fixed letter")
               for w in warnings), warnings  # fmt: skip
    same = EXAMPLES.replace(
        "worse: It is bad.", "worse: I gladly read it. The images are vivid; the ending could be clearer."
    )
    (tmp_path / "same.yaml").write_text(same)
    r = cai("constitution", "lint", tmp_path / "same.yaml")
    assert r.returncode == 2 and "comparison_examples[1].worse: better and worse are the same reply" in r.stderr


# ---------------------------------------------------------------------------------------------
# The prompt


def test_examples_reach_the_prompt_in_both_letter_positions():
    """With a judge that copies the letter of the last example: every prompt alternates the
    better reply's letter; the two orders of a pair show the same examples, so the copied letter
    leans one way in one order and the other way in the other (every soft label is exactly 1/2);
    over 24 pairs every example sits under (A) and under (B)."""
    judge = FollowsExamples()
    results = read(examples_c(), pairs(24), judge)
    assert all(r.error is None for r in results)
    assert {round(r.p_first, 12) for r in results} == {0.5}, "the examples' letters cancel over both orders"
    seen: dict[str, set[str]] = {}
    prompts = [p for p in judge.prompts]
    assert len(prompts) == 24 * 2 * 2
    for p in prompts:
        shown = examples_in(p)
        letters = [letter for letter, _, _ in shown]
        assert len(shown) == 2 and letters in (["A", "B"], ["B", "A"]), letters
        for letter, better, _ in shown:
            seen.setdefault(better, set()).add(letter)
    assert all(v == {"A", "B"} for v in seen.values()) and len(seen) == 3, seen
    # kind reads its own example first, then the first for all; honest reads the two for all
    kind = [examples_in(p) for p in prompts if "Which reply is kinder?\n\nAnswer" in p]
    assert kind and all(s[0][1].startswith("I am so sorry") for s in kind)
    for i in range(0, len(prompts), 2):  # a principle's two orders, one after the other
        a, b = prompts[i], prompts[i + 1]
        assert examples_in(a) == examples_in(b) and a != b


def test_examples_teach_the_judge_and_none_are_shown_with_few_shot_0():
    judge = FollowsExamples()
    taught = read(examples_c(), pairs(6, marked=True), judge)
    assert all(abs(r.p_first - 0.9) < 1e-9 for r in taught), [r.p_first for r in taught]
    judge = FollowsExamples()
    untaught = read(examples_c(), pairs(6, marked=True), judge, few_shot=0)
    assert all(r.p_first == 0.5 for r in untaught) and not any(examples_in(p) for p in judge.prompts)
    bare = FollowsExamples()
    read(without_examples(examples_c()), pairs(6, marked=True), bare)
    assert bare.prompts == judge.prompts, "few_shot 0 shows exactly the prompt of a file without examples"


def test_a_judge_that_argues_first_sees_the_reasoning_with_the_letters_where_the_replies_sit():
    judge = FollowsExamples()
    read(examples_c(), pairs(8), judge, method="cot")
    argued = [p for p in judge.prompts if "is honest and useful" in p]
    assert argued
    letters = set()
    for p in argued:
        (poem,) = [x for x in examples_in(p) if x[1].startswith("I gladly read it")]
        better, worse = poem[0], "B" if poem[0] == "A" else "A"
        assert f"({better}) is honest and useful; ({worse}) only judges.\n\nThe better reply is ({better})." in p
        letters.add(better)
    assert letters == {"A", "B"}
    plain = FollowsExamples()
    read(examples_c(), pairs(2), plain)
    assert not any("is honest and useful" in p for p in plain.prompts), "a log-prob reading shows no argument"


# ---------------------------------------------------------------------------------------------
# Identity


def test_ids_and_reading_keys_move_only_where_a_prompt_shows_examples():
    with_ex, bare = examples_c(), without_examples(examples_c())
    kind, honest = with_ex.principles
    settings = identity(ComparisonConfig())
    assert "few_shot" not in settings
    ids = lambda c, k, ps: comparison_id("q", "a", "b", "m", settings, 0, [c.principle(p) for p in ps], k)  # noqa: E731
    assert ids(with_ex, 0, ["kind", "honest"]) == ids(bare, 2, ["kind", "honest"]), "none shown: the id of before"
    assert ids(with_ex, 2, ["kind"]) != ids(bare, 2, ["kind"])
    # an edit of kind's own example moves the pairs that read kind, and no other
    edited = examples_c(EXAMPLES.replace("Dogs do not live long anyway.", "Get a new one."))
    assert ids(edited, 2, ["kind"]) != ids(with_ex, 2, ["kind"])
    assert ids(edited, 2, ["honest"]) == ids(with_ex, 2, ["honest"])
    assert ids(edited, 1, ["kind", "honest"]) != ids(with_ex, 1, ["kind", "honest"])
    assert ids(edited, 0, ["kind", "honest"]) == ids(with_ex, 0, ["kind", "honest"])
    # the reasoning is read only by a judge that argues first
    terse = examples_c(EXAMPLES.replace("    reasoning: (better) is honest and useful; (worse) only judges.\n", ""))
    assert ids(terse, 2, ["honest"]) == ids(with_ex, 2, ["honest"])
    cot = identity(ComparisonConfig(method="cot"))
    assert comparison_id("q", "a", "b", "m", cot, 0, [terse.principle("honest")], 2) != comparison_id(
        "q", "a", "b", "m", cot, 0, [honest], 2
    )
    for cfg in (ReadingConfig(), ReadingConfig(few_shot=5)):
        s = reading_settings(cfg, 0)
        assert reading_key("m", s, "pk", "ab", bare.principle("kind")) == reading_key(
            "m", reading_settings(ReadingConfig(few_shot=0), 0), "pk", "ab", kind
        )
        assert reading_key("m", s, "pk", "ab", kind) != reading_key("m", s, "pk", "ab", bare.principle("kind"))
    assert identity(ComparisonConfig(), "stage") == identity(ComparisonConfig(few_shot=2), "stage")
    assert identity(ComparisonConfig(few_shot=3), "stage")["few_shot"] == 3


def test_the_reading_cache_tells_a_prompt_with_examples_from_one_without(tmp_path):
    cache = ReadingCache(tmp_path / "cache", "follows-examples")
    judge = FollowsExamples()
    todo = pairs(3)
    bare = [PairToRead(p.key, p.messages, p.first, p.second, without_examples(examples_c()).principles) for p in todo]
    read_pairs(judge, bare, ReadingConfig(principles=2), 0, cache=cache)
    assert cache.stats()["misses"] == 12
    shown = [PairToRead(p.key, p.messages, p.first, p.second, examples_c().principles) for p in todo]
    read_pairs(judge, shown, ReadingConfig(principles=2), 0, cache=cache)
    assert cache.stats()["misses"] == 24, "no reading without examples stands in for one with them"
    read_pairs(judge, shown, ReadingConfig(principles=2, few_shot=0), 0, cache=cache)
    assert cache.stats()["misses"] == 24 and cache.stats()["hits"] == 12
    cache.close()


def test_a_run_reranks_only_the_pairs_whose_prompts_show_an_edited_example(tmp_path):
    example = (
        "comparison_examples:\n  - principle_id: brief\n    prompt: What time is it?\n"
        "    better: Ten past three.\n    worse: Time is a construct, but roughly mid-afternoon, I think.\n"
    )
    cfg = setup(tmp_path, **{"tiny.yaml": CONSTITUTION + example})
    run = lambda: Pipeline(load_config(cfg), tmp_path / "R", console=Console(file=io.StringIO()))  # noqa: E731
    for _ in range(2):
        CALLS.clear()
        pipe = run()
        try:
            pipe.start()
            pipe.run()
        finally:
            pipe.close()
    assert not CALLS, "a rerun reads nothing again"
    before = records(tmp_path / "R", "comparisons")
    (tmp_path / "tiny.yaml").write_text(CONSTITUTION + example.replace("Ten past three.", "It is 3:10."))
    CALLS.clear()
    pipe = run()
    try:
        pipe.start()
        pipe.run()
    finally:
        pipe.close()
    under = [c for c in before if "brief" in c["principle_ids"]]
    expected = sum(1 for c in under for j in c["judgements"] if j["principle_id"] == "brief")
    assert under and {"letters": expected} == CALLS, "only the readings under brief, whose prompts show it"
    after = {c["id"] for c in records(tmp_path / "R", "comparisons")}
    assert {c["id"] for c in before if "brief" not in c["principle_ids"]} <= after


# ---------------------------------------------------------------------------------------------
# compare with and without examples


def _labelled(n: int = 8) -> list[LabeledPair]:
    """Pairs whose chosen reply says "gladly", as every example's better reply does."""
    return [
        LabeledPair(f"l{i}", [{"role": "user", "content": f"Can you do task {i}?"}], f"Gladly, task {i} is done.",
                    f"Task {i}: no.", f"pairs:{i}")
        for i in range(n)
    ]  # fmt: skip


def test_compare_measures_a_constitution_with_and_without_its_examples(tmp_path):
    c = examples_c()
    result = compare(without_examples(c), c, _labelled(), FollowsExamples())
    assert result["flips"] == 8 and result["new"]["agreement"] == 1.0
    assert {r["id"]: r["status"] for r in result["by_principle"]} == {"kind": "examples", "honest": "examples"}
    (tmp_path / "c.yaml").write_text(EXAMPLES)
    rows = [
        {"prompt": p.context, "chosen": [{"role": "assistant", "content": p.chosen}],
         "rejected": [{"role": "assistant", "content": p.rejected}]}
        for p in _labelled()
    ]  # fmt: skip
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = "import tests.judges; from cai.cli import main; main()"
    args = ["constitution", "compare", "c.yaml", "--examples", "--pairs", "pairs.jsonl", "--no-cache"]
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(REPO)}
    r = subprocess.run(
        [sys.executable, "-c", code, *args, "--feedback-backend", "follows-examples", "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout[r.stdout.index("{") :])
    assert out["flips"] == 8 and out["old"]["hash"] == without_examples(c).content_hash()
    r = subprocess.run(
        [sys.executable, "-c", code, *args, "--feedback-backend", "follows-examples", "--few-shot", "0", "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0 and json.loads(r.stdout[r.stdout.index("{") :])["flips"] == 0
    r = cai("constitution", "compare", "c.yaml", "c.yaml", "--examples", "--pairs", "pairs.jsonl", cwd=tmp_path)
    assert r.returncode == 2 and "one constitution with --examples" in r.stderr


@pytest.mark.parametrize("field", ["prompt", "messages"])
def test_an_example_needs_one_conversation_ending_with_the_user(field):
    bad = {"name": "x", "principles": [{"id": "a", "comparison": "Which?"}],
           "comparison_examples": [{"better": "b", "worse": "w"}]}  # fmt: skip
    if field == "messages":
        bad["comparison_examples"][0]["messages"] = [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "r"},
        ]
    with pytest.raises(ValueError, match="user's message" if field == "messages" else "a prompt or messages"):
        Constitution.model_validate(bad)
