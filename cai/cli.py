"""The `cai` command line.

Every mistake a user can make surfaces as `UserError`; `main()` prints its lines to stderr and
exits 2, so no command needs its own try/except and no traceback reaches the user.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from constitution.errors import UserError

app = typer.Typer(
    help="Constitutional AI: principle files to SFT and preference data, reward models, RL and DPO.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
constitution_app = typer.Typer(help="Check, show and convert principle files.", no_args_is_help=True)
model_app = typer.Typer(help="The embedded default model and quick generation.", no_args_is_help=True)
app.add_typer(constitution_app, name="constitution")
app.add_typer(model_app, name="model")

console = Console()


@constitution_app.command("lint")
def constitution_lint(
    files: Annotated[list[Path], typer.Argument(help="Principle files (YAML or JSON), or shipped names.")],
    strict: Annotated[bool, typer.Option(help="Treat warnings as errors.")] = False,
) -> None:
    """Validate principle files; every problem is printed as FILE:LINE: FIELD: MESSAGE."""
    from constitution.lint import lint_file

    errors: list[str] = []
    warnings: list[str] = []
    for f in files:
        try:
            c, w = lint_file(f)
        except UserError as e:
            errors += e.problems
            continue
        warnings += w
        n = f"{len(c.principles)} principles" + (f", {len(c.traits)} traits" if c.traits else "")
        console.print(f"[green]ok[/green] {f} ({c.name}: {n}, {len(c.few_shot)} few-shot)")
    for w in warnings:
        typer.echo(f"warning: {w}", err=True)
    if errors or (strict and warnings):
        raise UserError(errors[0] if errors else warnings[0], problems=errors or warnings)


@constitution_app.command("show")
def constitution_show(file: Annotated[str, typer.Argument(help="A principle file or a shipped name.")]) -> None:
    """Print a constitution's principles and traits as tables."""
    from constitution import load_constitution

    c = load_constitution(file)
    console.print(f"[bold]{c.name}[/bold] v{c.version}  hash {c.content_hash()}")
    if c.description:
        console.print(c.description)
    if c.principles:
        t = Table("id", "weight", "critique", "comparison", title="principles", show_lines=True)
        for p in c.principles:
            t.add_row(p.id, f"{p.weight:g}", p.critique or "-", p.comparison or "-")
        console.print(t)
    if c.traits:
        t = Table("id", "trait", "questions", title="traits", show_lines=True)
        for tr in c.traits:
            t.add_row(tr.id, tr.text, str(len(tr.questions)))
        console.print(t)
    console.print(f"{len(c.few_shot)} few-shot example(s)")


@constitution_app.command("list")
def constitution_list() -> None:
    """List the constitutions that ship with cai."""
    from constitution import library_names, load_constitution

    for name in library_names():
        c = load_constitution(name)
        console.print(f"{name:12} {c.name}: {c.description or ''}")


