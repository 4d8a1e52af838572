"""Runs that survive outages, config edits and a second writer, through the real command line.

The outage tests run the openai backend against a loopback server that fails on cue (a 503 the
first time for one prompt, a context-length 400 every time for another), the way a hosted API
or an overloaded `vllm serve` does; the config-edit test runs the embedded model.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from tests.cli import cai
from tests.test_openai_faults import MODEL, FakeServer, ok_answer

SEEDS = "A normal question about bread?\nFLAKY question about tea?\nTOO LONG question about soup?\n"


def outage(path, body, attempt):
    last = body["messages"][-1]["content"] if "messages" in body else body.get("prompt", "")
    if "FLAKY" in last and attempt == 1:
        return 503, {"error": {"message": "server overloaded"}}, {}, 0.0
    if "TOO LONG" in last:
        return 400, {"error": {"message": "This model's maximum context length is 4096 tokens"}}, {}, 0.0
    return ok_answer(path, body)


def config(tmp_path, base_url: str, extra: str = "") -> str:
    (tmp_path / "seeds.txt").write_text(SEEDS)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "constitution: harmless\nbatch_size: 1\nwrite_every: 1\n"
        f"policy: {{backend: openai, model: {MODEL}, "
        f"options: {{base_url: '{base_url}', api_key: k, max_retries: 0}}}}\n"
        "queries: {per_principle: 0, seed_file: seeds.txt}\n"
        "responses: {samples: 1, max_new_tokens: 8}\n" + extra
    )
    return cfg


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def user_texts(server):
    return [b["messages"][-1]["content"] for p, b, _ in server.requests if p.endswith("/chat/completions")]


def test_transient_failures_are_retried_on_rerun_and_permanent_ones_are_not(tmp_path):
    with FakeServer(outage) as server:
        cfg, run = config(tmp_path, server.base_url), tmp_path / "run"
        for stage in ("queries", "responses"):
            r = cai("generate", stage, cfg, "--out", run)
            assert r.returncode == 0, r.stderr
        answered = {x["query_id"] for x in lines(run / "responses.jsonl")}
        assert len(answered) == 1
        errors = lines(run / "errors.jsonl")
        assert sorted((e["kind"], e["attempt"]) for e in errors) == [("permanent", 1), ("transient", 1)]
        status = json.loads(cai("status", run, "--json").stdout)
        responses = next(s for s in status if s["stage"] == "responses")
        assert (responses["done"], responses["planned"]) == (1, 3)
        assert responses["errors_by_kind"] == {"permanent": 1, "transient": 1}

        asked = len(user_texts(server))
        assert cai("generate", "responses", cfg, "--out", run).returncode == 0
        again = user_texts(server)[asked:]
        assert len(again) == 1 and "FLAKY" in again[0]  # the permanent failure was left alone
        assert len(lines(run / "responses.jsonl")) == 2
        assert len(lines(run / "errors.jsonl")) == 2  # nothing new failed
        status = json.loads(cai("status", run, "--json").stdout)
        assert next(s for s in status if s["stage"] == "responses")["errors_by_kind"] == {"permanent": 1}

        asked = len(user_texts(server))
        assert cai("generate", "responses", cfg, "--out", run, "--retry-failed").returncode == 0
        assert ["TOO LONG" in t for t in user_texts(server)[asked:]] == [True]
        assert lines(run / "errors.jsonl")[-1]["attempt"] == 2


def test_a_second_writer_is_refused_and_a_dead_ones_lock_is_taken_over(tmp_path):
    release, answered = threading.Event(), []

    def slow(path, body, attempt):
        """The first answer comes at once; the rest wait until the test lets them go."""
        if path.endswith("/chat/completions"):
            answered.append(1)
            if len(answered) > 1:
                release.wait(120)
        return ok_answer(path, body)

    with FakeServer(slow) as server:
        cfg, run = config(tmp_path, server.base_url, "revisions: {rounds: 0}\n"), tmp_path / "run"
        assert cai("generate", "queries", cfg, "--out", run).returncode == 0
        first = cai("generate", "responses", cfg, "--out", run, wait=False)
        deadline = time.time() + 60
        while time.time() < deadline and not lines(run / "responses.jsonl"):
            time.sleep(0.1)
        assert lines(run / "responses.jsonl"), "the first writer never wrote"
        progress = json.loads(cai("status", run, "--json").stdout)
        running = next(s for s in progress if s["stage"] == "responses")
        assert running["state"] == "running" and running["planned"] == 3 and 1 <= running["done"] < 3

        second = cai("generate", "responses", cfg, "--out", run)
        assert second.returncode == 2
        assert f"in use by pid {first.pid} on " in second.stderr and len(second.stderr.strip().splitlines()) == 1

        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        release.set()
        third = cai("generate", "responses", cfg, "--out", run)
        assert third.returncode == 0, third.stderr
        ids = [x["id"] for x in lines(run / "responses.jsonl")]
        assert len(ids) == 3 == len(set(ids))
        assert not (run / ".lock").exists()


SMALL = """\
constitution: tiny.yaml
seed: 1
batch_size: 4
queries: {per_principle: 0, seed_file: seeds.txt}
responses: {samples: 2, max_new_tokens: 12, temperature: 1.0}
revisions: {rounds: 1, few_shot: 0, critique_max_new_tokens: 8, revision_max_new_tokens: 12}
comparisons: {principles: PRINCIPLES}
"""

TINY = """\
name: tiny
principles:
  - id: kind
    critique: Say how the reply could be kinder.
    revision: Rewrite it kinder.
    comparison: Which reply is kinder?
  - id: honest
    critique: Say what is untrue.
    revision: Rewrite it truthfully.
    comparison: Which reply is more honest?
  - id: brief
    critique: Say what is too long.
    revision: Rewrite it shorter.
    comparison: Which reply is more concise?
