"""The `cai` command line.

Every mistake a user can make surfaces as `UserError`; `main()` prints its lines to stderr and
exits 2, so no command needs its own try/except and no traceback reaches the user.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.table import Table

from cai.cli_constitution import register as register_constitution_commands
from cai.cli_eval import eval_app, report
from cai.constitution.errors import UserError
from cai.constitution.importers import Format as ImportFormat
from cai.logs import VERBOSE, library_output
from cai.store import STAGES
from cai.studio.cli import studio

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


@app.callback()
def _options(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show libraries' own messages instead of logging them.")
    ] = False,
) -> None:
    """Constitutional AI: principle files to SFT and preference data, reward models, RL and DPO."""
    VERBOSE["on"] = verbose


@constitution_app.command("lint")
def constitution_lint(
    files: Annotated[list[Path], typer.Argument(help="Principle files (YAML or JSON), or shipped names.")],
    strict: Annotated[bool, typer.Option(help="Treat warnings as errors.")] = False,
) -> None:
    """Validate principle files; every problem is printed as FILE:LINE: FIELD: MESSAGE."""
    from cai.constitution.lint import lint_file

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
    from cai.constitution import load_constitution

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


@constitution_app.command("diff")
def constitution_diff(
    old: Annotated[str, typer.Argument(help="The earlier principle file, or a shipped name.")],
    new: Annotated[str, typer.Argument(help="The later principle file, or a shipped name.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the changes as JSON.")] = False,
) -> None:
    """What changed, principle by principle; exit 0 when equal, 1 when different (like diff)."""
    import json
    import re

    from rich.markup import escape
    from rich.text import Text

    from cai.constitution import load_constitution
    from cai.constitution.diff import diff_constitutions

    changes = diff_constitutions(load_constitution(old), load_constitution(new))
    if as_json:
        typer.echo(json.dumps([c.to_json() for c in changes], indent=2, ensure_ascii=False))
    else:
        colour = {"added": "green", "removed": "red", "renamed": "yellow", "changed": "cyan"}
        for c in changes:
            where = f"{c.section}[{c.id}]" + (f".{c.field}" if c.field and c.kind == "changed" else "")
            head = f"[{colour[c.kind]}]{c.kind:8}[/{colour[c.kind]}] {escape(where)}"
            if c.kind == "renamed":
                console.print(f"{head}: {escape(str(c.old))} -> {escape(str(c.new))}")
            elif c.kind == "changed":
                body = c.words if c.words is not None else f"{c.old!r} -> {c.new!r}"
                line = Text.from_markup(f"{head}: ")
                for part in re.split(r"(\[-.*?-\]|\{\+.*?\+\})", body):  # the words as written, edits coloured
                    line.append(
                        part, style="red" if part.startswith("[-") else "green" if part.startswith("{+") else ""
                    )
                console.print(line)
            else:
                console.print(head)
        console.print(f"{len(changes)} change(s)" if changes else "no changes")
    if changes:
        raise typer.Exit(1)


@constitution_app.command("list")
def constitution_list() -> None:
    """List the constitutions that ship with cai."""
    from cai.constitution import library_names, load_constitution

    for name in library_names():
        c = load_constitution(name)
        console.print(f"{name:12} {c.name}: {c.description or ''}")


@constitution_app.command("import")
def constitution_import(
    files: Annotated[
        list[Path],
        typer.Argument(
            metavar="FILE...",
            help="The CAI paper's prompt files (critique/revision instructions, ranking principles, few-shot "
            "prompts), the open CAI recipe's JSON, or cai files; several become one constitution.",
        ),
    ],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write YAML here (default: stdout).")] = None,
    fmt: Annotated[ImportFormat, typer.Option("--format", help="Layout of the files; auto tells them apart.")] = "auto",
    name: Annotated[str | None, typer.Option(help="Name of the new constitution.")] = None,
) -> None:
    """Convert other tools' principle files into one cai YAML file."""
    from cai.constitution import dump_constitution, import_constitution

    c = import_constitution(files, fmt, name)
    text = dump_constitution(c)
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        console.print(f"wrote {out} ({len(c.principles)} principles, {len(c.few_shot)} few-shot)")


@model_app.command("prepare")
def model_prepare(force: Annotated[bool, typer.Option(help="Convert again even if cached.")] = False) -> None:
    """Convert the embedded GGUF model to a Hugging Face checkpoint (once) and print its path."""
    from cai.generators.default_model import prepare_default_model

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
    from cai.generators import BackendConfig, SamplingParams, load_backend

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


def _run(
    config: Path,
    out: Path,
    limit: int | None,
    shard: str | None,
    only: str | None = None,
    retry_failed: bool = False,
    dry_run: bool = False,
    ray: str | None = None,
) -> None:
    from cai.config import load_config
    from cai.executors import make_executor
    from cai.export import export_run
    from cai.pipeline import Pipeline, plan_table, summary_table

    if limit is not None and limit < 1:
        raise UserError("--limit: must be at least 1")
    cfg = load_config(config)
    executor = cfg.executor
    if ray is not None:  # where the calls run is no part of the run's config: the frozen copy stays as written
        executor = executor.model_copy(update={"kind": "ray", "address": ray or executor.address})
    if dry_run:
        pipe = Pipeline(
            cfg, out, limit=limit, shard=_shard(shard), console=console, retry_failed=retry_failed, dry_run=True
        )
        change = pipe.start()
        pipe.run(only=only)
        console.print(plan_table(pipe.plan, change))
        return
    with library_output(out):
        pipe = Pipeline(
            cfg,
            out,
            limit=limit,
            shard=_shard(shard),
            console=console,
            retry_failed=retry_failed,
            executor=make_executor(executor, console),
        )
        try:
            change = pipe.start()
            if change.new and change.version > 1:
                console.print(
                    f"config changed ({', '.join(change.sections)}): kept as configs/{change.version:03d}.yaml; "
                    f"stages from {change.first_stage} on keep only the records it still wants"
                )
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
RetryOpt = Annotated[
    bool, typer.Option("--retry-failed", help="Retry every failed task, permanent errors and used-up retries too.")
]
DryOpt = Annotated[bool, typer.Option("--dry-run", help="Print per stage what is kept and what is to do; run nothing.")]
RayOpt = Annotated[
    str | None,
    typer.Option(
        "--ray",
        metavar="[ADDRESS]",
        help="Run the model calls on a pool of Ray actors: join the cluster at ADDRESS (host:port, ray://host:port, "
        "auto), or start a local one. Needs cai\\[ray].",
    ),
]


