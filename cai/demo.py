"""`cai demo`: the whole SL-CAI + RL-CAI data pipeline on the embedded model, in minutes on a CPU."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.panel import Panel

from cai.core.errors import UserError


def run_demo(console: Console, config: Path, out: Path, limit: int | None = None, train: bool = True) -> None:
    from cai.config import load_config
    from cai.constitution import library_names
    from cai.constitution.lint import lint_file
    from cai.export import export_run
    from cai.pipeline import Pipeline
    from cai.tables import summary_table

    for name in library_names():
        c, _ = lint_file(name)
        console.print(
            f"[green]ok[/green] shipped constitution {name}: {len(c.principles)} principles, {len(c.traits)} traits"
        )
    pipe = Pipeline(load_config(config), out, limit=limit, console=console)
    try:
        stats = pipe.run()
    finally:
        pipe.close()
    console.print(summary_table(stats))
    counts = export_run(out)
    show_examples(console, out)
    console.print(f"datasets ({', '.join(f'{k}={v}' for k, v in counts.items())}): {out / 'datasets'}")
    if train and pipe.constitution.traits:
        character_demo(console, out, config.parent)
    elif train:
        train_demo(console, out, config.parent)
    from cai.report import write_report

    console.print(f"\nrun directory: {out}")
    console.print(f"report: {write_report(out, None)}")


def train_demo(console: Console, out: Path, examples: Path) -> None:
    """A reward model on the demo's AI-labelled pairs, then a few RLOO steps against it."""
    from rich.table import Table

    from cai.training.config import load_train_config
    from cai.training.data import load_split
    from cai.training.reward import mean_policy_reward
    from cai.training.run import train_reward, train_rl

    data = out / "datasets"
    console.rule("reward model (soft labels)")
    rm = train_reward(
        load_train_config(examples / "train-reward.yaml", [f"dataset={data}", f"trl.output_dir={out / 'reward-model'}"])
    )
    console.rule("RLOO against the reward model")
    rl = train_rl(
        load_train_config(
            examples / "train-rl.yaml",
            [f"dataset={data}", f"reward_model={out / 'reward-model'}", f"trl.output_dir={out / 'rl'}"],
        )
    )
    prompts = [r["prompt"] for r in load_split(str(data), "prompts", "train")][:8]  # the prompts RL trained on
    before = mean_policy_reward("default", rm["output_dir"], prompts)
    after = mean_policy_reward(rl["output_dir"], rm["output_dir"], prompts)
    t = Table("what", "value", title="training on the demo data")
    held = rm.get("heldout") or {}
    t.add_row(
        "reward model held-out accuracy", f"{held.get('accuracy', float('nan')):.3f} on {held.get('pairs', 0)} pairs"
    )
    t.add_row("reward model held-out mean margin", f"{held.get('mean_margin', float('nan')):.3f}")
    t.add_row(f"mean reward on {len(prompts)} training prompts, before RL", f"{before:.3f}")
    t.add_row(f"mean reward on {len(prompts)} training prompts, after {rl['steps']} RLOO steps", f"{after:.3f}")
    console.print(t)
    frontier_demo(console, out, ["default", rl["output_dir"]])
    (out / "training-summary.json").write_text(
        json.dumps(
            {
                "reward_model": {k: v for k, v in rm.items() if k != "log"},
                "rl": {k: v for k, v in rl.items() if k != "log"},
                "mean_reward_before": before,
                "mean_reward_after": after,
            },
            indent=2,
            default=float,
        )
    )


