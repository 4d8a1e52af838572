"""`cai demo`: the whole SL-CAI + RL-CAI data pipeline on the embedded model, in minutes on a CPU."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.panel import Panel


def run_demo(console: Console, config: Path, out: Path, limit: int | None = None) -> None:
    from cai.config import load_config
    from cai.pipeline import Pipeline, export_run, summary_table
    from constitution import library_names
    from constitution.lint import lint_file

    for name in library_names():
        c, _ = lint_file(name)
        console.print(f"[green]ok[/green] shipped constitution {name}: {len(c.principles)} principles, {len(c.traits)} traits")
    pipe = Pipeline(load_config(config), out, limit=limit, console=console)
    try:
        stats = pipe.run()
    finally:
        pipe.close()
    console.print(summary_table(stats))
    counts = export_run(out)
    show_examples(console, out)
    console.print(f"\nrun directory: {out}")
    console.print(f"datasets ({', '.join(f'{k}={v}' for k, v in counts.items())}): {out / 'datasets'}")


def _first(path: Path, keep=lambda r: True) -> dict | None:
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if keep(row):
            return row
    return None


def show_examples(console: Console, out: Path) -> None:
    queries = {json.loads(x)["id"]: json.loads(x) for x in (out / "queries.jsonl").read_text().splitlines()}
    rev = _first(out / "revisions.jsonl", lambda r: r["rounds"] and r["final"] != r["initial"])
    if rev:
        q = queries[rev["query_id"]]["messages"][-1]["content"]
        body = f"[bold]user:[/bold] {q}\n[bold]answer:[/bold] {rev['initial']}"
        for i, rd in enumerate(rev["rounds"], 1):
            body += f"\n[bold]critique {i} ({rd['principle_id']}):[/bold] {rd['critique']}\n[bold]revision {i}:[/bold] {rd['revision']}"
        console.print(Panel(body, title="a critique → revision chain"))
    comp = _first(out / "comparisons.jsonl")
    if comp:
        texts = {}
        for name in ("responses", "revisions"):
            for line in (out / f"{name}.jsonl").read_text().splitlines():
                r = json.loads(line)
                texts[r["id"]] = r.get("text", r.get("final"))
        q = queries[comp["query_id"]]["messages"][-1]["content"]
        body = (
            f"[bold]user:[/bold] {q}\n[green]chosen:[/green] {texts.get(comp['chosen_id'])}\n"
            f"[red]rejected:[/red] {texts.get(comp['rejected_id'])}\n"
            f"p_chosen = {comp['p_chosen']:.3f} over {len(comp['judgements'])} readings "
            f"(principles {', '.join(comp['principle_ids'])}, both orders)"
        )
        console.print(Panel(body, title="a ranked pair with its soft label"))
