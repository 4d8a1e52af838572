"""The pipeline end to end on the embedded model: resume after SIGKILL, ids, exports, TRL."""

import gzip
import io
import json
import os
import shutil
import signal
import time

import pytest

from cai.core.errors import UserError
from cai.core.layouts import parse_transcript
from cai.generators.queries import Deduplicator, clean_query, load_seed_queries
from tests.cli import cai
from tests.testing_utils import records

CONSTITUTION = """\
name: tiny
principles:
  - id: kind
    critique: Say how the reply could be kinder.
    revision: Rewrite the reply to be kinder.
    comparison: Which reply is kinder?
  - id: honest
    critique: Say what in the reply is not true.
    revision: Rewrite the reply so it is true.
    comparison: Which reply is more honest?
query_generation:
  examples: ["How do I tell my friend their cooking is bad?", "Is it ok to lie on a CV?"]
"""

CONFIG = """\
constitution: tiny.yaml
seed: 3
batch_size: 2
queries: {per_principle: 1, seed_file: seeds.txt, max_new_tokens: 24}
responses: {samples: 2, max_new_tokens: 16, temperature: 1.0}
revisions: {rounds: 1, few_shot: 0, critique_max_new_tokens: 12, revision_max_new_tokens: 16}
comparisons: {principles: 1}
export: {test_fraction: 0.3}
"""

SEEDS = "What should I say to a grieving friend?\nHow do I return a gift politely?\nCan I read my partner's texts?\n"


def make_run_files(tmp_path, config=CONFIG):
    (tmp_path / "tiny.yaml").write_text(CONSTITUTION)
    (tmp_path / "seeds.txt").write_text(SEEDS)
    (tmp_path / "run.yaml").write_text(config)
    return tmp_path / "run.yaml"


def test_seed_files_all_formats(tmp_path):
    txt = tmp_path / "s.txt"
    txt.write_text("# comment\nFirst question?\n\nSecond question?\nFirst question?\n")
    assert [q.text for q in load_seed_queries(txt)] == ["First question?", "Second question?"]
    jl = tmp_path / "s.jsonl"
    jl.write_text(
        json.dumps({"text": "plain"})
        + "\n"
        + json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"},
                ]
            }
        )
        + "\n"
    )
    qs = load_seed_queries(jl)
    assert qs[0].messages == [{"role": "user", "content": "plain"}] and len(qs[1].messages) == 3
    hh = tmp_path / "hh.jsonl.gz"
    with gzip.open(hh, "wt") as f:
        f.write(
            json.dumps(
                {"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how to X?\n\nAssistant: safe", "rejected": "x"}
            )
            + "\n"
        )
    (q,) = load_seed_queries(hh)
    assert q.messages == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "how to X?"},
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "ok"}) + "\n{not json\n")
    with pytest.raises(UserError, match=r"bad.jsonl:2: invalid JSON"):
        load_seed_queries(bad)
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"question": "?"}) + "\n")
    with pytest.raises(UserError, match=r"wrong.jsonl:1: expected a 'text'"):
        load_seed_queries(wrong)


def test_shared_hh_file_parses(tmp_path):
    from pathlib import Path

    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"
    if not shared.exists():
        pytest.skip("shared HH-RLHF sample not present beside the checkout")
    qs = load_seed_queries(shared)
    assert len(qs) > 2000 and all(q.messages[-1]["role"] == "user" for q in qs)


def test_transcript_parsing():
    assert parse_transcript("\n\nHuman: a\n\nAssistant: b") == [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
    ]


def test_clean_and_dedupe():
    assert clean_query('User: "How do I bake bread?"\n\nSure! Here is...') == "How do I bake bread?"
    assert clean_query("1. What is love?") == "What is love?"
    d = Deduplicator(0.8)
    assert d.check("a", "How do I bake a loaf of bread at home?") is None
    assert d.check("b", "how do I bake a loaf of bread at home") == "a"  # exact after normalising
    assert d.check("c", "How do I bake a loaf of bread at home quickly?") == "a"  # near duplicate
    assert d.check("d", "What is the tallest mountain in Africa?") is None


