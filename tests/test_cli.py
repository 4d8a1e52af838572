"""The command line as a user meets it: real subprocesses, exit codes, one-line errors."""

import json
import subprocess
import sys

import pytest

from tests.cli import cai


def test_every_command_builds_its_help():
    """Each command's options parse into a help page (a bad Literal or Annotated fails here)."""
    import typer
    from typer.testing import CliRunner

    from cai.cli import app

    root = typer.main.get_command(app)
    paths = []
    for name, cmd in root.commands.items():
        subs = getattr(cmd, "commands", None)
        paths += [[name, sub] for sub in subs] if subs else [[name]]
    assert len(paths) > 15
    for path in paths:
        r = CliRunner().invoke(app, [*path, "--help"])
        assert r.exit_code == 0, (path, r.output)
        assert "Usage:" in r.output and " ".join(path) in r.output, path


def test_lint_shipped_library_passes():
    from cai.constitution import library_path

    files = [str(library_path(n)) for n in ("harmless", "hhh", "character")]
    r = cai("constitution", "lint", *files)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("ok ") == 3


def test_lint_reports_every_problem_and_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\nprinciples:\n  - id: one\n    critique: c\n    revision: r\n"
        "  - id: one\n    critique: ''\n    revision: r\n    colour: blue\n"
    )
    r = cai("constitution", "lint", str(bad))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines == [
        f"{bad}:6: principles[1].id: duplicate id 'one' (first used by principles[0])",
        f"{bad}:7: principles[1].critique: must not be empty",
        f"{bad}:9: principles[1].colour: unknown key 'colour'",
    ]
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "args, expect",
    [
        (["constitution", "lint", "missing.yaml"], "missing.yaml: file not found"),
        (["constitution", "show", "nope"], "nope: no such file, and no shipped constitution has that name"),
    ],
)
def test_user_errors_are_one_line_exit_2(args, expect, tmp_path):
    r = cai(*args, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip() == expect


def test_unknown_import_format_lists_the_choices_exit_2(tmp_path):
    r = cai("constitution", "import", "x.json", "--format", "weird", cwd=tmp_path)
    assert r.returncode == 2
    assert "'weird' is not one of 'auto', 'cai', 'cai-paper', 'cai-paper-ranking'" in " ".join(r.stderr.split())


def test_bad_yaml_one_line(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("name: x\nprinciples: [\n")
    r = cai("constitution", "lint", str(f))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith(f"{f}:") and "invalid YAML" in r.stderr


def test_show_and_import(tmp_path):
    r = cai("constitution", "show", "harmless")
    assert r.returncode == 0 and "evasive" in r.stdout
    src = tmp_path / "paper.json"
    src.write_text(json.dumps({"rude": {"prompt": ["Is it rude?"], "edit_request": "Make it polite."}}))
    out = tmp_path / "paper.yaml"
    r = cai("constitution", "import", str(src), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert cai("constitution", "lint", str(out)).returncode == 0


@pytest.mark.slow
def test_model_prepare_prints_a_checkpoint_path(default_model_dir):
    r = cai("model", "prepare")
    assert r.returncode == 0
    assert r.stdout.strip() == str(default_model_dir)


@pytest.mark.slow
def test_model_sample(default_model_dir):
    r = cai("model", "sample", "What is 2+2?", "--temperature", "0", "--max-new-tokens", "8")
    assert r.returncode == 0, r.stderr
    import re

    (tokens, reason) = re.search(r"assistant \((\d+) tokens, (\w+)\)", r.stdout).groups()
    assert 1 <= int(tokens) <= 8 and reason in ("stop", "length")


def test_packages_live_under_the_cai_namespace(tmp_path):
    """No generic top-level modules: a user's own `training.py` must not shadow ours, nor ours theirs."""
    for name in ("training", "generators", "critique", "constitution", "evaluation"):
        r = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=tmp_path, capture_output=True, text=True)
        assert r.returncode != 0, f"`import {name}` should fail outside the cai namespace"
        r = subprocess.run([sys.executable, "-c", f"import cai.{name}"], cwd=tmp_path, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    (tmp_path / "training.py").write_text("raise SystemExit('the user module was imported')\n")
    (tmp_path / "generators").mkdir()
    (tmp_path / "generators" / "__init__.py").write_text("raise SystemExit('the user package was imported')\n")
    r = cai("constitution", "list", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "harmless" in r.stdout


def test_namespace_holds_from_a_folder_with_generic_module_names(tmp_path):
    """Only `cai` is installed at the top: a user's own training.py or generators/ cannot shadow ours."""
    (tmp_path / "training.py").write_text("raise SystemExit('user training.py was imported')\n")
    (tmp_path / "generators").mkdir()
    (tmp_path / "generators" / "__init__.py").write_text("raise SystemExit('user generators/ was imported')\n")
    r = cai("constitution", "list", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "harmless" in r.stdout
    probe = (
        "import importlib.util as u; print([u.find_spec(m) is None for m in ('training', 'critique', 'evaluation')])"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd="/")
    assert r.stdout.strip() == "[True, True, True]", r.stdout + r.stderr
    import importlib

    assert all(importlib.import_module(f"cai.{m}") for m in ("training", "critique", "evaluation", "generators"))
