"""Export and planning at scale: a synthetic run of up to a million pairs, no model needed.

Builds a run directory whose records carry the ids the real planners give (seed queries, four
answers each, all six pairs ranked under two principles in both orders, answers of realistic
length), then measures in fresh subprocesses, side by side:

- `cai export` (streamed: records read line by line, answers looked up by byte offset), in
  JSONL and in Parquet shards;
- the previous export's approach (every stage loaded as a list of records, answers in a dict),
  kept here as the baseline;
- the pipeline's planning pass: a rerun of the same config with nothing left to do.

Prints wall seconds, records/s and peak RSS of each. It asserts nothing about time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = [
    "the",
    "a",
    "answer",
    "safe",
    "help",
    "people",
    "should",
    "could",
    "would",
    "because",
    "question",
    "about",
    "time",
    "water",
    "plan",
    "doctor",
    "friend",
    "money",
    "work",
    "home",
    "careful",
    "advice",
    "think",
    "simple",
    "step",
    "first",
    "then",
    "also",
    "never",
    "always",
    "risk",
    "legal",
    "kind",
    "honest",
    "clear",
    "example",
    "better",
    "worse",
    "reason",
    "explain",
    "consider",
    "option",
]

CONFIG = """\
constitution: harmless
seed: 0
batch_size: 64
queries: {{per_principle: 0, seed_file: {seeds}}}
responses: {{samples: 4, max_new_tokens: 256}}
revisions: {{rounds: 0}}
comparisons: {{principles: 2, pairs: all}}
export: {{format: {fmt}}}
"""

BASELINE = """
import json, sys, time
from pathlib import Path
from cai.store import RunStore
from cai.generators.records import Query, Response
from cai.critique.records import Comparison, Revision
from cai.training.export import ExportConfig, is_test
root = Path(sys.argv[1]); out = Path(sys.argv[2]); out.mkdir(parents=True, exist_ok=True)
store = RunStore(root)
queries = store.load("queries", Query, all_shards=True)
responses = store.load("responses", Response, all_shards=True)
revisions = store.load("revisions", Revision, all_shards=True)
comparisons = store.load("comparisons", Comparison, all_shards=True)
kept = {q.id: q for q in queries if q.dropped is None}
texts = {r.id: r.text for r in responses} | {v.id: v.final for v in revisions}
rows = {"train_prefs": [], "test_prefs": []}
for c in comparisons:
    q = kept[c.query_id]
    rows[("test" if is_test(q.id, 0.1) else "train") + "_prefs"].append({"prompt": q.messages,
        "chosen": [{"role": "assistant", "content": texts[c.chosen_id]}],
        "rejected": [{"role": "assistant", "content": texts[c.rejected_id]}], "p_chosen": c.p_chosen,
        "principle_ids": c.principle_ids, "kind": c.kind, "query_id": q.id})
