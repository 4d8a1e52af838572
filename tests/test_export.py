"""Exports load right: each folder's own rows through one `datasets` cache, JSONL and Parquet.

The run directories are written through the run store from the record models, as a pipeline
writes them; the loading side is `datasets` itself, so the cache behaviour under test is real.
"""

import json

import pytest

from cai.critique.records import Comparison, Judgement
from cai.generators.records import Query, Response
from cai.store import RunStore
from tests.cli import cai

CONFIG = "constitution: harmless\nseed: 0\nexport: {test_fraction: 0.0}\n"


def write_run(root, pairs: int, tag: str, start: int = 0):
    """A run directory with `pairs` ranked pairs (one query each), appended after `start`."""
    store = RunStore(root)
    if not (root / "config.yaml").exists():
        (root / "config.yaml").write_text(CONFIG)
        from cai.constitution import dump_constitution, load_constitution

        (root / "constitution.yaml").write_text(dump_constitution(load_constitution("harmless")))
    qs, rs, cs = [], [], []
    for i in range(start, start + pairs):
        q = Query(id=f"q-{tag}-{i}", messages=[{"role": "user", "content": f"{tag} question {i}?"}], origin="seed")
        a, b = (
            Response(
                id=f"r-{tag}-{i}-{j}",
                query_id=q.id,
                sample_index=j,
                text=f"{tag} answer {j} to {i}",
                model="m",
                tokens=4,
                finish_reason="stop",
            )
            for j in (0, 1)
        )
        js = [
            Judgement(principle_id="violence", order=o, logp={"A": -0.4, "B": -1.1}, p_first=0.7) for o in ("ab", "ba")
        ]
        c = Comparison(
            id=f"c-{tag}-{i}",
            query_id=q.id,
            first_id=a.id,
            second_id=b.id,
            kind="samples",
            method="logprob",
            principle_ids=["violence"],
            judgements=js,
            p_first=0.7,
            chosen_id=a.id,
            rejected_id=b.id,
            p_chosen=0.7,
            order_consistent=True,
        )
        qs.append(q)
        rs += [a, b]
        cs.append(c)
    store.append("queries", qs)
    store.append("responses", rs)
    store.append("comparisons", cs)
    return root


def test_two_runs_and_a_reexport_load_their_own_rows_through_one_cache(tmp_path):
    from datasets import load_dataset

    cache = tmp_path / "hf-cache"
    one, two = write_run(tmp_path / "one", 3, "one"), write_run(tmp_path / "two", 9, "two")
    for run in (one, two):
        assert cai("export", run).returncode == 0
    got_one = load_dataset(str(one / "datasets"), "prefs", split="train", cache_dir=str(cache))
    got_two = load_dataset(str(two / "datasets"), "prefs", split="train", cache_dir=str(cache))
    assert sorted(got_one["query_id"]) == sorted(f"q-one-{i}" for i in range(3))
    assert sorted(got_two["query_id"]) == sorted(f"q-two-{i}" for i in range(9))
    # the same folder re-exported with more records: the new rows, not the cached ones
    write_run(one, 4, "one", start=3)
    assert cai("export", one).returncode == 0
    again = load_dataset(str(one / "datasets"), "prefs", split="train", cache_dir=str(cache))
    assert sorted(again["query_id"]) == sorted(f"q-one-{i}" for i in range(7))
    assert again[0]["chosen"][0]["content"].startswith("one answer 0")
    # nothing of the first export lingers beside the second
    assert len([p for p in (one / "datasets").iterdir() if "prefs" in p.name]) == 1


def test_parquet_export_is_sharded_and_described_by_the_card(tmp_path):
    from datasets import load_dataset

    run = write_run(tmp_path / "run", 25, "pq")
    (run / "config.yaml").write_text(CONFIG.replace("}", ", format: parquet, shard_rows: 10}"))
    r = cai("export", run)
    assert r.returncode == 0, r.stderr
    files = sorted(p.name for p in (run / "datasets").glob("train_prefs-*.parquet"))
    assert len(files) == 3 and files[0].startswith("train_prefs-00000-of-00003-")
    card = (run / "datasets" / "README.md").read_text()
    assert "num_examples: 25" in card and files[2] in card
    ds = load_dataset(str(run / "datasets"), "prefs", split="train", cache_dir=str(tmp_path / "c"))
    assert len(ds) == 25 and ds.features["p_chosen"].dtype == "float64"
    assert ds[0]["prompt"] == [{"role": "user", "content": ds[0]["prompt"][0]["content"]}]
    # the --format flag overrides the config, and the swap leaves only the new format behind
    assert cai("export", run, "--format", "jsonl").returncode == 0
    assert not list((run / "datasets").glob("*.parquet")) and list((run / "datasets").glob("train_prefs-*.jsonl"))


@pytest.mark.slow
def test_parquet_export_trains_a_dpo_step(tmp_path, default_model_dir):
    from cai.training.config import load_train_config
    from cai.training.run import train_dpo

    run = write_run(tmp_path / "run", 6, "dpo")
    assert cai("export", run, "--format", "parquet").returncode == 0
    cfg = load_train_config(
        None,
        [
            f"dataset={run / 'datasets'}",
            f"trl.output_dir={tmp_path / 'dpo'}",
            "trl.max_steps=1",
            "trl.per_device_train_batch_size=2",
            "trl.save_strategy=no",
        ],
    )
    summary = train_dpo(cfg)
    assert summary["steps"] == 1 and summary["train_loss"] > 0
    assert json.loads((tmp_path / "dpo" / "summary.json").read_text())["kind"] == "dpo"