"""


@pytest.mark.slow
def test_raising_comparison_principles_redoes_only_the_comparisons(tmp_path, default_model_dir):
    (tmp_path / "tiny.yaml").write_text(TINY)
    (tmp_path / "seeds.txt").write_text("How do I say no to a friend?\nIs it fine to skip breakfast?\n")
    cfg, run = tmp_path / "run.yaml", tmp_path / "run"
    cfg.write_text(SMALL.replace("PRINCIPLES", "1"))
    assert cai("run", cfg, "--out", run).returncode == 0
    stages = ("queries", "responses", "revisions", "comparisons")
    before = {s: (run / f"{s}.jsonl").read_bytes() for s in stages}
    old_pairs = lines(run / "comparisons.jsonl")
    assert old_pairs and all(len(c["principle_ids"]) == 1 for c in old_pairs)

    cfg.write_text(SMALL.replace("PRINCIPLES", "2"))
    plan = cai("run", cfg, "--out", run, "--dry-run")
    assert plan.returncode == 0, plan.stderr
    table = {
        line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
        for line in plan.stdout.splitlines()
        if line.count("│") == 7
    }
    for s in ("queries", "responses", "revisions"):
        assert table[s][3] == "0" and table[s][2] == "0", table  # nothing to do, nothing moved aside
    n = len(old_pairs)  # every pair reads one principle more; the one it read comes back from the records
    todo = f"{n} ({2 * n} letters to read, {2 * n} from earlier records)"
    assert table["comparisons"] == [str(n), "0", str(n), todo, "0"], table
    assert {s: (run / f"{s}.jsonl").read_bytes() for s in stages} == before  # a dry run writes nothing
    assert not (run / "configs" / "002.yaml").exists()

    assert cai("run", cfg, "--out", run).returncode == 0
    for s in ("queries", "responses", "revisions"):
        assert (run / f"{s}.jsonl").read_bytes() == before[s], s
    new_pairs = lines(run / "comparisons.jsonl")
    assert len(new_pairs) == len(old_pairs) and all(len(c["principle_ids"]) == 2 for c in new_pairs)
    aside = lines(run / "superseded" / "v001" / "comparisons.jsonl")
    assert sorted(c["id"] for c in aside) == sorted(c["id"] for c in old_pairs)
    index = json.loads((run / "configs" / "index.json").read_text())
    assert [(e["version"], e["first_stage"]) for e in index] == [(1, "queries"), (2, "comparisons")]
    assert "principles: 2" in (run / "configs" / "002.yaml").read_text()

    # going back to one principle brings the first pairs back instead of ranking them again
    cfg.write_text(SMALL.replace("PRINCIPLES", "1"))
    r = cai("run", cfg, "--out", run)
    assert r.returncode == 0, r.stderr
    assert sorted(c["id"] for c in lines(run / "comparisons.jsonl")) == sorted(c["id"] for c in old_pairs)
    assert "loading transformers" not in r.stdout  # no model was needed
