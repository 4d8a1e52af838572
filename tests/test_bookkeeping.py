"""The pipeline's bookkeeping on a deterministic in-process backend: seconds, not minutes.

What a rerun keeps, moves aside, takes back and runs again; what an edit costs; that the text
behind an id does not depend on how the work was batched or sharded. The backend counts every
item it is asked (`testing_utils.CALLS`), so each test says exactly how much model work was done.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from cai.cli import app
from cai.config import load_config
from cai.pipeline import Pipeline
from cai.stages import NAMES, OTHER_RECORD_FILES
from tests.testing_utils import CALLS, CONFIG, CONSTITUTION, records, setup

pytestmark = pytest.mark.fast  # the bookkeeping tier: `make test-fast`


def run(config: Path | str, out: Path, **kw) -> Pipeline:
    """One `cai run` in this process; returns the finished pipeline (its stats and plan)."""
    CALLS.clear()
    pipe = Pipeline(load_config(config), out, console=Console(file=io.StringIO()), **kw)
    try:
        pipe.start()
        pipe.run()
    finally:
        pipe.close()
    return pipe


def snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def stage_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.jsonl"))}


def texts(out: Path) -> dict[str, str]:
    """id → what a model wrote, over every stage that writes text."""
    out_ = {q["id"]: q["raw"] for q in records(out, "queries") if q["origin"] == "generated"}
    for stage in ("responses", "teacher"):
        out_ |= {r["id"]: r["text"] for r in records(out, stage)}
    out_ |= {v["id"]: json.dumps(v["rounds"]) for v in records(out, "revisions")}
    out_ |= {i["id"]: json.dumps(i["messages"]) for i in records(out, "introspection")}
    return out_


def test_every_stage_is_declared_and_a_rerun_writes_nothing(tmp_path):
    config = CONFIG + "comparisons: {principles: 2, mode: both}\nintrospection: {reflections: 1, turns: 2}\n"
    config = config.replace("queries: {per_principle: 2", "queries: {turns: 2, per_principle: 2")
    cfg = setup(tmp_path, config.replace("comparisons: {principles: 2}\n", ""))
    out = tmp_path / "R"
    first = run(cfg, out)
    written = {p.name.split(".")[0] for p in out.glob("*.jsonl")}
    assert written <= set(NAMES) | set(OTHER_RECORD_FILES), f"stage files the declared list does not name: {written}"
    assert set(NAMES) <= written, f"declared stages that wrote nothing: {set(NAMES) - written}"
    assert [s.stage for s in first.stats] == list(NAMES)
    before = snapshot(out)
    again = run(cfg, out)
    assert not CALLS and all(s.new == 0 for s in again.stats)
    stamped = ("manifest.json", "configs/index.json")  # times of the last run
    assert {k: v for k, v in snapshot(out).items() if k not in stamped} == {
        k: v for k, v in before.items() if k not in stamped
    }


def test_cai_generate_offers_every_stage():
    result = CliRunner().invoke(app, ["generate", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for name in NAMES:
        assert name in result.output


def test_a_ranking_constitution_named_by_another_path_writes_nothing_new(tmp_path, monkeypatch):
    cfg_dir = tmp_path / "cfg"
    rank = CONSTITUTION.replace("name: tiny", "name: rank")
    setup(
        cfg_dir,
        CONFIG.replace("comparisons: {principles: 2}", "comparisons: {principles: 2, constitution: rank.yaml}"),
        **{"rank.yaml": rank},
    )
    monkeypatch.chdir(tmp_path)
    run("cfg/run.yaml", Path("R"))
    before = snapshot(tmp_path / "R")
    monkeypatch.chdir(cfg_dir)
    again = run("run.yaml", Path("../R"))
    assert not CALLS and all(s.new == 0 for s in again.stats)
    after = snapshot(tmp_path / "R")
    assert set(after) == set(before), "no new config version, no file moved aside"
    assert stage_files(tmp_path / "R") == {k: v for k, v in before.items() if k.endswith(".jsonl")}


def test_editing_one_principle_reads_only_the_readings_under_it(tmp_path):
    cfg = setup(tmp_path)
    out = tmp_path / "R"
    run(cfg, out)
    under = [c for c in records(out, "comparisons") if "brief" in c["principle_ids"]]
    assert under, "the test needs pairs that read the edited principle"
    expected = sum(1 for c in under for j in c["judgements"] if j["principle_id"] == "brief")
    (tmp_path / "tiny.yaml").write_text(CONSTITUTION.replace("shorter and still complete", "more concise"))
    dry = run(cfg, out, dry_run=True)
    rows = {r.stage: r for r in dry.plan}
    assert all(rows[s].todo == 0 and rows[s].aside == 0 for s in ("queries", "responses", "revisions"))
    assert rows["comparisons"].todo == len(under)
    to_read, reused = rows["comparisons"].readings
    assert to_read == expected and reused == 4 * len(under) - expected
    assert not (out / "superseded").exists(), "a dry run moves nothing"
    done = run(cfg, out)
    assert {"letters": expected} == CALLS, "the rerun reads exactly the readings under the edited principle"
    stats = {s.stage: s for s in done.stats}
    assert stats["comparisons"].read == expected and stats["comparisons"].reused == reused
    kept = {c["id"] for c in records(out, "comparisons")}
    assert len(kept) == len(records(out, "comparisons")) and not kept & {c["id"] for c in under}


def test_turning_on_distillation_ranks_no_pair_again(tmp_path):
    cfg = setup(tmp_path)
    out = tmp_path / "R"
    run(cfg, out)
    ranked = {c["id"] for c in records(out, "comparisons")}
    cfg.write_text(CONFIG.replace("comparisons: {principles: 2}", "comparisons: {principles: 2, mode: both}"))
    run(cfg, out)
    assert CALLS["letters"] == 0 and CALLS["generate"] > 0  # the teacher answered; no pair was read again
    now = records(out, "comparisons")
    assert ranked <= {c["id"] for c in now} and any(c["kind"] == "distill" for c in now)


def test_limit_and_a_lost_manifest_move_nothing_the_config_still_wants(tmp_path):
    cfg = setup(tmp_path)
    out = tmp_path / "R"
    run(cfg, out)
    files = stage_files(out)
    (out / "manifest.json").unlink()
    run(cfg, out, limit=2)
    assert not CALLS and stage_files(out) == files and not (out / "superseded").exists()
    cfg.write_text(CONFIG.replace("comparisons: {principles: 2}", "comparisons: {principles: 1}"))
    limited = run(cfg, out, limit=2)
    assert {s.stage: s.new for s in limited.stats}["queries"] == 0
    for stage in ("queries", "responses", "revisions"):
        assert (out / f"{stage}.jsonl").read_bytes() == files[f"{stage}.jsonl"], f"{stage} is untouched"
        assert not (out / "superseded" / "v001" / f"{stage}.jsonl").exists()
    full = run(cfg, out)
    assert CALLS["generate"] == 0 and {s.stage: s.new for s in full.stats}["responses"] == 0
    assert CALLS["letters"] == 0, "one principle of the two each pair read: every reading comes back from the run"


def test_the_text_behind_an_id_does_not_depend_on_batching_shards_or_resume(tmp_path):
    base = setup(tmp_path / "a")
    run(base, tmp_path / "a" / "R")
    want = texts(tmp_path / "a" / "R")
    setup(tmp_path / "b", CONFIG.replace("batch_size: 4", "batch_size: 1"))
    run(tmp_path / "b" / "run.yaml", tmp_path / "b" / "R")
    assert texts(tmp_path / "b" / "R") == want
    shards = tmp_path / "a" / "S"
    for i in range(2):
        run(base, shards, shard=(i, 2))
    got: dict[str, str] = {}
    for path in shards.glob("responses.shard-*.jsonl"):
        got |= {r["id"]: r["text"] for r in map(json.loads, path.read_text().splitlines())}
    assert got == {r["id"]: r["text"] for r in records(tmp_path / "a" / "R", "responses")}
    resumed = tmp_path / "a" / "K"
    run(base, resumed, limit=2)
    lines = (resumed / "responses.jsonl").read_text().splitlines(keepends=True)
    (resumed / "responses.jsonl").write_text("".join(lines[:-2]) + lines[-2][:30])  # a kill tore a line
    run(base, resumed)
    assert texts(resumed) == want


def test_failed_items_are_recorded_and_retried_as_their_kind_says(tmp_path):
    cfg = setup(
        tmp_path,
        CONFIG.replace("policy: {backend: scripted}", "policy: {backend: scripted, options: {fail: grieving}}"),
    )
    out = tmp_path / "R"
    first = run(cfg, out)
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert errors and all(e["kind"] == "permanent" for e in errors)
    assert {s.stage: s.errors for s in first.stats}["responses"] == 1
    run(cfg, out)
    assert CALLS["generate"] == 0, "a permanent failure is not retried"
    run(cfg, out, retry_failed=True)
    assert CALLS["generate"] == 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["responses"]["errors"] == 1 and manifest["stages"]["responses"]["state"] == "done"


def test_a_dry_run_plans_without_writing(tmp_path):
    cfg = setup(tmp_path)
    out = tmp_path / "R"
    dry = run(cfg, out, dry_run=True)
    assert not out.exists() and not CALLS
    assert [r.stage for r in dry.plan] == ["queries", "responses", "revisions", "comparisons"]
    assert dry.plan[0].todo == 3 + 2 * 2 + 2 and dry.plan[1].after_upstream  # seeds, two principles, a trait
    run(cfg, out)
    shutil.copy(cfg, tmp_path / "copy.yaml")
    assert all(r.todo == 0 for r in run(tmp_path / "copy.yaml", out, dry_run=True).plan)


@pytest.mark.parametrize("k", [1, 3])
def test_more_principles_per_pair_reads_only_the_new_ones(tmp_path, k):
    cfg = setup(tmp_path)
    out = tmp_path / "R"
    run(cfg, out)
    # a trait's query is ranked on that trait alone; the others on all three principles
    wider = sum(len(c["principle_ids"]) == 2 for c in records(out, "comparisons"))
    cfg.write_text(CONFIG.replace("comparisons: {principles: 2}", f"comparisons: {{principles: {k}}}"))
    run(cfg, out)
    assert CALLS["letters"] == (0 if k == 1 else 2 * wider)  # the draw of k+1 holds the draw of k


def test_a_run_from_before_stage_identities_says_so_once_and_keeps_what_the_new_ids_want(tmp_path):
    cfg = setup(tmp_path)
    out = tmp_path / "R"
    run(cfg, out)
    files = stage_files(out)
    index = json.loads((out / "configs" / "index.json").read_text())
    for entry in index:  # what a run of the earlier cai kept: no identities, no digest
        for key in ("identities", "digest", "models"):
            entry.pop(key, None)
    (out / "configs" / "index.json").write_text(json.dumps(index))
    manifest = json.loads((out / "manifest.json").read_text())
    for s in manifest["stages"].values():
        s.pop("identity")
    (out / "manifest.json").write_text(json.dumps(manifest))
    again = run(cfg, out)
    assert again.change.legacy and again.change.version == 2
    assert not CALLS and stage_files(out) == files, "every record the new ids want is kept"
    assert not run(cfg, out).change.legacy, "said once"


def test_conversations_of_three_turns_export_rows_a_chat_template_takes(tmp_path, default_model_dir):
    from datasets import load_dataset
    from transformers import AutoTokenizer

    cfg = setup(tmp_path, CONFIG.replace("queries: {per_principle: 2", "queries: {turns: 3, per_principle: 2"))
    out = tmp_path / "R"
    first = run(cfg, out)
    turns = records(out, "turns")
    finals = [t for t in turns if t["turn"] == 3 and t["dropped"] is None]
    assert finals and {s.stage for s in first.stats} >= {"turns", "responses"}
    answered = {r["query_id"] for r in records(out, "responses")}
    assert answered == {t["id"] for t in finals}, "the answers answer the last turn"
    from cai.export import export_run

    export_run(out)
    rows = load_dataset(str(out / "datasets"), "prefs", split="train")
    tok = AutoTokenizer.from_pretrained(default_model_dir)
    for row in rows:
        users = [m for m in row["prompt"] if m["role"] == "user"]
        assert len(users) == 3 and row["prompt"][-1]["role"] == "user"
        text = tok.apply_chat_template(row["prompt"] + row["chosen"], tokenize=False)
        assert users[0]["content"] in text and row["chosen"][0]["content"] in text
    # a conversation killed at its second turn resumes there: drop the third turns and rerun
    kept = [t for t in turns if t["turn"] == 2]
    (out / "turns.jsonl").write_text("".join(json.dumps(t) + "\n" for t in kept))
    again = run(cfg, out)
    assert {t["id"] for t in records(out, "turns")} == {t["id"] for t in turns}
    made = {s.stage: s.new for s in again.stats}
    assert made["turns"] == len([t for t in turns if t["turn"] == 3]) and made["responses"] == 0


def test_a_teacher_system_prompt_patch_is_what_the_teacher_is_told_and_shapes_only_its_answers(tmp_path):
    from tests.testing_utils import SEEN

    base = CONFIG.replace("comparisons: {principles: 2}", "comparisons: {principles: 2, mode: distill}")
    cfg = setup(tmp_path, base, **{"patch.txt": "Never open a reply with the word Certainly.\n"})
    out = tmp_path / "R"
    run(cfg, out)
    told = [t for t in records(out, "teacher")]
    assert told and all(t["system_prompt_id"].startswith("constitution:") for t in told)
    responses = records(out, "responses")
    cfg.write_text(base + "teacher: {backend: scripted, system_prompt_file: patch.txt}\n")
    SEEN.clear()
    run(cfg, out)
    patched = records(out, "teacher")
    assert all(t["system_prompt_id"].startswith("prompt:") for t in patched)
    assert not {t["id"] for t in patched} & {t["id"] for t in told}, "the teacher's answers are made again"
    assert records(out, "responses") == responses and CALLS["generate"] == len(patched)
    systems = {c[0]["content"] for c in SEEN if c[0]["role"] == "system"}
    assert systems == {"Never open a reply with the word Certainly."}
    pairs = [c for c in records(out, "comparisons") if c["kind"] == "distill"]
    assert pairs and {c["chosen_id"] for c in pairs} <= {t["id"] for t in patched}