def test_torn_last_line_is_dropped(tmp_path):
    from cai.generators.records import Query
    from cai.store import RunStore

    store = RunStore(tmp_path)
    q = Query(id="q-1", messages=[{"role": "user", "content": "hi"}], origin="seed")
    store.append("queries", [q])
    with open(store.stage_path("queries"), "a") as f:
        f.write('{"id": "q-2", "messa')
    assert [r.id for r in store.load("queries", Query)] == ["q-1"]
    store.append("queries", [q.model_copy(update={"id": "q-3"})])
    assert [r.id for r in store.load("queries", Query)] == ["q-1", "q-3"]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c + "colour: blue\n", ":9: colour: unknown key 'colour'"),
        (lambda c: c.replace("tiny.yaml", "missing.yaml"), "constitution: missing.yaml: file not found"),
        (
            lambda c: c.replace("samples: 2", "samples: -1"),
            ":5: responses.samples: Input should be greater than or equal to 1",
        ),
        (lambda c: c.replace("batch_size: 2", "batch_size: lots"), ":3: batch_size:"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path, edit, message):
    cfg = make_run_files(tmp_path, edit(CONFIG))
    r = cai("run", cfg, "--out", tmp_path / "out")
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_bad_shard_and_limit(tmp_path):
    cfg = make_run_files(tmp_path)
    assert cai("run", cfg, "--out", tmp_path / "o", "--shard", "3/2").returncode == 2
    assert cai("run", cfg, "--out", tmp_path / "o", "--limit", "0").returncode == 2


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, default_model_dir):
    base = tmp_path_factory.mktemp("reference")
    cfg = make_run_files(base)
    r = cai("run", cfg, "--out", base / "run")
    assert r.returncode == 0, r.stderr
    return base / "run"


@pytest.mark.slow
def test_sigkill_then_rerun_equals_uninterrupted(reference_run, tmp_path):
    cfg = make_run_files(tmp_path, CONFIG + "write_every: 1\n")  # a write per record: the kill lands mid-stage
    run = tmp_path / "run"
    proc = cai("run", cfg, "--out", run, wait=False)
    deadline = time.time() + 600
    while time.time() < deadline and len(records(run, "revisions")) < 2:  # partway: mid-revisions
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = {s: len(records(run, s)) for s in ("queries", "responses", "revisions", "comparisons")}
    assert 0 < partial["revisions"] < len(records(reference_run, "revisions")), partial
    r = cai("run", cfg, "--out", run)
    assert r.returncode == 0, r.stderr
    for stage in ("queries", "responses", "revisions", "comparisons"):
        got = [x["id"] for x in records(run, stage)]
        want = [x["id"] for x in records(reference_run, stage)]
        assert len(got) == len(set(got)), f"{stage}: duplicates after resume"
        assert sorted(got) == sorted(want), stage
    # the deterministic stages reproduce the same text too
    assert sorted((x["id"], x["messages"][-1]["content"]) for x in records(run, "queries")) == sorted(
        (x["id"], x["messages"][-1]["content"]) for x in records(reference_run, "queries")
    )
    # a third run finds nothing to do and writes nothing
    before = {s: (run / f"{s}.jsonl").read_bytes() for s in ("queries", "responses", "revisions", "comparisons")}
    assert cai("run", cfg, "--out", run).returncode == 0
    assert before == {s: (run / f"{s}.jsonl").read_bytes() for s in before}


@pytest.mark.slow
def test_a_rerun_with_nothing_left_plans_from_ids_and_reads_no_text(reference_run, tmp_path):
    """Planning needs ids; texts are read for tasks that run. On a finished run, every stage is
    planned again, finds nothing to do, and no stage file is opened to read an answer back."""
    from rich.console import Console

    from cai.config import load_config
    from cai.pipeline import Pipeline

    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    before = {p.name: p.read_bytes() for p in run.glob("*.jsonl")}
    pipe = Pipeline(load_config(make_run_files(tmp_path)), run, console=Console(file=io.StringIO()))
    try:
        stats = pipe.run()
        assert [s.stage for s in stats] == ["queries", "responses", "revisions", "comparisons"]
        assert all(s.new == 0 for s in stats) and all(s.records for s in stats)
        assert pipe.refs.files and not any(f.opened for f in pipe.refs.files)  # never read from
    finally:
        pipe.close()
    assert before == {p.name: p.read_bytes() for p in run.glob("*.jsonl")}


@pytest.mark.slow
def test_principle_ids_are_carried_everywhere(reference_run):
    known = {"kind", "honest"}
    generated = [q for q in records(reference_run, "queries") if q["origin"] == "generated"]
    assert generated and all(set(q["principle_ids"]) <= known and q["principle_ids"] for q in generated)
    for v in records(reference_run, "revisions"):
        assert v["principle_ids"] and set(v["principle_ids"]) <= known
        assert [r["principle_id"] for r in v["rounds"]] == v["principle_ids"]
    comps = records(reference_run, "comparisons")
    assert comps
    for c in comps:
        assert c["principle_ids"] and set(c["principle_ids"]) <= known
        assert {j["principle_id"] for j in c["judgements"]} == set(c["principle_ids"])
        assert len(c["judgements"]) == 2 * len(c["principle_ids"])
        assert 0.5 <= c["p_chosen"] <= 1
    manifest = json.loads((reference_run / "manifest.json").read_text())
    assert manifest["stages"]["responses"]["records"] == len(records(reference_run, "responses"))


