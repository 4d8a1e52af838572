"""A stronger teacher for context distillation, and the introspection stage of character runs."""

import json
import os
import signal
import time
from pathlib import Path

import pytest
import yaml

from cai.constitution import load_constitution
from cai.core.errors import UserError
from cai.critique.distill import leak_reason
from cai.critique.introspect import (
    IntrospectionConfig,
    exported,
    opener,
    plan_introspection_tasks,
    reflection_prompt,
    seen_by,
)
from cai.critique.records import Introspection
from cai.training.export import ExportConfig, build_rows
from tests.cli import cai

TWO_TRAITS = """\
name: two-traits
traits:
  - id: curiosity
    text: I find ideas genuinely interesting and ask follow-up questions.
    questions: ["Tell me about octopuses."]
  - id: patience
    text: I stay calm and explain things again when someone is confused.
    questions: ["I still don't get fractions."]
"""


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def test_plans_per_trait_with_ids_from_inputs():
    c = load_constitution("character")
    cfg = IntrospectionConfig(reflections=2, interactions=1, turns=3)
    tasks = plan_introspection_tasks(c, cfg, "transformers:default", 0)
    assert len(tasks) == 3 * len(c.traits)
    assert [(t.data.kind, t.data.index) for t in tasks[:3]] == [
        ("reflection", 0),
        ("reflection", 1),
        ("interaction", 0),
    ]
    assert len({t.id for t in tasks}) == len(tasks)
    assert [t.id for t in plan_introspection_tasks(c, cfg, "transformers:default", 0)] == [t.id for t in tasks]
    more_turns = plan_introspection_tasks(c, cfg.model_copy(update={"turns": 4}), "transformers:default", 0)
    same_kind = [(a.id == b.id) for a, b in zip(tasks, more_turns)]
    assert same_kind[:2] == [True, True] and same_kind[2] is False  # turns shape dialogues only
    other_model = plan_introspection_tasks(c, cfg, "transformers:big", 0)
    assert not {t.id for t in other_model} & {t.id for t in tasks}
    first, second = reflection_prompt(c, tasks[0].data), reflection_prompt(c, tasks[1].data)
    assert first != second and "curiosity" in first and "curiosity" in opener(c, tasks[2].data)


def test_each_instance_sees_itself_as_the_assistant():
    dialogue = ["opener", "a1", "b1", "a2", "b2"]
    assert [m["role"] for m in seen_by(dialogue[:2], 0)] == ["assistant", "user"]  # the opener's writer answers a1
    assert [m["role"] for m in seen_by(dialogue[:3], 1)] == ["user", "assistant", "user"]
    assert [m["content"] for m in exported(dialogue)] == ["opener", "a1", "b1", "a2"]  # ends on its own turn


def test_the_leak_filter_lets_introspection_name_a_trait_but_not_its_instructions():
    c = load_constitution("character")
    assert leak_reason("My curiosity gets me into long tangents.", c) == "names the trait 'curiosity'"
    assert leak_reason("My curiosity gets me into long tangents.", c, names=False) is None
    assert leak_reason("My system prompt says to be curious.", c, names=False) == "mentions 'system prompt'"


def test_introspection_rows_are_sft_rows_tagged_introspection():
    def rec(rid, dropped=None):
        return Introspection(
            id=rid,
            kind="interaction",
            trait_id="curiosity",
            index=0,
            messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
            model="m",
            dropped=dropped,
        )

    rows = list(build_rows([], [], [], {}, ExportConfig(test_fraction=0), [rec("i-1"), rec("i-2", "mentions 'x'")]))
    assert rows == [
        (
            "train_sft",
            {
                "messages": rec("i-1").messages,
                "query_id": None,
                "principle_ids": ["curiosity"],
                "kind": "introspection",
            },
        )
    ]


def test_introspection_needs_traits(tmp_path):
    from cai.config import load_config, load_constitutions

    cfg = tmp_path / "c.yaml"
    cfg.write_text("constitution: harmless\nintrospection: {reflections: 1}\n")
    with pytest.raises(UserError, match="introspection: .* has no traits"):
        load_constitutions(load_config(cfg))
    cfg.write_text("constitution: character\nintrospection: {reflection: 1}\n")
    with pytest.raises(UserError, match="reflection"):
        load_config(cfg)


