"""A run, its store and its export against a hostile afternoon: keys that must stay secret, a
corrupt manifest, a full disk, an immutable stage file, cut lines, a read-only run, a run where
everything fails, SIGTERM, and a config that asks for ten million queries.

Every command runs as a user runs it (a subprocess, the scripted backend registered as a plugin
would be, or the real openai backend against a loopback server); each mistake must end in one
line naming the file, the right exit code, and nothing already written lost or duplicated.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.cli import cai
from tests.fake_openai import MODEL, FakeServer, error_answer, ok_answer
from tests.testing_utils import CONFIG, CONSTITUTION, cai_scripted, records, setup

SENTINEL = "sk-SENTINEL-3f9c2a"


def one_line(r) -> str:
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


def finished(tmp_path: Path, config: str = CONFIG) -> Path:
    cfg = setup(tmp_path, config)
    out = tmp_path / "R"
    r = cai_scripted("run", cfg, "--out", out)
    assert r.returncode == 0, r.stderr
    return out


def all_ids(out: Path) -> list[str]:
    return [r["id"] for stage in ("queries", "responses", "revisions", "comparisons") for r in records(out, stage)]


def test_an_api_key_is_written_nowhere(tmp_path):
    """Given in a run config, in the environment and as --feedback-option, echoed back by a hostile
    server in its error messages: no file of the run, the export, the report, the logs, and no
    command output holds it; rotating it keeps every record and every cached reading."""

    def script(path, body, attempt):
        text = json.dumps(body)
        if "wasp" in text:
            return error_answer(400, f"invalid request from key {SENTINEL}", kind="invalid_request_error")
        return ok_answer(path, body)

    (tmp_path / "tiny.yaml").write_text(CONSTITUTION)
    (tmp_path / "seeds.txt").write_text(
        "How do I store bread?\nHow do I get rid of a wasp nest?\nWhy is the sky blue?\n"
    )
    with FakeServer(script) as server:
        backend = {"backend": "openai", "model": MODEL, "options": {"base_url": server.base_url, "api_key": SENTINEL}}
        config = {
            "constitution": "tiny.yaml",
            "policy": backend,
            "queries": {"per_principle": 0, "seed_file": "seeds.txt"},
            "responses": {"samples": 2},
            "revisions": {"rounds": 0},
            "comparisons": {"principles": 1},
        }
        (tmp_path / "run.yaml").write_text(json.dumps(config))
        out, export = tmp_path / "R", tmp_path / "export"
        outputs = [cai("run", tmp_path / "run.yaml", "--out", out)]
        assert outputs[0].returncode == 0, outputs[0].stderr
        assert any("wasp" in json.dumps(e) or e["stage"] == "responses" for e in records(out, "errors"))
        env_key = {"OPENAI_API_KEY": SENTINEL + "-env"}
        outputs.append(cai("export", out, "--to", export, env=env_key))
        outputs.append(cai("report", out, env=env_key))
        outputs.append(cai("status", out, env=env_key))
        outputs.append(cai("status", out, "--json", env=env_key))
        pairs = tmp_path / "pairs.jsonl"
        pairs.write_text(json.dumps({"prompt": "Is it safe?", "chosen": "GOOD yes", "rejected": "no"}) + "\n")
        outputs.append(
            cai(
                "eval", "labeler", "--pairs", pairs, "--feedback-backend", "openai", "--feedback-model", MODEL,
                "--feedback-option", f"base_url={server.base_url}", "--feedback-option", f"api_key={SENTINEL}",
                "--principles", "1", "--out-json", out / "eval-labeler.json", env=env_key,
            )
        )  # fmt: skip
        assert all(r.returncode == 0 for r in outputs), [r.stderr for r in outputs]
        config["policy"]["options"]["api_key"] = SENTINEL + "-rotated"  # a new key: the same run
        (tmp_path / "run.yaml").write_text(json.dumps(config))
        again = cai("run", tmp_path / "run.yaml", "--out", out)
        assert again.returncode == 0 and "config changed" not in again.stdout, again.stdout
    for r in [*outputs, again]:
        assert SENTINEL not in r.stdout + r.stderr
    leaks = [p for p in tmp_path.rglob("*") if p.is_file() and SENTINEL.encode() in p.read_bytes()]
    assert leaks == [tmp_path / "run.yaml"], leaks


def test_a_corrupt_or_mistyped_manifest_is_one_line_in_run_status_and_report(tmp_path):
    out = finished(tmp_path)
    files = {p.name: p.read_bytes() for p in out.glob("*.jsonl")}
    for text in ("{not json", "[]", json.dumps({"stages": {"queries": {"records": "many"}}})):
        (out / "manifest.json").write_text(text)
        for r in (
            cai_scripted("run", tmp_path / "run.yaml", "--out", out),
            cai("status", out),
            cai("report", out),
        ):
            assert r.returncode == 2 and "manifest.json" in one_line(r), r.stderr
    assert {p.name: p.read_bytes() for p in out.glob("*.jsonl")} == files


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs is not permitted here")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_mid_run_is_one_line_and_a_rerun_elsewhere_loses_nothing(tmp_path, small_disk):
    reference = finished(tmp_path / "ref")
    cfg = setup(tmp_path / "cfg")
    r = cai_scripted("run", cfg, "--out", small_disk / "R")
    assert r.returncode == 2 and "no space left on device" in one_line(r), r.stderr
    moved = tmp_path / "moved"
    subprocess.run(["cp", "-a", str(small_disk / "R"), str(moved)], check=True)
    r = cai_scripted("run", cfg, "--out", moved)
    assert r.returncode == 0, r.stderr
    ids = all_ids(moved)
    assert len(ids) == len(set(ids)) and sorted(ids) == sorted(all_ids(reference))


def test_an_immutable_stage_file_is_one_line_and_nothing_is_lost(tmp_path):
    cfg = setup(tmp_path)
    out = tmp_path / "R"
    assert cai_scripted("run", cfg, "--out", out, "--limit", "2").returncode == 0
    before = (out / "responses.jsonl").read_bytes()
    if subprocess.run(["chattr", "+i", str(out / "responses.jsonl")], capture_output=True).returncode:
        pytest.skip("chattr +i is not available here")
    try:
        r = cai_scripted("run", cfg, "--out", out)
        assert r.returncode == 2 and "responses.jsonl: cannot write" in one_line(r), r.stderr
        assert not (out / ".lock").exists()
    finally:
        subprocess.run(["chattr", "-i", str(out / "responses.jsonl")], check=True)
    assert (out / "responses.jsonl").read_bytes() == before
    assert cai_scripted("run", cfg, "--out", out).returncode == 0
    ids = all_ids(out)
    assert len(ids) == len(set(ids))


def test_cut_lines_stop_an_export_with_their_place(tmp_path):
    out = finished(tmp_path)
    path = out / "responses.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:3]) + lines[3][:40] + "\n" + "".join(lines[4:]))  # cut mid-file
    r = cai("export", out, "--to", tmp_path / "e1")
    assert r.returncode == 2 and one_line(r).startswith(f"{path}:4: corrupt record"), r.stderr
    path.write_text("".join(lines[:-1]) + lines[-1][:30])  # the last line torn by a kill
    r = cai("export", out, "--to", tmp_path / "e2")
    assert r.returncode == 2 and one_line(r).startswith(f"{path}:{len(lines)}: the last line is cut"), r.stderr
    assert not (tmp_path / "e1").exists() and not (tmp_path / "e2").exists()


def test_a_read_only_run_exports_elsewhere(tmp_path):
    out = finished(tmp_path)
    (out / "cai.log").unlink(missing_ok=True)
    if subprocess.run(["chattr", "+i", str(out)], capture_output=True).returncode:
        pytest.skip("chattr +i is not available here")
    try:
        r = cai("export", out, "--to", tmp_path / "e")
    finally:
        subprocess.run(["chattr", "-i", str(out)], check=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "e" / "README.md").is_file() and not (out / "cai.log").exists()


def test_a_run_where_every_task_fails_ends_non_zero(tmp_path):
    cfg = setup(
        tmp_path, CONFIG.replace("policy: {backend: scripted}", "policy: {backend: scripted, options: {fail: user}}")
    )
    r = cai_scripted("run", cfg, "--out", tmp_path / "R")
    assert r.returncode == 1 and one_line(r).startswith("responses: every task failed"), r.stderr  # seeds need no model


def test_sigterm_releases_the_lock_and_marks_the_stage_stopped(tmp_path):
    cfg = setup(
        tmp_path, CONFIG.replace("policy: {backend: scripted}", "policy: {backend: scripted, options: {delay: 0.3}}")
    )
    out = tmp_path / "R"
    proc = cai_scripted("run", cfg, "--out", out, wait=False)
    deadline = time.monotonic() + 60
    while not (out / "responses.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and err.strip().splitlines()[-1] == "terminated", err
    assert not (out / ".lock").exists()
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert "stopped" in {s["state"] for s in stages.values()}
    assert cai_scripted("run", cfg, "--out", out).returncode == 0
    ids = all_ids(out)
    assert len(ids) == len(set(ids))


def test_ten_million_queries_with_a_limit_plan_only_what_they_take(tmp_path):
    cfg = setup(tmp_path, CONFIG.replace("queries: {per_principle: 2", "queries: {per_principle: 10000000"))
    r = cai_scripted("run", cfg, "--out", tmp_path / "R", "--limit", "2", "--dry-run", timeout=60)
    assert r.returncode == 0, r.stderr
    assert "queries" in r.stdout and not (tmp_path / "R").exists()
    assert os.path.getsize(cfg) > 0