for name, items in rows.items():
    (out / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\\n" for r in items))
"""

PLAN = """
import sys
from pathlib import Path
from rich.console import Console
from cai.config import load_config
from cai.pipeline import Pipeline
pipe = Pipeline(load_config(sys.argv[1]), Path(sys.argv[2]), console=Console(quiet=True))
stats = pipe.run()
pipe.close()
assert all(s.new == 0 for s in stats), [(s.stage, s.new) for s in stats]
"""


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def build(root: Path, pairs: int, fmt: str) -> Path:
    """A run directory with `pairs` comparisons, written with the real planners' ids."""
    from cai import history
    from cai.config import dump_config, load_config, load_constitutions
    from cai.constitution import dump_constitution
    from cai.critique import plan_comparison_tasks
    from cai.critique.rank import Candidate
    from cai.generators.queries import load_seed_queries
    from cai.generators.responses import plan_response_tasks
    from cai.store import RunStore

    rng = random.Random(0)
    n_queries = -(-pairs // 6)
    root.mkdir(parents=True)
    seeds = root.parent / f"seeds-{pairs}.txt"
    seeds.write_text("".join(f"{i}: {sentence(rng, 14)[:-1]}?\n" for i in range(n_queries)))
    cfg_path = root.parent / f"config-{pairs}-{fmt}.yaml"
    cfg_path.write_text(CONFIG.format(seeds=seeds, fmt=fmt))
    cfg = load_config(cfg_path)
    constitution, ranking = load_constitutions(cfg)
    store = RunStore(root)
    history.record(root, dump_config(cfg), dump_constitution(constitution), "0/1", {})
    model = f"{cfg.policy.backend}:{cfg.policy.model}"
    queries = load_seed_queries(cfg.queries.seed_file)
    principles = [p.id for p in ranking.principles[:2]]
    made = {"queries": 0, "responses": 0, "comparisons": 0}
    with (
        open(root / "queries.jsonl", "w") as fq,
        open(root / "responses.jsonl", "w") as fr,
        open(root / "comparisons.jsonl", "w") as fc,
    ):
        for start in range(0, len(queries), 2048):
            chunk = queries[start : start + 2048]
            fq.writelines(q.model_dump_json() + "\n" for q in chunk)
            groups = []
            for task in plan_response_tasks(chunk, cfg.responses, model, cfg.seed):
                cands = []
                for i, rid in enumerate(task.outputs):
                    text = " ".join(sentence(rng, rng.randint(8, 20)) for _ in range(rng.randint(3, 8)))
                    row = {"id": rid, "query_id": task.data.id, "sample_index": i, "text": text, "model": "m"}
                    fr.write(json.dumps({**row, "tokens": len(text) // 4, "finish_reason": "stop"}) + "\n")
                    cands.append(Candidate(id=rid, text=text))
                groups.append((task.data, cands, []))
            for t in plan_comparison_tasks(groups, ranking, cfg.comparisons, model, cfg.seed):
                p = rng.random()
                js = [
                    {"principle_id": pid, "order": o, "logp": {"A": -0.6, "B": -0.8}, "p_first": p}
                    for pid in principles
                    for o in ("ab", "ba")
                ]
                first, second = t.data.first.id, t.data.second.id
                chosen, rejected = (first, second) if p >= 0.5 else (second, first)
                rec = {
                    "id": t.id,
                    "query_id": t.data.query.id,
                    "first_id": first,
                    "second_id": second,
                    "kind": "samples",
                    "method": "logprob",
                    "principle_ids": principles,
                    "judgements": js,
                    "p_first": p,
                    "chosen_id": chosen,
                    "rejected_id": rejected,
                    "p_chosen": max(p, 1 - p),
                    "order_consistent": True,
                }
                fc.write(json.dumps(rec) + "\n")
                made["comparisons"] += 1
            made["queries"] += len(chunk)
            made["responses"] += 4 * len(chunk)
    for stage, n in made.items():
        store.update_manifest(stage, records=n, planned=n, tokens=0, seconds=0.0, errors=0, config_version=1)
    return cfg_path


def measure(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of a fresh subprocess."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="comparisons per run")
    ap.add_argument("--baseline-max", type=int, default=100_000, help="largest size the load-all baseline runs at")
    args = ap.parse_args()
    py = sys.executable
    cai = [py, "-m", "cai.cli"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            run = Path(tmp) / f"run-{n}"
            t0 = time.perf_counter()
            cfg = build(run, n, "jsonl")
            size = sum(p.stat().st_size for p in run.glob("*.jsonl")) / 2**20
            print(f"built {n} pairs ({size:.0f} MiB of stage files) in {time.perf_counter() - t0:.0f} s", flush=True)
            records = sum(m["records"] for m in json.loads((run / "manifest.json").read_text())["stages"].values())
            cases = [
                ("export jsonl (streamed)", [*cai, "export", str(run), "--to", str(Path(tmp) / "a")]),
                (
                    "export parquet (streamed)",
                    [*cai, "export", str(run), "--format", "parquet", "--to", str(Path(tmp) / "b")],
                ),
                ("planning pass (rerun, nothing to do)", [py, "-c", PLAN, str(cfg), str(run)]),
            ]
            if n <= args.baseline_max:
                cases.insert(0, ("export, load-all baseline", [py, "-c", BASELINE, str(run), str(Path(tmp) / "c")]))
            for name, cmd in cases:
                secs, rss = measure(cmd)
                rows.append((n, name, secs, records / secs, rss))
                print(f"{n:>9} {name:<40} {secs:8.1f} s {records / secs:10.0f} rec/s {rss:8.0f} MiB", flush=True)
            for d in ("a", "b", "c"):
                subprocess.run(["rm", "-rf", str(Path(tmp) / d)], check=False)
            subprocess.run(["rm", "-rf", str(run)], check=False)
    print("\npairs     case                                      seconds    records/s  peak RSS")
    for n, name, secs, rate, rss in rows:
        print(f"{n:>9} {name:<40} {secs:8.1f} {rate:12.0f} {rss:7.0f} MiB")


if __name__ == "__main__":
    main()