@constitution_app.command("import")
def constitution_import(
    file: Annotated[Path, typer.Argument(help="A JSON file in the CAI paper or open CAI recipe layout.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write YAML here (default: stdout).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="auto, cai-paper or hf-recipe.")] = "auto",
    name: Annotated[str | None, typer.Option(help="Name of the new constitution.")] = None,
) -> None:
    """Convert another tool's principle file into a cai YAML file."""
    from constitution import dump_constitution, import_constitution

    if fmt not in ("auto", "cai-paper", "hf-recipe", "cai"):
        raise UserError(f"--format: unknown format {fmt!r}; choose auto, cai-paper or hf-recipe")
    c = import_constitution(file, fmt, name)  # type: ignore[arg-type]
    text = dump_constitution(c)
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        console.print(f"wrote {out} ({len(c.principles)} principles, {len(c.few_shot)} few-shot)")


@model_app.command("prepare")
def model_prepare(force: Annotated[bool, typer.Option(help="Convert again even if cached.")] = False) -> None:
    """Convert the embedded GGUF model to a Hugging Face checkpoint (once) and print its path."""
    from generators.default_model import prepare_default_model

    typer.echo(str(prepare_default_model(force=force)))


@model_app.command("sample")
def model_sample(
    prompts: Annotated[list[str], typer.Argument(help="User messages.")],
    model: Annotated[str, typer.Option(help="`default`, a hub id or a local path.")] = "default",
    backend: Annotated[str, typer.Option(help="transformers, vllm or openai.")] = "transformers",
    n: Annotated[int, typer.Option(min=1)] = 1,
    temperature: Annotated[float, typer.Option(min=0.0)] = 0.7,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 128,
    seed: int | None = None,
) -> None:
    """Answer a few messages with a model, to see what it does."""
    from generators import BackendConfig, SamplingParams, load_backend

    b = load_backend(BackendConfig(backend=backend, model=model))
    chats = [[{"role": "user", "content": p}] for p in prompts]
    params = SamplingParams(n=n, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    for p, comps in zip(prompts, b.generate(chats, params)):
        console.print(f"[bold]user:[/bold] {p}")
        for c in comps:
            body = c.text if c.error is None else f"[red]error: {c.error}[/red]"
            console.print(f"[bold]assistant[/bold] ({c.tokens} tokens, {c.finish_reason}): {body}")


generate_app = typer.Typer(help="Run one stage of a run (its inputs must already be in --out).", no_args_is_help=True)
app.add_typer(generate_app, name="generate")


def _shard(value: str | None) -> tuple[int, int]:
    if value is None:
        return (0, 1)
    try:
        i, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise UserError(f"--shard: expected i/N such as 0/4, got {value!r}") from None
    return i, n


def _run(config: Path, out: Path, limit: int | None, shard: str | None, only: str | None = None) -> None:
    from cai.config import load_config
    from cai.pipeline import Pipeline, export_run, summary_table

    if limit is not None and limit < 1:
        raise UserError("--limit: must be at least 1")
    cfg = load_config(config)
    pipe = Pipeline(cfg, out, limit=limit, shard=_shard(shard), console=console)
    try:
        stats = pipe.run(only=only)
    finally:
        pipe.close()
    console.print(summary_table(stats))
    if only is None and pipe.shard[1] == 1:
        counts = export_run(out)
        console.print("datasets: " + ", ".join(f"{k}={v}" for k, v in counts.items()) + f"  in {out / 'datasets'}")


ConfigArg = Annotated[Path, typer.Argument(help="A run config (YAML).")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Run directory; rerunning resumes it.")]
LimitOpt = Annotated[int | None, typer.Option(help="Only the first N queries, for a quick try.")]
ShardOpt = Annotated[str | None, typer.Option(help="i/N: this worker's share of the queries.")]


@app.command("run")
def run(config: ConfigArg, out: OutOpt, limit: LimitOpt = None, shard: ShardOpt = None) -> None:
    """Run every stage of CONFIG into --out, resuming what is there, then export datasets."""
    _run(config, out, limit, shard)


def _stage_command(stage: str):
    def command(config: ConfigArg, out: OutOpt, limit: LimitOpt = None, shard: ShardOpt = None) -> None:
        _run(config, out, limit, shard, only=stage)

    command.__doc__ = f"Run only the {stage} stage."
    return command


for _stage in ("queries", "responses", "revisions", "comparisons"):
    generate_app.command(_stage)(_stage_command(_stage))


@app.command("export")
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    dest: Annotated[Path | None, typer.Option("--to", help="Where to write (default RUN_DIR/datasets).")] = None,
    push_to_hub: Annotated[str | None, typer.Option(help="Also push to this hub dataset repo.")] = None,
) -> None:
    """Write TRL datasets (SFT, preferences, prompts) and a dataset card from a run."""
    from cai.pipeline import export_run

    counts = export_run(run_dir, dest)
    where = dest or run_dir / "datasets"
    console.print("datasets: " + ", ".join(f"{k}={v}" for k, v in counts.items()) + f"  in {where}")
    if push_to_hub:
        from training.hub import push_export

        push_export(where, push_to_hub)


train_app = typer.Typer(help="Train on a run's datasets with TRL: sft, reward, rl, dpo.", no_args_is_help=True)
app.add_typer(train_app, name="train")


def _train(kind: str, config: Path | None, sets: list[str] | None, resume: bool, output_dir: str | None, max_steps: int | None) -> None:
    from training import run as runners
    from training.config import load_train_config

    cfg = load_train_config(config, sets, output_dir=output_dir, max_steps=max_steps)
    summary = getattr(runners, f"train_{kind}")(cfg, resume=resume)
    shown = {k: v for k, v in summary.items() if k not in ("log", "reward_curve")}
    console.print_json(data=shown)


TrainConfigArg = Annotated[Path | None, typer.Argument(help="Training config (YAML); --set can replace it.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="key=value override, e.g. trl.learning_rate=2e-5.")]
ResumeOpt = Annotated[bool, typer.Option(help="Continue from the last checkpoint in output_dir.")]
OutDirOpt = Annotated[str | None, typer.Option(help="Shortcut for --set trl.output_dir=...")]
StepsOpt = Annotated[int | None, typer.Option(help="Shortcut for --set trl.max_steps=...")]


def _train_command(kind: str, doc: str):
    def command(config: TrainConfigArg = None, set_: SetOpt = None, resume: ResumeOpt = False, output_dir: OutDirOpt = None, max_steps: StepsOpt = None) -> None:
        _train(kind, config, set_, resume, output_dir, max_steps)

    command.__doc__ = doc
    return command


for _kind, _doc in (
    ("sft", "Supervised fine-tuning on the revisions (TRL SFTTrainer)."),
    ("reward", "A reward model on the preference pairs, with soft labels (TRL RewardTrainer)."),
    ("rl", "RLOO (default) or GRPO against a reward model or a constitution judge."),
    ("dpo", "Direct preference optimisation on the preference pairs (TRL DPOTrainer)."),
):
    train_app.command(_kind)(_train_command(_kind, _doc))


@app.command("demo")
def demo(
    config: Annotated[Path, typer.Option(help="The demo's run config.")] = Path("examples/demo-harmless.yaml"),
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory.")] = Path("runs/demo"),
    limit: Annotated[int | None, typer.Option(help="Queries to use (seed queries come first).")] = 16,
    train: Annotated[bool, typer.Option(help="Then train a reward model and run a few RLOO steps.")] = True,
) -> None:
    """Run the demo config, show a revision chain and a ranked pair, then train on the data."""
    from cai.demo import run_demo

    run_demo(console, config, out, limit, train)


# -- evaluation and reports ----------------------------------------------------------------

eval_app = typer.Typer(help="Evaluate the labeler, a reward model or a trained policy.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")

PairsOpt = Annotated[Path, typer.Option("--pairs", help="Human-labelled pairs: HH-RLHF, TRL preference or CAI multiple-choice JSONL (.gz ok).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
OutJsonOpt = Annotated[Path | None, typer.Option("--out-json", help="Also write the results here (e.g. RUN_DIR/eval-labeler.json for `cai report`).")]


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def _emit(result: dict, as_json: bool, out_json: Path | None, tables) -> None:
    import json

    if out_json is not None:
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if as_json:
        typer.echo(json.dumps({k: v for k, v in result.items() if k != "per_reading"}, indent=2, ensure_ascii=False))
        return
    for t in tables(result):
        console.print(t)


@eval_app.command("labeler")
def eval_labeler(
    pairs: PairsOpt,
    constitution: Annotated[str, typer.Option(help="Principle file or shipped name.")] = "harmless",
    method: Annotated[str, typer.Option(help="logprob or cot.")] = "logprob",
    principles: Annotated[int, typer.Option(min=1, help="Principles sampled per pair (each read in both orders).")] = 4,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N pairs.")] = None,
    seed: int = 0,
    backend: Annotated[str, typer.Option(help="transformers, vllm or openai.")] = "transformers",
    model: Annotated[str, typer.Option(help="Feedback model: `default`, a hub id or a local path.")] = "default",
    bins: Annotated[int, typer.Option(min=1, help="Calibration bins over the soft label 0.5-1.")] = 5,
    as_json: JsonOpt = False,
    out_json: OutJsonOpt = None,
) -> None:
    """Agreement of the feedback model's ranking with human labels, and its failure modes."""
    import time

    from constitution import load_constitution
    from generators import BackendConfig, load_backend
    from training.eval_pairs import load_pairs
    from training.evaluate import label_pairs, readings_to_json, summarise

    if method not in ("logprob", "cot"):
        raise UserError(f"--method: expected logprob or cot, got {method!r}")
    c = load_constitution(constitution)
    data, skipped = load_pairs(pairs, limit)
    b = load_backend(BackendConfig(backend=backend, model=model))
    start = time.perf_counter()
    try:
        readings, errors = label_pairs(b, c, data, method=method, principles=principles, seed=seed)
    finally:
        b.close()
    if not readings:
        raise UserError(f"{pairs}: every reading failed ({errors[0]['error'] if errors else 'no pairs'})")
    result = {
        "kind": "labeler",
        "pairs_file": str(pairs),
        "constitution": c.name,
        "method": method,
        "principles": principles,
        "seed": seed,
        "model": model,
        "backend": backend,
        "skipped": skipped,
        "errors": len(errors),
        "seconds": round(time.perf_counter() - start, 1),
        **summarise(readings, bins),
        "per_reading": readings_to_json(readings),
    }

    def tables(r: dict):
        t = Table("metric", "value", title=f"labeler: {r['method']}, {r['principles']} principles, {r['pairs']} pairs")
        for k in ("agreement", "order_consistency", "position_bias", "ece", "mean_p_chosen", "readings", "skipped", "errors", "seconds"):
            t.add_row(k, _fmt(r[k]))
        yield t
        t = Table("principle", "pairs", "agreement", "mean p(chosen)", title="per principle")
        for pid, v in r["by_principle"].items():
            t.add_row(pid, str(v["pairs"]), _fmt(v["agreement"]), _fmt(v["mean_p_chosen"]))
        yield t
        t = Table("soft label", "pairs", "confidence", "accuracy", title=f"reliability (ECE {r['ece']:.3f})")
        for row in r["reliability"]:
            t.add_row(row["bin"], str(row["count"]), _fmt(row["confidence"]), _fmt(row["accuracy"]))
        yield t

    _emit(result, as_json, out_json, tables)


@eval_app.command("reward-model")
def eval_reward_model(
    model: Annotated[Path, typer.Option("--model", help="A trained reward-model directory.")],
    pairs: PairsOpt,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N pairs.")] = None,
    as_json: JsonOpt = False,
    out_json: OutJsonOpt = None,
) -> None:
    """Pairwise accuracy and mean margin of a reward model on human-labelled pairs."""
    from training.eval_pairs import load_pairs
    from training.evaluate import evaluate_reward_model

    if not model.is_dir():
        raise UserError(f"--model: {model}: not a model directory")
    data, skipped = load_pairs(pairs, limit)
    result = {"kind": "reward-model", "model": str(model), "pairs_file": str(pairs), "skipped": skipped, **evaluate_reward_model(str(model), data)}

    def tables(r: dict):
        t = Table("metric", "value", title=f"reward model {r['model']}")
        for k in ("pairs", "accuracy", "mean_margin", "skipped"):
            t.add_row(k, _fmt(r[k]))
        yield t

    _emit(result, as_json, out_json, tables)


@eval_app.command("policy")
def eval_policy(
    model: Annotated[str, typer.Option("--model", help="The trained policy (path or hub id).")],
    baseline: Annotated[str, typer.Option("--baseline", help="The policy to compare against, e.g. `default`.")],
    prompts: Annotated[Path, typer.Option("--prompts", help="Prompts: .txt (one a line) or .jsonl (text/messages/prompt, HH transcripts).")],
    constitution: Annotated[str, typer.Option(help="Principle file or shipped name.")] = "harmless",
    feedback: Annotated[str, typer.Option(help="Feedback model for the win rate and refusal check.")] = "default",
    principles: Annotated[int, typer.Option(min=1)] = 2,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N prompts.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
    seed: int = 0,
    as_json: JsonOpt = False,
    out_json: OutJsonOpt = None,
) -> None:
    """Win rate of --model over --baseline under the constitution, and over-refusal on benign prompts."""
    from constitution import load_constitution
    from generators.queries import load_seed_queries
    from training.eval_policy import evaluate_policy

    c = load_constitution(constitution)
    qs = load_seed_queries(prompts)[:limit]
    result = evaluate_policy(model, baseline, [q.messages for q in qs], c, feedback, principles, max_new_tokens, seed)

    def tables(r: dict):
        t = Table("metric", "value", title=f"{r['model']} vs {r['baseline']} on {r['prompts']} prompts")
        for k in ("win_rate", "order_consistency", "identical_answers", "errors"):
            t.add_row(k, _fmt(r[k]))
        for who, v in r["over_refusal"].items():
            t.add_row(f"over-refusal ({who}, {v['prompts']} benign prompts)", _fmt(v["refusal_rate"]))
        yield t

    _emit(result, as_json, out_json, tables)


@app.command("report")
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="HTML file (default RUN_DIR/report.html).")] = None,
) -> None:
    """Write one self-contained HTML report of a run: stages, labels, samples, training, evals."""
    from cai.report import write_report

    path = write_report(run_dir, out)
    console.print(f"wrote {path}")


@eval_app.command("character")
def eval_character(
    model: Annotated[str, typer.Option("--model", help="The trained policy (path or hub id).")],
    baseline: Annotated[str, typer.Option("--baseline", help="The policy to compare against, e.g. `default`.")],
    constitution: Annotated[str, typer.Option(help="A character constitution (with traits).")] = "character",
    prompts: Annotated[Path | None, typer.Option(help="Held-out trait prompts (a run's test_prompts.jsonl); default: the traits' seed questions.")] = None,
    feedback: Annotated[str, typer.Option(help="Feedback model for win rates and the refusal check.")] = "default",
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N prompts.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
    seed: int = 0,
    as_json: JsonOpt = False,
    out_json: OutJsonOpt = None,
) -> None:
    """Per-trait win rate of --model over --baseline, over-refusal on benign prompts, and leaks."""
    from constitution import load_constitution
    from training.eval_character import evaluate_character, trait_queries

    c = load_constitution(constitution)
    result = evaluate_character(model, baseline, c, trait_queries(c, prompts, limit), feedback, max_new_tokens, seed)
    _emit(result, as_json, out_json, character_tables)


def character_tables(r: dict):
    t = Table("trait", "prompts", "win rate", title=f"{r['model']} vs {r['baseline']} ({r['constitution']})")
    for trait, rate in r["win_rate_by_trait"].items():
        t.add_row(trait, str(r["prompts_by_trait"][trait]), _fmt(rate))
    t.add_row("all", str(r["prompts"]), _fmt(r["win_rate"]))
    yield t
    u = Table("check", "model", "baseline")
    u.add_row("over-refusal on benign prompts", _fmt(r["over_refusal"]["model"]["refusal_rate"]), _fmt(r["over_refusal"]["baseline"]["refusal_rate"]))
    u.add_row("answers that leak the character", _fmt(r["leak_rate"]["model"]), _fmt(r["leak_rate"]["baseline"]))
    yield u


# -- end of evaluation and reports ---------------------------------------------------------


def main() -> None:
    try:
        app()
    except UserError as e:
        for line in e.problems:
            typer.echo(line, err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