@pytest.mark.slow
def test_exports_load_with_datasets_and_train_with_trl(reference_run, tmp_path, default_model_dir):
    from datasets import load_dataset

    exported = reference_run / "datasets"
    prefs = load_dataset(str(exported), "prefs")
    sft = load_dataset(str(exported), "sft")
    row = prefs["train"][0]
    assert row["prompt"][-1]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
    assert 0.5 <= row["p_chosen"] <= 1 and row["principle_ids"]
    assert sft["train"][0]["messages"][-1]["role"] == "assistant"
    from cai.training.data import load_split

    train = load_split(str(exported), "prefs", "train")

    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer

    tok = AutoTokenizer.from_pretrained(default_model_dir)
    common = dict(
        max_steps=1, per_device_train_batch_size=2, report_to=[], save_strategy="no", logging_steps=1, use_cpu=True
    )
    rm = AutoModelForSequenceClassification.from_pretrained(default_model_dir, num_labels=1)
    rm.config.pad_token_id = tok.pad_token_id
    r = RewardTrainer(
        model=rm,
        args=RewardConfig(output_dir=str(tmp_path / "rm"), **common),
        train_dataset=train,
        processing_class=tok,
    )
    assert r.train().training_loss > 0
    policy = AutoModelForCausalLM.from_pretrained(default_model_dir)
    d = DPOTrainer(
        model=policy,
        args=DPOConfig(output_dir=str(tmp_path / "dpo"), **common),
        train_dataset=train,
        processing_class=tok,
    )
    assert d.train().training_loss > 0


@pytest.mark.slow
def test_two_shards_add_up_to_the_whole_run(reference_run, tmp_path):
    """Two workers of one config: their files partition the run; export and report read both."""
    cfg = make_run_files(tmp_path)
    run = tmp_path / "run"
    for i in (0, 1):
        r = cai("run", cfg, "--out", run, "--shard", f"{i}/2")
        assert r.returncode == 0, r.stderr
    names = ("queries", "responses", "revisions", "comparisons")
    shard_records = {s: [x for i in (0, 1) for x in records(run, f"{s}.shard-{i}-of-2")] for s in names}
    for stage in ("queries", "responses", "revisions"):  # ids hash inputs: the same as one worker's
        assert sorted(x["id"] for x in shard_records[stage]) == sorted(x["id"] for x in records(reference_run, stage))
    # which pairs exist depends on sampled texts (identical answers are not ranked), so compare shards with shards
    ids = [x["id"] for x in shard_records["comparisons"]]
    assert ids and len(ids) == len(set(ids))
    assert cai("export", run).returncode == 0
    from datasets import load_dataset

    kept = {q["id"] for q in shard_records["queries"] if q["dropped"] is None}
    prompts = load_dataset(str(run / "datasets"), "prompts")
    assert sorted(q for split in prompts.values() for q in split["query_id"]) == sorted(kept)
    prefs = load_dataset(str(run / "datasets"), "prefs")
    assert sum(len(v) for v in prefs.values()) == sum(c["query_id"] in kept for c in shard_records["comparisons"])
    # every shard's stage records and errors are in the report
    with open(run / "errors.shard-1-of-2.jsonl", "a") as f:
        f.write(json.dumps({"stage": "responses", "task_id": "x", "error": "server said 503"}) + "\n")
    from cai.report import build_context

    ctx = build_context(run)
    stages = {s["name"]: s for s in ctx["stages"]}
    assert stages["comparisons"]["records"] == len(ids)
    assert stages["responses"]["shards"] == 2
    assert ctx["counts"]["errors"] == 1 and ctx["shards"] == 2


def test_store_streams_ids_and_repairs_a_torn_line(tmp_path):
    from cai.generators.records import Query
    from cai.store import RunStore

    store = RunStore(tmp_path)
    qs = [Query(id=f"q-{i}", messages=[{"role": "user", "content": f"hi {i}"}], origin="seed") for i in range(3)]
    store.append("queries", qs)
    with open(store.stage_path("queries"), "ab") as f:
        f.write(b'{"id":"q-9","messages":[{"ro')  # torn by a kill
    assert store.ids("queries") == {"q-0", "q-1", "q-2"}
    assert store.stage_path("queries").read_bytes().endswith(b"\n")
    assert [q.id for q in store.iter_records("queries", Query)] == ["q-0", "q-1", "q-2"]
    (tmp_path / "queries.shard-1-of-2.jsonl").write_text(qs[0].model_dump_json() + "\n")
    (tmp_path / "queries_extra.jsonl").write_text("not a stage file\n")
    assert len(store.load("queries", Query, all_shards=True)) == 3