@pytest.mark.slow
def test_distillation_uses_the_teacher_config(tmp_path, default_model_dir, tiny_model):
    (tmp_path / "two.yaml").write_text(TWO_TRAITS)
    (tmp_path / "seeds.txt").write_text("What's a good first houseplant?\nHow do tides work?\n")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "constitution: two.yaml\nbatch_size: 4\n"
        f"teacher: {{backend: transformers, model: {tiny_model}}}\n"
        "queries: {per_principle: 0, seed_file: seeds.txt}\n"
        "responses: {samples: 1, max_new_tokens: 8}\nrevisions: {rounds: 0}\n"
        "comparisons: {mode: distill}\nexport: {test_fraction: 0}\n"
    )
    r = cai("run", cfg, "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    teachers = lines(tmp_path / "run" / "teacher.jsonl")
    answers = lines(tmp_path / "run" / "responses.jsonl")
    assert len(teachers) == 2 and {t["model"] for t in teachers} == {str(tiny_model)}
    assert answers and str(tiny_model) not in {a["model"] for a in answers}  # the policy answered as the student
    pairs = lines(tmp_path / "run" / "comparisons.jsonl")
    assert all(p["kind"] == "distill" and p["chosen_id"] in {t["id"] for t in teachers} for p in pairs)
    readme = (tmp_path / "run" / "datasets" / "README.md").read_text()
    card = yaml.safe_load(readme.split("```yaml\n", 1)[1].split("\n```", 1)[0])
    assert card["teacher"]["model"] == str(tiny_model) and card["policy"]["model"] == "default"


@pytest.mark.slow
def test_introspection_run_resumes_after_sigkill_and_exports(tmp_path, tiny_model):
    """The policy is the tiny model, so the teacher (the policy, with the constitution as its system
    prompt) answers in a blink: this checks the stage's records, resume and export, not prose."""
    (tmp_path / "two.yaml").write_text(TWO_TRAITS)
    (tmp_path / "seeds.txt").write_text("What's a good first houseplant?\n")
    cfg, run = tmp_path / "run.yaml", tmp_path / "run"
    cfg.write_text(
        f"constitution: two.yaml\nbatch_size: 1\nwrite_every: 1\npolicy: {{model: {tiny_model}}}\n"
        "queries: {per_principle: 0, seed_file: seeds.txt}\n"
        "responses: {samples: 1, max_new_tokens: 4}\nrevisions: {rounds: 0}\n"
        "introspection: {reflections: 2, interactions: 1, turns: 3, max_new_tokens: 6}\n"
        "export: {test_fraction: 0}\n"
    )
    first = cai("run", cfg, "--out", run, wait=False)
    deadline = time.time() + 600
    while time.time() < deadline and not lines(run / "introspection.jsonl") and first.poll() is None:
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    before = [r["id"] for r in lines(run / "introspection.jsonl")]
    assert 1 <= len(before) < 6, "the kill should land inside the introspection stage"

    r = cai("run", cfg, "--out", run)
    assert r.returncode == 0, r.stderr
    records = lines(run / "introspection.jsonl")
    c = load_constitution(run / "constitution.yaml")
    planned = plan_introspection_tasks(
        c,
        IntrospectionConfig(reflections=2, interactions=1, turns=3, max_new_tokens=6),
        f"transformers:{tiny_model}",
        0,
    )
    assert sorted(r["id"] for r in records) == sorted(t.id for t in planned)  # each id once, the same ids
    assert [r["id"] for r in records[: len(before)]] == before  # the records made before the kill were kept
    for trait in ("curiosity", "patience"):
        mine = [r for r in records if r["trait_id"] == trait]
        assert sorted(r["kind"] for r in mine) == ["interaction", "reflection", "reflection"]
        talk = next(r for r in mine if r["kind"] == "interaction")
        roles = [m["role"] for m in talk["messages"]]
        assert roles == ["user", "assistant", "user", "assistant"]  # opener, then 3 generated turns
        assert all(r["system_prompt_id"] == f"constitution:{c.content_hash()}" for r in mine)
    sft = [json.loads(x) for f in (run / "datasets").glob("train_sft*.jsonl") for x in f.read_text().splitlines()]
    kept = [r for r in records if r["dropped"] is None]
    intro = [row for row in sft if row["kind"] == "introspection"]
    assert len(intro) == len(kept) and {m["content"] for row in intro for m in row["messages"]} >= {
        m["content"] for r in kept for m in r["messages"]
    }
