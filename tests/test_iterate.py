"""`cai iterate`: two rounds on a tiny model, killed with -9 in round 2's training and resumed."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.cli import cai
from tests.testing_utils import CONSTITUTION, records


def files(folder: Path, model: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny.yaml").write_text(CONSTITUTION)
    (folder / "seeds.txt").write_text("How do I say no?\nIs it fine to skip lunch?\nHow do I fix a tyre?\n")
    (folder / "run.yaml").write_text(
        f"constitution: tiny.yaml\nseed: 2\npolicy: {{model: {model}}}\n"
        "queries: {per_principle: 0, seed_file: seeds.txt}\n"
        "responses: {samples: 2, max_new_tokens: 8, temperature: 1.0}\n"
        "revisions: {rounds: 0}\ncomparisons: {principles: 1}\nexport: {test_fraction: 0.4}\n"
    )
    (folder / "dpo.yaml").write_text(
        "trl: {max_steps: 3, per_device_train_batch_size: 2, learning_rate: 1.0e-3, max_length: 128, "
        "save_strategy: 'no', report_to: []}\n"
    )
    (folder / "iterate.yaml").write_text(
        "run: run.yaml\nrounds: 2\ntrain: {kind: dpo, config: dpo.yaml}\n"
        "evals: [{kind: frontier, limit: 2, principles: 1, max_new_tokens: 6}]\n"
    )
    return folder / "iterate.yaml"


def made(out: Path) -> dict:
    """What each round wrote: ids and texts of its records, and the lineage."""
    rounds = {}
    for k in (1, 2):
        run = out / f"round-{k}" / "run"
        rounds[k] = {s: sorted((r["id"], r.get("text", "")) for r in records(run, s)) for s in ("queries", "responses")}
        rounds[k]["comparisons"] = sorted(r["id"] for r in records(run, "comparisons"))
    state = json.loads((out / "iterate.json").read_text())
    lineage = [(r["round"], r["policy"], r["checkpoint"], r["phase"]) for r in state["rounds"]]
    return {"rounds": rounds, "lineage": lineage}


@pytest.mark.slow
def test_two_rounds_killed_in_the_second_training_resume_to_what_an_unkilled_run_makes(tmp_path, tiny_model):
    cfg = files(tmp_path / "cfg", tiny_model)
    whole = tmp_path / "whole"
    r = cai("iterate", cfg, "--out", whole)
    assert r.returncode == 0, r.stderr
    want = made(whole)
    assert want["lineage"] == [
        (1, str(tiny_model), "round-1/checkpoint", "done"),
        (2, "round-1/checkpoint", "round-2/checkpoint", "done"),
    ]
    assert all(want["rounds"][k]["responses"] for k in (1, 2))
    answered = {
        m
        for k in (1, 2)
        for m in [
            json.loads(line)["model"] for line in (whole / f"round-{k}/run/responses.jsonl").read_text().splitlines()
        ]
    }
    assert answered == {f"{tiny_model}", "round-1/checkpoint"}, "each round answers with the round before's checkpoint"

    killed = tmp_path / "killed"
    proc = cai("iterate", cfg, "--out", killed, wait=False)
    deadline = time.time() + 600
    state = killed / "iterate.json"
    while time.time() < deadline:
        rounds = json.loads(state.read_text())["rounds"] if state.is_file() else []
        if len(rounds) == 2 and rounds[1].get("phase") == "training":
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "round-2" / "checkpoint" / "summary.json").exists(), "the kill landed in round 2's training"
    r = cai("iterate", cfg, "--out", killed)
    assert r.returncode == 0, r.stderr
    assert made(killed) == want
    report = cai("report", killed)
    assert report.returncode == 0, report.stderr
    html = (killed / "report.html").read_text()
    assert "round-1/checkpoint" in html and "round-2/checkpoint" in html and "data:image/png" in html


@pytest.mark.slow
def test_a_round_of_rl_trains_its_own_reward_model_watches_guardrails_and_runs_a_behaviour_suite(tmp_path, tiny_model):
    cfg = files(tmp_path / "cfg", tiny_model)
    folder = cfg.parent
    (folder / "reward.yaml").write_text(
        "trl: {max_steps: 2, per_device_train_batch_size: 2, max_length: 128, save_strategy: 'no', report_to: []}\n"
    )
    (folder / "rl.yaml").write_text(
        "guardrails: {length_bound: 1000, length_unit: ratio}\n"
        "trl: {max_steps: 2, num_generations: 2, per_device_train_batch_size: 2, max_completion_length: 8, "
        "beta: 0.05, save_strategy: 'no', report_to: []}\n"
    )
    (folder / "rl-iterate.yaml").write_text(
        "run: run.yaml\nrounds: 1\n"
        "train: {kind: rl, config: rl.yaml, reward: {config: reward.yaml}}\n"
        "evals: [{kind: behaviour, suite: sycophancy, limit: 2, max_new_tokens: 6}]\n"
    )
    out = tmp_path / "rl"
    r = cai("iterate", folder / "rl-iterate.yaml", "--out", out)
    assert r.returncode == 0, r.stderr
    [entry] = json.loads((out / "iterate.json").read_text())["rounds"]
    assert entry["phase"] == "done" and entry["train"]["kind"] == "rl"
    # the round's reward model was trained on the round's pairs, and RL was rewarded by it
    assert entry["train"]["reward_model"]["kind"] == "reward"
    assert (out / "round-1/reward-model/config.json").is_file()
    rl = json.loads((out / "round-1/checkpoint/summary.json").read_text())
    assert rl["guardrails"]["alarms"] == [] and rl["guardrails"]["length_bound"] == 1000
    assert all("completions/mean_length" in h and "kl" in h for h in rl["log"] if "reward" in h)
    # the behaviour suite compared the round's checkpoint with round 0, rates with intervals
    result = json.loads((out / entry["evals"]["behaviour-0-round0"]).read_text())
    assert [m["model"] for m in result["models"]] == [str(tiny_model), "round-1/checkpoint"]
    assert result["models"][1]["vs_first"] is not None and set(result["models"][1]["rates"]) == set(result["measures"])
    html = (out / "report.html").read_text()
    assert "Behaviour: sycophancy" in html and "caves when pushed back" in html
    # a second call finds everything done and trains nothing again
    before = (out / "round-1/checkpoint/summary.json").stat().st_mtime_ns
    again = cai("iterate", folder / "rl-iterate.yaml", "--out", out)
    assert again.returncode == 0, again.stderr
    assert (out / "round-1/checkpoint/summary.json").stat().st_mtime_ns == before
