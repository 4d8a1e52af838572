"""The text behind an id on the real embedded model (transformers, float32, CPU): the same at batch
size 16 and at batch size 1 after a kill -9 and a resume, split over two shards, and on a Ray cluster.

Each item samples from its own seed (derived from its id), drawn row by row from its own
generator, so nothing about how the work was batched, resumed, sharded or placed reaches a text.
All runs use one thread, as a Ray actor of one CPU does, so the numbers match to the last bit.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.approx import approx_floats
from tests.cli import cai
from tests.testing_utils import CONSTITUTION, records

SEEDS = "What should I say to a grieving friend?\nHow do I return a gift politely?\n"
CONFIG = """\
constitution: tiny.yaml
seed: 11
batch_size: {bs}
write_every: 1
queries: {{per_principle: 1, seed_file: seeds.txt, max_new_tokens: 16}}
responses: {{samples: 2, max_new_tokens: 10, temperature: 1.0}}
revisions: {{rounds: 1, few_shot: 0, critique_max_new_tokens: 8, revision_max_new_tokens: 10, temperature: 0.7}}
comparisons: {{principles: 1}}
executor: {{replicas: 1}}
"""
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def files(folder: Path, bs: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny.yaml").write_text(CONSTITUTION)
    (folder / "seeds.txt").write_text(SEEDS)
    (folder / "run.yaml").write_text(CONFIG.format(bs=bs))
    return folder / "run.yaml"


def texts(*runs: Path) -> dict[str, object]:
    """id → what the model wrote, over every file of every shard of the runs given."""
    out: dict[str, object] = {}
    for run in runs:
        for path in run.glob("*.jsonl"):
            stage = path.name.split(".")[0]
            for r in map(json.loads, path.read_text().splitlines()):
                if stage == "queries":
                    out[r["id"]] = r.get("raw") or r["messages"]
                elif stage == "responses":
                    out[r["id"]] = r["text"]
                elif stage == "revisions":
                    out[r["id"]] = [[x["critique_raw"], x["revision_raw"]] for x in r["rounds"]]
                elif stage == "comparisons":
                    out[r["id"]] = [j["logp"] for j in r["judgements"]]
    return out


def run(cfg: Path, out: Path, *extra: str):
    r = cai("run", cfg, "--out", out, *extra, env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    return r


@pytest.mark.slow
def test_every_id_has_one_text_however_the_work_was_done(tmp_path):
    big = files(tmp_path / "b16", 16)
    run(big, tmp_path / "b16" / "R")
    want = texts(tmp_path / "b16" / "R")
    assert len([k for k in want if k.startswith("q-")]) > len(SEEDS.splitlines())  # generated queries too

    small = files(tmp_path / "b1", 1)  # batch size 1, killed and resumed: both at once
    killed = tmp_path / "b1" / "K"
    proc = cai("run", small, "--out", killed, wait=False, env=ONE_THREAD)
    deadline = time.monotonic() + 600
    while not records(killed, "revisions") and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    run(small, killed)
    assert texts(killed) == approx_floats(want)

    shards = tmp_path / "b16" / "S"
    for i in range(2):
        run(big, shards, "--shard", f"{i}/2")
    assert texts(shards) == approx_floats(want)

    pytest.importorskip("ray")
    run(big, tmp_path / "b16" / "ray", "--ray")
    assert texts(tmp_path / "b16" / "ray") == approx_floats(want)
