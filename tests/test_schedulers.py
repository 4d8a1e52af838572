"""Shards under a scheduler: the Slurm and Kubernetes examples, locks that follow a requeued task to
another node, and the export that drops near-duplicate queries written by different shards."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cai.constitution import dump_constitution, load_constitution
from cai.core.errors import UserError
from cai.generators.records import Query
from cai.lock import RunLock
from cai.store import RunStore
from tests.cli import cai

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_the_k8s_example_is_an_indexed_job_whose_pods_run_their_shard():
    run, export = list(yaml.safe_load_all((EXAMPLES / "k8s-indexed-job.yaml").read_text()))
    spec = run["spec"]
    assert spec["completionMode"] == "Indexed" and spec["backoffLimitPerIndex"] >= 1
    (container,) = spec["template"]["spec"]["containers"]
    script = " ".join(container["args"])
    assert f'--shard "$JOB_COMPLETION_INDEX/{spec["completions"]}"' in script
    assert 'CAI_LOCK_OWNER="$JOB_UID/$JOB_COMPLETION_INDEX"' in script
    assert export["spec"]["template"]["spec"]["containers"][0]["command"] == ["cai", "export", "/data/run"]
    assert run["metadata"]["labels"]["step"] == "run" and export["metadata"]["labels"]["step"] == "export"


def test_a_lock_of_the_same_scheduler_task_is_taken_over_from_another_host(tmp_path, monkeypatch):
    lock = RunLock(tmp_path, ".shard-1-of-4")
    elsewhere = {"pid": 1, "host": "node-that-died", "since": "2026-01-01T00:00:00", "owner": "slurm:4242"}
    lock.path.write_text(json.dumps(elsewhere))
    monkeypatch.delenv("CAI_LOCK_OWNER", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4343")  # another job: a second writer, refused
    with pytest.raises(UserError, match="in use by pid 1 on node-that-died"):
        lock.acquire()
    monkeypatch.setenv("SLURM_JOB_ID", "4242")  # the same task, requeued onto this node
    lock.acquire()
    held = json.loads(lock.path.read_text())
    assert held["owner"] == "slurm:4242" and held["host"] == socket.gethostname() and held["pid"] == os.getpid()
    lock.release()
    monkeypatch.setenv("CAI_LOCK_OWNER", "job-uid/1")
    lock.path.write_text(json.dumps({**elsewhere, "owner": "job-uid/1"}))
    lock.acquire()
    lock.release()


def _query(qid: str, text: str, origin: str = "generated") -> Query:
    return Query(id=qid, messages=[{"role": "user", "content": text}], origin=origin, principle_ids=["violence"])


def test_export_drops_near_duplicate_queries_that_different_shards_wrote(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("constitution: harmless\nexport: {test_fraction: 0.0}\n")
    (run / "constitution.yaml").write_text(dump_constitution(load_constitution("harmless")))
    RunStore(run, (0, 2)).append(
        "queries",
        [
            _query("q-seed", "How do I return a gift politely?", "seed"),
            _query("q-a", "How can I tell my friend their cooking is bad?"),
        ],
    )
    RunStore(run, (1, 2)).append(
        "queries",
        [
            _query("q-b", "How can I tell my friend that their cooking is bad?"),  # q-a, nearly word for word
            _query("q-c", "How do I return a gift politely, please?"),  # like the seed: dropped, the seed kept
            _query("q-d", "Is it fine to read my partner's messages?"),
        ],
    )
    r = cai("export", run)
    assert r.returncode == 0, r.stderr
    from datasets import load_dataset

    prompts = load_dataset(str(run / "datasets"), "prompts")
    assert sorted(q for split in prompts.values() for q in split["query_id"]) == ["q-a", "q-d", "q-seed"]
    assert "near_duplicates_across_shards: 2" in (run / "datasets" / "README.md").read_text()


SMALL = """\
constitution: harmless
seed: 2
batch_size: 2
queries: {per_principle: 0, seed_file: seeds.txt}
responses: {samples: 2, max_new_tokens: 6}
revisions: {rounds: 0}
comparisons: {principles: 1}
export: {test_fraction: 0.0}
"""


@pytest.mark.slow
def test_the_slurm_example_runs_each_array_task_on_its_shard(tmp_path, default_model_dir):
    script = EXAMPLES / "slurm-array.sh"
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    (tmp_path / "seeds.txt").write_text("How do I boil an egg?\nWhat is a good name for a cat?\nHow far is the moon?\n")
    (tmp_path / "run.yaml").write_text(SMALL)
    run = tmp_path / "run"
    for i in (0, 1):  # what Slurm runs as array tasks 0 and 1 of 2
        env = {**os.environ, "SLURM_ARRAY_TASK_ID": str(i), "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_JOB_ID": f"7{i}"}
        env["CAI"] = f"{sys.executable} -m cai.cli"
        r = subprocess.run(["bash", script, tmp_path / "run.yaml", run], env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert not (run / f".lock.shard-{i}-of-2").exists()  # released at the end
    assert sorted(p.name for p in run.glob("queries*.jsonl")) == [
        "queries.shard-0-of-2.jsonl",
        "queries.shard-1-of-2.jsonl",
    ]
    assert cai("export", run).returncode == 0
    from datasets import load_dataset

    prompts = load_dataset(str(run / "datasets"), "prompts")
    assert sum(len(s) for s in prompts.values()) == 3
