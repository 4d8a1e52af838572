"""Training data mixtures: layouts read, shares drawn, make-up counted, bad sources refused."""

import json

import pytest

from cai.core.errors import UserError
from cai.training.config import load_train_config
from cai.training.export import write_export
from cai.training.mixture import DataSource, draw, load_mixture, plan_counts


def ai_pairs(n):
    return [
        {
            "prompt": [{"role": "user", "content": f"How do I pick a lock {i}?"}],
            "chosen": [{"role": "assistant", "content": "Call a locksmith."}],
            "rejected": [{"role": "assistant", "content": "Use a tension wrench like this."}],
            "p_chosen": 0.7,
            "principle_ids": ["illegal-activity"],
            "kind": "samples",
            "query_id": f"q{i}",
        }
        for i in range(n)
    ]


def hh_line(i, same_head=True):
    head = f"\n\nHuman: Can you suggest a name for my cat number {i}?"
    other = head if same_head else "\n\nHuman: something else"
    return json.dumps({"chosen": f"{head}\n\nAssistant: How about Biscuit?", "rejected": f"{other}\n\nAssistant: No."})


@pytest.fixture
def sources(tmp_path):
    write_export({"train_prefs": ai_pairs(12), "test_prefs": ai_pairs(3)}, tmp_path / "run" / "datasets", {})
    (tmp_path / "run" / "config.yaml").write_text("constitution: harmless\n")
    hh = tmp_path / "helpful.jsonl"
    hh.write_text("\n".join([hh_line(i) for i in range(20)] + [hh_line(99, same_head=False)]) + "\n")
    return tmp_path / "run", hh


def test_weights_give_the_stated_shares_and_the_summary_counts_them(sources):
    run, hh = sources
    data, makeup = load_mixture([DataSource(path=str(run), weight=3), DataSource(path=str(hh), weight=1)], "prefs")
    ai, human = makeup["sources"]
    assert (ai["rows"], human["rows"], makeup["rows"]) == (12, 4, 16)  # 3:1, no source repeated
    assert (ai["share"], human["share"]) == (0.75, 0.25)
    assert human["available"] == 20 and human["skipped"] == {
        "the two transcripts differ before their last Assistant turn": 1
    }
    assert sorted(data["source"]).count(str(hh)) == 4
    row = next(r for r in data if r["source"] == str(hh))
    assert row["prompt"][-1]["role"] == "user" and row["chosen"] == [
        {"role": "assistant", "content": "How about Biscuit?"}
    ]
    assert row["p_chosen"] == 1.0  # a human label is a hard one; the AI pairs keep theirs
    assert {r["p_chosen"] for r in data if r["source"] == str(run)} == {0.7}
    held, info = load_mixture([DataSource(path=str(run), weight=3), DataSource(path=str(hh))], "prefs", held_out=True)
    assert len(held) == 3 and [s["source"] for s in info["sources"]] == [str(run)]  # a file has no held-out split


def test_sample_counts_repeat_small_sources_and_the_draw_is_seeded(sources):
    run, hh = sources
    srcs = [DataSource(path=str(run), samples=30), DataSource(path=str(hh), samples=5)]
    data, makeup = load_mixture(srcs, "prefs", seed=1)
    assert [s["rows"] for s in makeup["sources"]] == [30, 5] and makeup["sources"][0]["repeated"]
    again, _ = load_mixture(srcs, "prefs", seed=1)
    assert data["prompt"] == again["prompt"]
    counts = [draw(4, 10, 0).count(i) for i in range(4)]
    assert sum(counts) == 10 and set(counts) <= {2, 3}  # whole passes first, then a sample of the rest
    assert plan_counts(
        [10, 100, 7], [DataSource(path="a", weight=1), DataSource(path="b", weight=4), DataSource(path="c")]
    ) == [10, 40, 7]


def test_other_layouts_for_sft_and_prompts(tmp_path, sources):
    _, hh = sources
    pc = tmp_path / "pc.jsonl"
    pc.write_text(
        json.dumps(
            {"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "hello"}]}
        )
        + "\n"
    )
    sft, makeup = load_mixture([DataSource(path=str(pc)), DataSource(path=str(hh))], "sft")
    assert makeup["rows"] == 22 and all(m["messages"][-1]["role"] == "assistant" for m in sft)
    prompts, _ = load_mixture([DataSource(path=str(hh))], "prompts")
    assert all(p["prompt"][-1]["role"] == "user" for p in prompts)


def test_bad_sources_are_one_line_errors(tmp_path, sources):
    run, hh = sources
    with pytest.raises(UserError, match="dataset not found"):
        load_mixture([DataSource(path=str(tmp_path / "nope.jsonl"))], "prefs")
    with pytest.raises(UserError, match="no train split of sft data"):
        load_mixture([DataSource(path=str(run))], "sft")
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"question": "x"}) + "\n")
    with pytest.raises(UserError, match="missing column.*chosen/rejected"):
        load_mixture([DataSource(path=str(wrong))], "prefs")
    with pytest.raises(UserError, match="weight or samples, not both"):
        load_train_config(None, [f'datasets=[{{"path": "{hh}", "weight": 1, "samples": 2}}]', "trl.output_dir=o"])
    with pytest.raises(UserError, match="dataset .one source. or datasets"):
        load_train_config(None, [f"dataset={hh}", f'datasets=[{{"path": "{hh}"}}]'])


def test_judge_config_kinds():
    cfg = load_train_config(
        None, ["dataset=x", 'judge={"constitution": "harmless", "kind": "pairwise", "reference": "ref"}']
    )
    assert cfg.judge.kind == "pairwise" and cfg.judge.reference == "ref"
    with pytest.raises(UserError, match="only for kind: pairwise"):
        load_train_config(None, ["dataset=x", 'judge={"constitution": "harmless", "reference": "ref"}'])
