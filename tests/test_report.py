"""`cai report`: a self-contained HTML page of a run, checked by opening it in headless Chromium.

The run directory is written here from the record models (no model runs), so the test is fast.
"""

import json
import subprocess
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cai.cli import app
from cai.critique.records import Comparison, Judgement, Revision, Round
from cai.generators.records import Query, Response
from tests.testing_utils import CHROMIUM, require_chromium

SECTIONS = ["summary", "stages", "labels", "samples", "training", "evals"]


def _jsonl(path: Path, records) -> None:
    path.write_text("".join(r.model_dump_json() + "\n" for r in records))


@pytest.fixture
def run_dir(tmp_path) -> Path:
    d = tmp_path / "run"
    d.mkdir()
    (d / "config.yaml").write_text(
        "constitution: harmless\nseed: 0\npolicy:\n  backend: transformers\n  model: default\n"
    )
    (d / "constitution.yaml").write_text(
        "name: harmless\nprinciples:\n  - id: kind\n    comparison: Which is kinder?\n"
        "  - id: safe\n    comparison: Which is safer?\n"
    )
    stages = {
        "queries": {"records": 2, "tokens": 40, "seconds": 2.0, "errors": 0},
        "responses": {"records": 4, "tokens": 400, "seconds": 8.0, "errors": 0},
        "revisions": {"records": 2, "tokens": 300, "seconds": 10.0, "errors": 1},
        "comparisons": {"records": 2, "tokens": 0, "seconds": 3.0, "errors": 0},
    }
    (d / "manifest.json").write_text(json.dumps({"created": "2026-01-01T00:00:00", "stages": stages}))
    qs = [
        Query(id=f"q{i}", messages=[{"role": "user", "content": f"How do I do thing {i}?"}], origin="seed")
        for i in range(2)
    ]
    rs = [
        Response(
            id=f"r{i}{j}",
            query_id=f"q{i}",
            sample_index=j,
            text=f"Answer {j} to {i} <script>alert(1)</script>",
            model="m",
            tokens=9,
            finish_reason="stop",
        )
        for i in range(2)
        for j in range(2)
    ]
    rounds = [
        Round(
            principle_id="kind",
            critique="Too terse & cold.",
            revision="A kinder answer.",
            critique_raw="",
            revision_raw="",
        )
    ]
    rvs = [
        Revision(
            id=f"v{i}",
            response_id=f"r{i}0",
            query_id=f"q{i}",
            initial=rs[2 * i].text,
            rounds=rounds,
            final="A kinder answer.",
            principle_ids=["kind"],
        )
        for i in range(2)
    ]
    cs = []
    for i, p in enumerate((0.8, 0.3)):
        js = [
            Judgement(principle_id=pid, order=o, logp={"A": -0.5, "B": -1.0}, p_first=p if o == "ab" else p + 0.05)
            for pid in ("kind", "safe")
            for o in ("ab", "ba")
        ]
        first, second = f"r{i}0", f"r{i}1"
        chosen, rejected = (first, second) if p >= 0.5 else (second, first)
        cs.append(
            Comparison(
                id=f"c{i}",
                query_id=f"q{i}",
                first_id=first,
                second_id=second,
                kind="samples",
                method="logprob",
                principle_ids=["kind", "safe"],
                judgements=js,
                p_first=p,
                chosen_id=chosen,
                rejected_id=rejected,
                p_chosen=max(p, 1 - p),
                order_consistent=True,
            )
        )
    _jsonl(d / "queries.jsonl", qs)
    _jsonl(d / "responses.jsonl", rs)
    _jsonl(d / "revisions.jsonl", rvs)
    _jsonl(d / "comparisons.jsonl", cs)
    (d / "errors.jsonl").write_text(json.dumps({"stage": "revisions", "task_id": "t", "error": "too long"}) + "\n")
    (d / "reward-model").mkdir()
    (d / "reward-model" / "summary.json").write_text(
        json.dumps(
            {
                "kind": "reward",
                "steps": 3,
                "train_loss": 0.6,
                "log": [{"loss": 0.7, "step": 1}, {"loss": 0.6, "step": 2}, {"loss": 0.5, "step": 3}],
                "heldout": {"accuracy": 0.75, "pairs": 4},
            }
        )
    )
    (d / "rl").mkdir()
    (d / "rl" / "summary.json").write_text(
        json.dumps(
            {
                "kind": "rl",
                "steps": 3,
                "log": [{"loss": 0.1, "reward": 0.2, "step": 1}],
                "reward_curve": [0.2, 0.3, 0.35],
            }
        )
    )
    (d / "training-summary.json").write_text(json.dumps({"mean_reward_before": 0.1, "mean_reward_after": 0.2}))
    (d / "eval-labeler.json").write_text(
        json.dumps(
            {
                "kind": "labeler",
                "agreement": 0.55,
                "order_consistency": 0.4,
                "position_bias": 0.7,
                "ece": 0.05,
                "by_principle": {"kind": {"pairs": 3, "agreement": 0.6, "mean_p_chosen": 0.52}},
                "reliability": [{"bin": "0.50-0.60", "count": 3, "confidence": 0.53, "accuracy": 0.6}],
                "per_reading": [],
            }
        )
    )
    return d


def test_report_is_self_contained_and_escaped(run_dir):
    r = CliRunner().invoke(app, ["report", str(run_dir)])
    assert r.exit_code == 0, r.output
    html = (run_dir / "report.html").read_text()
    for s in SECTIONS:
        assert f'<section id="{s}">' in html
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "Too terse &amp; cold." in html
    assert html.count("data:image/png;base64,") == 3  # soft-label histogram, reward-model and RL curves
    assert "http://" not in html and "https://" not in html
    assert "eval-labeler.json" in html and "position bias" in html


def test_report_of_a_missing_run_is_a_user_error(tmp_path):
    r = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert r.exit_code != 0 and "not a run directory" in str(r.exception)


@require_chromium
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    out = tmp_path / "report.html"
    assert CliRunner().invoke(app, ["report", str(run_dir), "--out", str(out)]).exit_code == 0
    shot = tmp_path / "shot.png"
    base = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ]
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [*base, f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1200,3000", out.as_uri()],
            capture_output=True,
            timeout=120,
            check=True,
        )
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(
            [*base, f"--user-data-dir={profile}", "--dump-dom", out.as_uri()],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    for s in SECTIONS:
        assert f'id="{s}"' in dom
    assert "Run summary" in dom and "Per principle" in dom and "A kinder answer." in dom