def frontier_demo(console: Console, out: Path, models: list[str]) -> None:
    """`cai eval frontier` on a few of the run's held-out prompts and of the shipped benign ones,
    with intervals, and one line saying whether the trained model differs beyond noise (on so few
    prompts it rarely does: the point is to show what a decision needs)."""
    from cai.constitution import load_constitution
    from cai.evaluation.frontier import evaluate_frontier, helpful_principles, red_team_prompts
    from cai.evaluation.policy import benign_chats
    from cai.tables import frontier_tables, frontier_verdict

    console.rule("cai eval frontier: harmless vs helpful")
    c = load_constitution(out / "constitution.yaml")
    helpful = helpful_principles(load_constitution("hhh"), "helpful")
    try:
        red = red_team_prompts(out, limit=4)
    except UserError as e:
        console.print(f"[yellow]no frontier:[/yellow] {e}")
        return
    benign = benign_chats()[:4]
    result = evaluate_frontier(models, red, benign, c, helpful, principles=1, max_new_tokens=32)
    (out / "eval-frontier.json").write_text(json.dumps(result, indent=2))
    for table in frontier_tables(result):
        console.print(table)
    console.print(frontier_verdict(result, result["models"][-1]["model"]))


def character_demo(console: Console, out: Path, examples: Path) -> None:
    """DPO on the character pairs, SFT on the introspection rows (when the run made them), then
    per-trait win rates of the trained model over the base model."""
    from cai.constitution import load_constitution
    from cai.evaluation.character import evaluate_character
    from cai.tables import character_tables
    from cai.training.config import load_train_config
    from cai.training.data import load_split
    from cai.training.run import train_dpo, train_sft

    data = out / "datasets"
    console.rule("DPO on the character pairs")
    dpo = train_dpo(
        load_train_config(examples / "train-dpo-character.yaml", [f"dataset={data}", f"trl.output_dir={out / 'dpo'}"])
    )
    model = dpo["output_dir"]
    try:
        has_sft = len(load_split(str(data), "sft")) > 0
    except UserError:
        has_sft = False  # no introspection (or revisions) in this run
    if has_sft:
        console.rule("SFT on the introspection rows (self-reflections and self-interactions)")
        sets = [f"model={model}", f"dataset={data}", f"trl.output_dir={out / 'sft'}", "trl.max_steps=4"]
        model = train_sft(load_train_config(examples / "train-sft.yaml", sets))["output_dir"]
    c = load_constitution(out / "constitution.yaml")
    items = [(t.id, [{"role": "user", "content": t.questions[-1]}]) for t in c.traits]  # one seed question per trait
    console.rule("cai eval character")
    result = evaluate_character(model, "default", c, items, max_new_tokens=48)
    (out / "eval-character.json").write_text(json.dumps(result, indent=2))
    for table in character_tables(result):
        console.print(table)


def show_examples(console: Console, out: Path) -> None:
    from cai.critique.records import Comparison, Revision
    from cai.generators.records import Query, Response
    from cai.store import RunStore

    store = RunStore(out)
    queries = {q.id: q for q in store.load("queries", Query)}
    revisions = store.load("revisions", Revision)
    rev = next((r for r in revisions if r.rounds and r.final != r.initial), None)
    if rev:
        body = f"[bold]user:[/bold] {queries[rev.query_id].text}\n[bold]answer:[/bold] {rev.initial}"
        for i, rd in enumerate(rev.rounds, 1):
            body += f"\n[bold]critique {i} ({rd.principle_id}):[/bold] {rd.critique}"
            body += f"\n[bold]revision {i}:[/bold] {rd.revision}"
        console.print(Panel(body, title="a critique → revision chain"))
    texts = {r.id: r.text for r in store.load("responses", Response) + store.load("teacher", Response)}
    texts |= {v.id: v.final for v in revisions}
    for kind in ("samples", "revision", "distill"):
        comp = next((c for c in store.load("comparisons", Comparison) if c.kind == kind), None)
        if comp is None:
            continue
        how = (
            "context distillation: the teacher answered with the constitution as its system prompt"
            if kind == "distill"
            else f"over {len(comp.judgements)} readings (principles {', '.join(comp.principle_ids)}, both orders)"
        )
        body = (
            f"[bold]user:[/bold] {queries[comp.query_id].text}\n[green]chosen:[/green] {texts.get(comp.chosen_id)}\n"
            f"[red]rejected:[/red] {texts.get(comp.rejected_id)}\np_chosen = {comp.p_chosen:.3f} {how}"
        )
        console.print(Panel(body, title=f"a {kind} pair with its soft label"))