def _optional_ray_address(argv: list[str]) -> list[str]:
    """`--ray` takes an address or stands alone; typer options take a value, so a lone one gets an empty one.
    What follows `--ray` is its address when it looks like one (auto, local, host:port, ray://...)."""
    out = list(argv)
    for k, arg in enumerate(argv):
        if arg != "--ray":
            continue
        nxt = argv[k + 1] if k + 1 < len(argv) else ""
        if not (nxt in ("auto", "local") or "://" in nxt or (":" in nxt and not Path(nxt).exists())):
            out[k] = "--ray="
    return out


@app.command("run")
def run(
    config: ConfigArg,
    out: OutOpt,
    limit: LimitOpt = None,
    shard: ShardOpt = None,
    retry_failed: RetryOpt = False,
    dry_run: DryOpt = False,
    ray: RayOpt = None,
) -> None:
    """Run every stage of CONFIG into --out, resuming what is there, then export datasets."""
    _run(config, out, limit, shard, retry_failed=retry_failed, dry_run=dry_run, ray=ray)


def _stage_command(stage: str):
    def command(
        config: ConfigArg,
        out: OutOpt,
        limit: LimitOpt = None,
        shard: ShardOpt = None,
        retry_failed: RetryOpt = False,
        dry_run: DryOpt = False,
        ray: RayOpt = None,
    ) -> None:
        _run(config, out, limit, shard, only=stage, retry_failed=retry_failed, dry_run=dry_run, ray=ray)

    command.__doc__ = f"Run only the {stage} stage."
    return command


for _stage in STAGES:
    generate_app.command(_stage)(_stage_command(_stage))


@app.command("status")
def status(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (it may be running elsewhere).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Per stage and shard: records done / planned, errors by kind, tokens, throughput, ETA. Loads no model."""
    import json

    from cai.status import run_status, status_table

    rows = run_status(run_dir)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        console.print(status_table(rows, run_dir))


@app.command("export")
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    dest: Annotated[Path | None, typer.Option("--to", help="Where to write (default RUN_DIR/datasets).")] = None,
    push_to_hub: Annotated[str | None, typer.Option(help="Also push to this hub dataset repo.")] = None,
    fmt: Annotated[
        Literal["jsonl", "parquet"] | None,
        typer.Option("--format", help="jsonl, or parquet shards for large runs (default: the config's export.format)."),
    ] = None,
) -> None:
    """Write TRL datasets (SFT, preferences, prompts) and a dataset card from every shard of a run."""
    from cai.export import export_run

    with library_output(run_dir):
        counts = export_run(run_dir, dest, fmt)
    where = dest or run_dir / "datasets"
    console.print("datasets: " + ", ".join(f"{k}={v}" for k, v in counts.items()) + f"  in {where}")
    if push_to_hub:
        from cai.training.hub import push_export

        push_export(where, push_to_hub)


train_app = typer.Typer(help="Train on a run's datasets with TRL: sft, reward, rl, dpo.", no_args_is_help=True)
app.add_typer(train_app, name="train")


def _train(
    kind: str, config: Path | None, sets: list[str] | None, resume: bool, output_dir: str | None, max_steps: int | None
) -> None:
    from cai.training import run as runners
    from cai.training.config import load_train_config

    cfg = load_train_config(config, sets, output_dir=output_dir, max_steps=max_steps)
    trainers = {
        "sft": runners.train_sft,
        "reward": runners.train_reward,
        "rl": runners.train_rl,
        "dpo": runners.train_dpo,
    }
    with library_output(Path(cfg.trl.get("output_dir") or ".")):
        summary = trainers[kind](cfg, resume=resume)
    shown = {k: v for k, v in summary.items() if k not in ("log", "reward_curve")}
    console.print_json(data=shown)


TrainConfigArg = Annotated[Path | None, typer.Argument(help="Training config (YAML); --set can replace it.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="key=value override, e.g. trl.learning_rate=2e-5.")]
ResumeOpt = Annotated[bool, typer.Option(help="Continue from the last checkpoint in output_dir.")]
OutDirOpt = Annotated[str | None, typer.Option(help="Shortcut for --set trl.output_dir=...")]
StepsOpt = Annotated[int | None, typer.Option(help="Shortcut for --set trl.max_steps=...")]


def _train_command(kind: str, doc: str):
    def command(
        config: TrainConfigArg = None,
        set_: SetOpt = None,
        resume: ResumeOpt = False,
        output_dir: OutDirOpt = None,
        max_steps: StepsOpt = None,
    ) -> None:
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

    with library_output(out):
        run_demo(console, config, out, limit, train)


app.add_typer(eval_app, name="eval")
app.command("report")(report)
register_constitution_commands(constitution_app)
app.command("studio")(studio)


def main() -> None:
    sys.argv = _optional_ray_address(sys.argv)
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
