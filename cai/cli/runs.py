"""`cai run`, `cai generate STAGE`, `cai status`, `cai export`, `cai demo`, `cai report`: a run's life."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from cai.core.errors import UserError
from cai.logs import library_output
from cai.stages import STAGES

from .options import console, shard

app = typer.Typer()
generate_app = typer.Typer(help="Run one stage of a run (its inputs must already be in --out).", no_args_is_help=True)

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


def run_config(
    config: Path,
    out: Path,
    limit: int | None,
    shard_: str | None,
    only: str | None = None,
    retry_failed: bool = False,
    dry_run: bool = False,
    ray: str | None = None,
) -> None:
    from cai.config import load_config
    from cai.executors import make_executor
    from cai.export import export_run
    from cai.pipeline import Pipeline
    from cai.tables import plan_table, summary_table

    if limit is not None and limit < 1:
        raise UserError("--limit: must be at least 1")
    cfg = load_config(config)
    executor = cfg.executor
    if ray is not None:  # where the calls run is no part of the run's config: the frozen copy stays as written
        executor = executor.model_copy(update={"kind": "ray", "address": ray or executor.address})
    where = shard(shard_)
    if dry_run:
        pipe = Pipeline(cfg, out, limit=limit, shard=where, console=console, retry_failed=retry_failed, dry_run=True)
        change = pipe.start()
        pipe.run(only=only)
        console.print(plan_table(pipe.plan, change))
        return
    _same_model_note(cfg)
    with library_output(out):
        pipe = Pipeline(
            cfg, out, limit=limit, shard=where, console=console, retry_failed=retry_failed,
            executor=make_executor(executor, console),
        )  # fmt: skip
        try:
            change = pipe.start()
            if change.legacy:
                console.print(
                    "this run was made by an earlier cai, whose record ids hashed the whole constitution and whose "
                    "samples were seeded per batch; ids now cover only what each stage reads and each item has its "
                    "own seed, so every stage is planned again: records the new ids want are kept, the others move "
                    f"to superseded/v{change.version - 1:03d}/ (see --dry-run)"
                )
            elif change.new and change.version > 1:
                console.print(
                    f"config changed ({', '.join(change.sections)}): kept as configs/{change.version:03d}.yaml; "
                    f"stages from {change.first_stage} on keep only the records it still wants"
                    if change.first_stage
                    else f"config changed ({', '.join(change.sections)}): kept as configs/{change.version:03d}.yaml; "
                    "no stage's records depend on what changed"
                )
            stats = pipe.run(only=only)
        finally:
            pipe.close()
        console.print(summary_table(stats))
        _every_task_failed(stats, pipe.store)
        if only is None and pipe.shard[1] == 1:
            counts = export_run(out)
            console.print("datasets: " + ", ".join(f"{k}={v}" for k, v in counts.items()) + f"  in {out / 'datasets'}")


def _same_model_note(cfg) -> None:
    """One line before the run when the policy's own model ranks its answers (a note, not an error)."""
    from cai.evaluation.labeler import same_model, same_model_note

    fb = cfg.feedback_backend
    if cfg.comparisons.mode != "distill" and same_model(fb.model, cfg.policy.model):
        console.print("note: " + same_model_note(f"{fb.backend}:{fb.model}"), soft_wrap=True, markup=False)


def _every_task_failed(stats, store) -> None:
    """A stage that ran and made nothing at all ends the command non-zero, naming its first error."""
    from cai.core.errors import RunFailed

    for s in stats:
        if s.errors and not s.records:
            first = next(iter(store.failures(s.stage).values()), {}).get("error", "?")
            raise RunFailed(
                f"{s.stage}: every task failed ({s.errors} errors; the first: {first}); "
                f"see {store.root / 'errors.jsonl'}, then rerun to retry"
            )


def optional_ray_address(argv: list[str]) -> list[str]:
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
    run_config(config, out, limit, shard, retry_failed=retry_failed, dry_run=dry_run, ray=ray)


def _stage_command(stage: str, help: str):
    def command(
        config: ConfigArg,
        out: OutOpt,
        limit: LimitOpt = None,
        shard: ShardOpt = None,
        retry_failed: RetryOpt = False,
        dry_run: DryOpt = False,
        ray: RayOpt = None,
    ) -> None:
        run_config(config, out, limit, shard, only=stage, retry_failed=retry_failed, dry_run=dry_run, ray=ray)

    command.__doc__ = f"Run only the {stage} stage. {help}"
    return command


for _stage in STAGES:
    generate_app.command(_stage.name)(_stage_command(_stage.name, _stage.help))
app.add_typer(generate_app, name="generate")


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

    with library_output(run_dir, create=False):
        counts = export_run(run_dir, dest, fmt)
    where = dest or run_dir / "datasets"
    console.print("datasets: " + ", ".join(f"{k}={v}" for k, v in counts.items()) + f"  in {where}")
    if push_to_hub:
        from cai.training.hub import push_export

        push_export(where, push_to_hub)


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


@app.command("report")
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="HTML file (default RUN_DIR/report.html).")] = None,
) -> None:
    """Write one self-contained HTML report of a run: stages, labels, samples, training, evals."""
    if (run_dir / "iterate.json").is_file():
        from cai.iterate import write_iterate_report

        console.print(f"wrote {write_iterate_report(run_dir, out)}")
        return
    from cai.report import write_report

    path = write_report(run_dir, out)
    console.print(f"wrote {path}")


@app.command("iterate")
def iterate(
    config: Annotated[
        Path, typer.Argument(help="An iterate config (YAML): the run, the trainer, the evals, when to stop.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder of the rounds; rerunning resumes it.")],
    rounds: Annotated[int | None, typer.Option(min=1, help="At most this many rounds (default: the config's).")] = None,
) -> None:
    """Rounds of RLAIF: each round's checkpoint answers the next round's prompts, then is trained and evaluated."""
    from cai.iterate import iterate as run_rounds
    from cai.iterate import load_iterate_config, write_iterate_report

    cfg = load_iterate_config(config)
    with library_output(out):
        state = run_rounds(cfg, out, console, rounds)
    done = [r for r in state["rounds"] if r.get("phase") == "done"]
    console.print(f"{len(done)} round(s) done; lineage in {out / 'iterate.json'}")
    console.print(f"report: {write_iterate_report(out)}")
