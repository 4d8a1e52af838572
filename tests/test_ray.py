"""Runs on a Ray cluster: the records of a local run, and resume through a worker's or the driver's death.

Every test runs a real local Ray cluster on this machine, with the embedded model in two actors of
one CPU each. The local reference run uses one thread too, so both sides compute the same numbers
and write the same texts; ids would match anyway, since they hash inputs only. A worker dies for
real: `ray.kill`, or a process that exits under a batch.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, fields

import pytest

from cai.executors import ExecutorConfig, StageCall
from tests.approx import approx_floats
from tests.cli import cai
from tests.test_pipeline import CONSTITUTION, SEEDS
from tests.testing_utils import records

ray = pytest.importorskip("ray")

STAGES = ("queries", "responses", "comparisons")
CONFIG = """\
constitution: tiny.yaml
seed: 5
batch_size: 1
write_every: 1
queries: {per_principle: 1, seed_file: seeds.txt, max_new_tokens: 16}
responses: {samples: 2, max_new_tokens: 12, temperature: 1.0}
revisions: {rounds: 0}
comparisons: {principles: 1}
export: {test_fraction: 0.3}
executor: {replicas: 2}
"""
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # what Ray gives an actor of one CPU


def make_files(tmp_path):
    (tmp_path / "tiny.yaml").write_text(CONSTITUTION)
    (tmp_path / "seeds.txt").write_text(SEEDS)
    (tmp_path / "run.yaml").write_text(CONFIG)
    return tmp_path / "run.yaml"


def ids(run, stage):
    got = [x["id"] for x in records(run, stage)]
    assert len(got) == len(set(got)), f"{stage}: duplicates"
    return sorted(got)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    base = tmp_path_factory.mktemp("local")
    r = cai("run", make_files(base), "--out", base / "run", env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    assert records(base / "run", "comparisons")
    return base / "run"


def _end_session(sid: int) -> None:
    """SIGKILL what is left of a process session the test started (a killed driver's Ray agents)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[3]) == sid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry), signal.SIGKILL)


def test_default_path_imports_no_ray_and_a_missing_ray_names_the_extra(tmp_path):
    code = "import sys, cai.cli, cai.pipeline, cai.executors; assert 'ray' not in sys.modules, 'ray imported'"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
    cfg = make_files(tmp_path)
    block = "import sys; sys.modules['ray'] = None; from cai.cli import main; main()"
    argv = ["cai", "run", str(cfg), "--out", str(tmp_path / "run"), "--ray"]
    r = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.argv = {argv!r}; {block}"], capture_output=True, text=True
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == ["--ray: Ray is not installed here; install it with pip install 'cai[ray]'"]


def test_a_bad_executor_or_address_is_one_line(tmp_path):
    cfg = make_files(tmp_path)
    cfg.write_text(CONFIG.replace("executor: {replicas: 2}", "executor: {kind: slurm}"))
    r = cai("run", cfg, "--out", tmp_path / "a")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "executor.kind" in r.stderr, r.stderr
    cfg.write_text(CONFIG)
    r = cai("run", cfg, "--out", tmp_path / "b", "--ray", "127.0.0.1:9")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("--ray 127.0.0.1:9: no Ray cluster there"), r.stderr


@pytest.mark.slow
def test_a_run_on_ray_writes_what_a_local_run_writes(reference, tmp_path):
    run = tmp_path / "run"
    r = cai("run", make_files(tmp_path), "--out", run, "--ray")
    assert r.returncode == 0, r.stderr
    for stage in STAGES:
        # same ids, texts and order; log-probs to float32 noise (the batches differ)
        assert records(run, stage) == approx_floats(records(reference, stage)), stage
    assert (run / "datasets" / "README.md").is_file()
    # cai's own lines on the terminal; Ray's notices and its workers' output in cai.log
    assert "ray: a new local Ray cluster" in r.stdout and "2 replica(s) of transformers:default" in r.stdout
    assert "run summary" in r.stdout
    assert not [line for line in r.stdout.splitlines() if "(raylet)" in line or " INFO " in line or "pid=" in line]
    assert r.stderr.strip() == ""
    assert "ray" in (run / "cai.log").read_text().lower()
    # the frozen config is the file's: `--ray` says where to run, not what to make
    assert "kind: ray" not in (run / "config.yaml").read_text()


@pytest.mark.slow
def test_kill_9_of_the_driver_then_rerun_resumes(reference, tmp_path):
    cfg, run = make_files(tmp_path), tmp_path / "run"
    proc = cai("run", cfg, "--out", run, "--ray", wait=False)
    deadline = time.time() + 600
    while time.time() < deadline and len(records(run, "responses")) < 4:  # partway through the answers
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local cluster it started
    proc.wait()
    _end_session(proc.pid)
    partial = len(records(run, "responses"))
    assert 0 < partial < len(records(reference, "responses"))
    r = cai("run", cfg, "--out", run, "--ray")
    assert r.returncode == 0, r.stderr
    for stage in STAGES:
        assert ids(run, stage) == ids(reference, stage), stage
    assert not (run / "errors.jsonl").exists()


# -- a worker's death, in this process's own cluster -----------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def pipeline(tmp_path, executor_type=None, **extra):
    from rich.console import Console

    from cai.config import load_config
    from cai.pipeline import Pipeline
    from cai.ray_executor import RayExecutor

    cfg = load_config(make_files(tmp_path))
    out = io.StringIO()
    console = Console(file=out, width=200)
    executor = (executor_type or RayExecutor)(ExecutorConfig(kind="ray", replicas=2), console, **extra)
    return Pipeline(cfg, tmp_path / "run", console=console, executor=executor), out


def replicas() -> list[str]:
    return [n for n in ray.util.list_named_actors() if n.startswith("cai-replica-")]


@pytest.mark.slow
def test_a_replica_killed_mid_stage_loses_only_its_batch(cluster, reference, tmp_path):
    pipe, out = pipeline(tmp_path)
    run = tmp_path / "run"
    killed: list[str] = []

    def kill_one_when_answers_start() -> None:
        while not records(run, "responses"):
            time.sleep(0.05)
        name = replicas()[0]  # both are busy: four answer batches are still to go
        ray.kill(ray.get_actor(name))
        killed.append(name)

    threading.Thread(target=kill_one_when_answers_start, daemon=True).start()
    try:
        pipe.start()
        pipe.run()
    finally:
        pipe.close()
    log = out.getvalue()
    assert killed and f"replica {killed[0]} was lost running a batch" in log, log
    assert "retrying it elsewhere" in log and "in its place" in log, log
    for stage in STAGES:
        assert ids(run, stage) == ids(reference, stage), stage
    assert not (run / "errors.jsonl").exists()


@dataclass(frozen=True)
class KillsItsWorker(StageCall):
    """A stage call whose worker process dies whenever its batch holds the poisoned task."""

    poison: str = ""

    def __call__(self, backend, tasks):
        if any(t.id == self.poison for t in tasks):
            os._exit(1)
        return super().__call__(backend, tasks)


def poisoned_executor():
    from cai.ray_executor import RayExecutor

    class Poisoned(RayExecutor):
        def __init__(self, cfg, console, poison):
            super().__init__(cfg, console)
            self.poison = poison

        def map(self, call, batches):
            same = {f.name: getattr(call, f.name) for f in fields(StageCall)}
            return super().map(KillsItsWorker(**same, poison=self.poison), batches)

    return Poisoned


@pytest.mark.slow
def test_a_batch_that_kills_every_worker_is_recorded_once_and_the_run_goes_on(cluster, reference, tmp_path):
    answers = records(reference, "responses")
    victim = sorted({r["query_id"] for r in answers})[1]
    poison = next(r["id"] for r in answers if r["query_id"] == victim and r["sample_index"] == 0)  # its task id
    pipe, out = pipeline(tmp_path, poisoned_executor(), poison=poison)
    run = tmp_path / "run"
    try:
        pipe.start()
        pipe.run()
    finally:
        pipe.close()
    errors = [json.loads(line) for line in (run / "errors.jsonl").read_text().splitlines()]
    assert [(e["stage"], e["task_id"], e["kind"]) for e in errors] == [("responses", poison, "permanent")]
    assert "3 workers died running this batch" in errors[0]["error"]
    assert ids(run, "queries") == ids(reference, "queries")
    assert ids(run, "responses") == sorted(r["id"] for r in answers if r["query_id"] != victim)
    pairs = records(reference, "comparisons")
    assert ids(run, "comparisons") == sorted(c["id"] for c in pairs if c["query_id"] != victim)
    assert "recorded as failed" in out.getvalue()
