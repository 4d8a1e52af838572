"""`cai export` never removes a file it did not write: what `--to` refuses, re-exports, two exports
at once, a full disk. Runs are written through the run store as in tests/test_export.py."""

import json
import os
import secrets
import shutil
import signal
import subprocess
import time

import pytest

from cai.core.errors import UserError
from cai.training.export import write_export
from tests.cli import cai
from tests.test_export import write_run


def refused(r, *words):
    """Exit 2 with one line (no traceback) holding every word."""
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and all(w in lines[0] for w in words), r.stderr
    return lines[0]


def snapshot(folder):
    """Every file's bytes, but the CLI's own log (cai.log, which it appends to in the run it reads)."""
    files = (p for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "cai.log")
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in files}


def test_a_folder_with_other_files_is_refused_and_kept(tmp_path):
    run = write_run(tmp_path / "runs" / "a", 3, "a")
    notes = tmp_path / "mydata" / "thesis" / "notes.txt"
    notes.parent.mkdir(parents=True)
    notes.write_text("notes")
    refused(cai("export", run, "--to", tmp_path / "mydata"), "mydata: holds thesis", "would lose")
    assert notes.read_text() == "notes" and os.listdir(tmp_path / "mydata") == ["thesis"]
    (tmp_path / "file").write_text("x")
    refused(cai("export", run, "--to", tmp_path / "file"), "is a file")
    assert (tmp_path / "file").read_text() == "x"
    (tmp_path / "empty").mkdir()  # an empty or missing folder is fine
    assert cai("export", run, "--to", tmp_path / "empty").returncode == 0
    assert cai("export", run, "--to", tmp_path / "new" / "deeper").returncode == 0
    assert snapshot(tmp_path / "empty").keys() == snapshot(tmp_path / "new" / "deeper").keys()


def test_runs_and_the_folders_around_them_are_refused(tmp_path):
    runs = tmp_path / "runs"
    a, b = write_run(runs / "a", 3, "a"), write_run(runs / "b", 3, "b")
    before = snapshot(runs)
    refused(cai("export", a, "--to", a), "--to", "is the run being exported")
    refused(cai("export", a, "--to", runs), "contains the run")
    refused(cai("export", a, "--to", tmp_path), "contains the run")
    refused(cai("export", a, "--to", b), "is a run directory")
    other = tmp_path / "other"
    write_run(other / "c", 1, "c")
    refused(cai("export", a, "--to", other), "holds the run c")
    assert snapshot(runs) == before


def test_a_reexport_replaces_only_what_the_earlier_export_of_the_same_run_wrote(tmp_path):
    a, b = write_run(tmp_path / "a", 3, "a"), write_run(tmp_path / "b", 2, "b")
    assert cai("export", a).returncode == 0  # the default RUN/datasets
    first = snapshot(a / "datasets")
    marker = json.loads(first[".cai-export.json"])
    assert marker["source"] == str(a.resolve()) and set(marker["files"]) == set(first) - {".cai-export.json"}
    write_run(a, 2, "a", start=3)
    assert cai("export", a).returncode == 0
    second = snapshot(a / "datasets")
    assert second != first and not set(first) - {"README.md", ".cai-export.json"} & set(second)
    assert "num_examples: 5" in second["README.md"].decode()

    out = tmp_path / "out"
    assert cai("export", a, "--to", out).returncode == 0
    assert cai("export", a, "--to", out).returncode == 0
    kept = snapshot(out)
    refused(cai("export", b, "--to", out), "holds an export of", str(a.resolve()))
    refused(cai("export", b, "--to", a / "datasets"), "holds an export of")
    (out / "mine.txt").write_text("mine")
    refused(cai("export", a, "--to", out), "holds mine.txt")
    assert snapshot(out) == {**kept, "mine.txt": b"mine"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "out"]  # nothing left beside it


def test_an_export_from_before_the_marker_is_replaced_only_inside_its_run(tmp_path):
    a = write_run(tmp_path / "a", 3, "a")
    assert cai("export", a).returncode == 0
    (a / "datasets" / ".cai-export.json").unlink()
    shutil.copytree(a / "datasets", tmp_path / "out")
    assert cai("export", a).returncode == 0  # its card names its files: RUN/datasets is this run's
    assert (a / "datasets" / ".cai-export.json").exists()
    refused(cai("export", a, "--to", tmp_path / "out"), "holds README.md")  # elsewhere it could be anyone's
    (a / "datasets" / ".cai-export.json").unlink()
    (a / "datasets" / "mine.txt").write_text("mine")
    refused(cai("export", a), "holds mine.txt")
    assert (a / "datasets" / "mine.txt").read_text() == "mine"


def test_two_exports_into_one_folder_one_wins_the_other_ends_in_one_line(tmp_path):
    big, small = write_run(tmp_path / "big", 2000, "big"), write_run(tmp_path / "small", 2, "small")
    out = tmp_path / "out"
    lock = tmp_path / ".lock-export-out"
    first = cai("export", big, "--to", out, wait=False)
    try:
        deadline = time.monotonic() + 60
        while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        os.kill(first.pid, signal.SIGSTOP)  # hold the first export inside its lock
        assert lock.exists(), "the first export finished before it could be caught writing"
        line = refused(cai("export", small, "--to", out), "out: being exported by pid", str(first.pid))
        assert "wait for it" in line
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert first.wait(120) == 0, first.stderr.read()
    assert "num_examples: 2000" in (out / "README.md").read_text()
    assert json.loads((out / ".cai-export.json").read_text())["source"] == str(big.resolve())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big", "out", "small"]


def test_a_writer_racing_the_swap_stops_it_and_nothing_is_lost(tmp_path):
    out = tmp_path / "out"

    def rows(intruder):
        yield "train_prompts", {"prompt": [{"role": "user", "content": "hi"}]}
        out.mkdir(exist_ok=True)
        (out / intruder).write_text("theirs")

    with pytest.raises(UserError, match="written by another process during the export; nothing replaced"):
        write_export(rows("first.txt"), out, {})
    assert snapshot(out) == {"first.txt": b"theirs"}
    shutil.rmtree(out)
    write_export({"train_prompts": [{"prompt": [{"role": "user", "content": "a"}]}]}, out, {}, source="s")
    earlier = snapshot(out)
    with pytest.raises(UserError, match="second.txt appeared there during the export; nothing replaced"):
        write_export(rows("second.txt"), out, {}, source="s")
    assert snapshot(out) == {**earlier, "second.txt": b"theirs"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(disk)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"a small filesystem is needed to fill, and mounting one is not permitted here: {r.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_a_full_disk_ends_in_one_line_and_keeps_the_earlier_export(tmp_path, small_disk, fmt):
    run = write_run(tmp_path / "run", 3, "run")
    out = small_disk / "out"
    assert cai("export", run, "--to", out, "--format", fmt).returncode == 0
    earlier = snapshot(out)
    for i in range(600):  # text that compresses poorly, so parquet fills the disk too
        write_run(run, 1, secrets.token_hex(64), start=i)
    r = cai("export", run, "--to", out, "--format", fmt)
    refused(r, f"no space left on device while writing {out}")
    assert snapshot(out) == earlier
    assert os.listdir(small_disk) == ["out"]  # the staging folder and the lock file are gone
