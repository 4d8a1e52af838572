"""`cai constitution try / compare / infer`: what an edit to a principle file does, before a run.

The work is done by `cai.workbench`; this module turns options into backends and caches, shows
progress, and prints results as tables or JSON. The feedback model is a backend config, as for
the evals (`--feedback FILE`, or `--backend/--model/--option`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cai.cli_eval import _feedback
from cai.constitution.errors import UserError
from cai.logs import library_output
from cai.tables import fmt

console = Console()

ConstitutionArg = Annotated[str, typer.Argument(help="A principle file, or a shipped name (harmless, hhh, character).")]
FeedbackOpt = Annotated[
    Path | None,
    typer.Option(
        "--feedback",
        help="The feedback model as a backend config (YAML: backend, model, options) or a run config (its feedback).",
    ),
]
BackendOpt = Annotated[str | None, typer.Option(help="Feedback backend: transformers (default), vllm or openai.")]
ModelOpt = Annotated[
    str | None, typer.Option(help="Feedback model: `default`, a hub id, a local path or a served name.")
]
OptionOpt = Annotated[
    list[str] | None, typer.Option("--option", help="Feedback backend option key=value (repeatable).")
]
PairsOpt = Annotated[
    Path,
    typer.Option("--pairs", help="Labelled pairs: HH-RLHF, TRL preference or CAI multiple-choice JSONL (.gz ok)."),
]
CacheOpt = Annotated[
    Path | None, typer.Option("--cache", help="Reading cache folder (default: the user's cache, cai/readings).")
]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Read every pair afresh and store nothing.")]
MethodOpt = Annotated[Literal["logprob", "cot"], typer.Option(help="Read letter log-probs, or argue first (CoT).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]


def cache_dir(cache: Path | None, no_cache: bool) -> Path | None:
    from cai.generators.default_model import cache_root

    return None if no_cache else cache if cache is not None else cache_root() / "readings"


def _policy_config(policy: Path | None, feedback: Path | None, fb):
    """The policy's backend config: --policy (a backend or run config), a run config's policy, or
    the feedback model itself."""
    from cai.constitution.loader import read_structured, validate_model
    from cai.generators import BackendConfig

    for path, flag in ((policy, "--policy"), (feedback, None)):
        if path is None:
            continue
        if not path.is_file():
            raise UserError(f"{flag}: {path}: file not found")
        data, node = read_structured(path)
        if isinstance(data, dict) and "constitution" in data:
            from cai.config import RunConfig

            return validate_model(RunConfig, data, node, str(path)).policy
        if flag is not None:
            return validate_model(BackendConfig, data, node, str(path))
    return fb


def _print_step(step: str, data: dict) -> None:
    if step == "answer":
        console.print(f"[bold]answer[/bold] ({data['tokens']} tokens): {escape(data['text'])}")
    elif step == "critique":
        console.print(f"[bold]critique[/bold] under {data['principle_id']}: {escape(data['text'])}")
    elif step == "revision":
        note = (
            "" if data["kept"] else " [yellow](not usable: empty, the same answer, or a copy of the critique)[/yellow]"
        )
        console.print(f"[bold]revision[/bold]{note}: {escape(data['text'])}")


def constitution_try(
    constitution: ConstitutionArg,
    message: Annotated[str, typer.Argument(help="A user message to answer, critique, revise and rank.")],
    principle: Annotated[
        str | None, typer.Option("--principle", help="Critique (and rank) under this principle; default: a drawn one.")
    ] = None,
    answer: Annotated[
        str | None, typer.Option(help="Critique this answer instead of asking the policy for one.")
    ] = None,
    feedback: FeedbackOpt = None,
    backend: BackendOpt = None,
    model: ModelOpt = None,
    option: OptionOpt = None,
    policy: Annotated[
        Path | None,
        typer.Option(help="The policy as a backend config or a run config; default: the feedback model."),
    ] = None,
    temperature: Annotated[float, typer.Option(min=0.0, help="The policy's sampling; 0 is greedy.")] = 0.0,
    seed: int = 0,
    as_json: JsonOpt = False,
) -> None:
    """One chain on the spot: answer, critique and revise under one principle, rank initial vs revised.

    The ranking reads both answers under the ranking principles (or the named one), in both orders."""
    from cai.generators import load_backend
    from cai.workbench import try_chain
    from cai.workbench.tables import ranking_table
    from cai.workbench.trying import as_constitution

    fb = _feedback(feedback, backend, model, option)
    pol = _policy_config(policy, feedback, fb)
    c = as_constitution(constitution)
    ids = [p.id for p in c.principles] + [t.id for t in c.traits]
    if principle is not None and principle not in ids:  # before the model loads
        raise UserError(f"--principle: {c.name} has no principle {principle!r} (it has {', '.join(ids)})")
    with library_output(None):
        with console.status("loading the model", spinner="dots"):
            b_policy = load_backend(pol)
            b_feedback = b_policy if pol == fb else load_backend(fb)
        try:
            result = try_chain(
                c,
                message,
                b_policy,
                b_feedback,
                principle,
                seed,
                None if as_json else _print_step,
                answer=answer,
                temperature=temperature,
            )
        finally:
            b_policy.close()
            if b_feedback is not b_policy:
                b_feedback.close()
    if as_json:
        typer.echo(json.dumps(result, indent=2, ensure_ascii=False))
        return
    r = result["ranking"]
    if r is None:
        console.print("no ranking: the revision is not usable")
    elif r["error"] is not None:
        console.print(f"[red]ranking failed: {escape(r['error'])}[/red]")
    else:
        console.print(ranking_table(r))
        agree = "yes" if r["order_consistent"] else "no"
        console.print(f"P(revised is better) = {r['p_revised']:.3f}; both orders agree: {agree}")
    console.print(f"{result['tokens']} tokens in {result['seconds']:.1f} s")


def _progress(total: int) -> tuple[Progress, Callable[[dict], None]]:
    progress = Progress(
        TextColumn("[bold]{task.description:<4}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[cache]}"),
        TimeElapsedColumn(),
        console=console,
    )
    bars: dict[str, int] = {}

    def update(event: dict) -> None:
        name = event["version"]
        if name not in bars:
            bars[name] = progress.add_task(name, total=event["total"], cache="")
        c = event.get("cache")
        note = f"{c['hits']} from the cache, {c['misses']} read" if c else ""
        progress.update(bars[name], completed=event["done"], cache=note)

    return progress, update


def constitution_compare(
    old: ConstitutionArg,
    new: ConstitutionArg,
    pairs: PairsOpt,
    limit: Annotated[int, typer.Option(min=1, help="Only the first N pairs.")] = 200,
    ablate: Annotated[bool, typer.Option("--ablate", help="Also leave each principle out, one at a time.")] = False,
    ablate_version: Annotated[
        Literal["old", "new"], typer.Option(help="Which version --ablate leaves principles out of.")
    ] = "new",
    principles: Annotated[
        int | None, typer.Option(min=1, help="Read each pair under K sampled principles, as a run does (default: all).")
    ] = None,
    method: MethodOpt = "logprob",
    seed: int = 0,
    top: Annotated[int, typer.Option(min=0, help="How many of the pairs that moved most to show.")] = 5,
    feedback: FeedbackOpt = None,
    backend: BackendOpt = None,
    model: ModelOpt = None,
    option: OptionOpt = None,
    cache: CacheOpt = None,
    no_cache: NoCacheOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Rank the same pairs under OLD and NEW and show what the edit does to the labels.

    Label flips, mean |Δp|, order consistency, position bias and agreement with the file's labels,
    overall and per principle, and the pairs that moved most; --ablate leaves each principle out."""
    from cai.generators import load_backend
    from cai.workbench import compare
    from cai.workbench.compare import load_labeled
    from cai.workbench.tables import compare_tables
    from cai.workbench.trying import as_constitution

    fb = _feedback(feedback, backend, model, option)
    c_old, c_new = as_constitution(old), as_constitution(new)
    data, source = load_labeled(pairs, limit)
    if source.get("skipped"):
        typer.echo(f"{pairs}: skipped {source['skipped']} records ({source['skip_reasons']})", err=True)
    progress, update = _progress(len(data))
    with library_output(None):
        with console.status("loading the model", spinner="dots"):
            b = load_backend(fb)
        try:
            with progress if not as_json else _Null():
                result = compare(
                    c_old,
                    c_new,
                    data,
                    b,
                    ablate=ablate_version if ablate else False,
                    cache_dir=cache_dir(cache, no_cache),
                    identity=fb.options,
                    method=method,
                    principles=principles,
                    seed=seed,
                    top=top,
                    on_progress=None if as_json else update,
                )
        finally:
            b.close()
    result.update({**source, "backend": fb.backend, "model": fb.model})
    if as_json:
        typer.echo(json.dumps(result, indent=2, ensure_ascii=False))
        return
    for t in compare_tables(result):
        console.print(t)
    n = result["readings"]
    flips = "-" if result["flip_rate"] is None else f"{result['flips']} ({result['flip_rate']:.0%})"
    console.print(
        f"{result['pairs']} pairs: {flips} labels flipped, mean |Δp| {fmt(result['mean_abs_dp'])}; "
        f"{n['planned']} readings: {n['read']} read, {n['cached']} from the cache; {result['seconds']:.1f} s"
    )


def constitution_infer(
    pairs: PairsOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the inferred principle file (YAML).")],
    work: Annotated[
        Path | None,
        typer.Option(help="Work folder for proposals and test readings; a rerun resumes it (default: OUT.work)."),
    ] = None,
    limit: Annotated[int, typer.Option(min=2, help="Only the first N pairs.")] = 200,
    holdout: Annotated[float, typer.Option(min=0.01, max=0.99, help="Share of pairs held out to test rules on.")] = 0.5,
    rules_per_pair: Annotated[int, typer.Option(min=1, help="Rules asked of the model per proposal pair.")] = 3,
    candidates: Annotated[int, typer.Option(min=1, help="Best-supported merged rules to test.")] = 12,
    keep: Annotated[int, typer.Option(min=1, help="Most principles to write.")] = 5,
    min_agreement: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Keep only principles whose agreement is above this.")
    ] = 0.5,
    include: Annotated[
        str | None, typer.Option(help="Also test this constitution's ranking principles (a file or shipped name).")
    ] = None,
    name: Annotated[str, typer.Option(help="Name of the written constitution.")] = "inferred",
    method: MethodOpt = "logprob",
    seed: int = 0,
    feedback: FeedbackOpt = None,
    backend: BackendOpt = None,
    model: ModelOpt = None,
    option: OptionOpt = None,
    cache: CacheOpt = None,
    no_cache: NoCacheOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Infer principles from preference pairs: propose, merge, test on held-out pairs, write the best.

    The feedback model proposes short rules that would explain each preference; near duplicates
    are merged; each candidate alone ranks the held-out pairs (both orders); those that agree
    with the labels best are written with their agreement and support. Rerunning resumes."""
    from cai.constitution.lint import lint_file
    from cai.generators import load_backend
    from cai.workbench import InferConfig, infer
    from cai.workbench.compare import load_labeled
    from cai.workbench.tables import infer_table
    from cai.workbench.trying import as_constitution

    fb = _feedback(feedback, backend, model, option)
    given = as_constitution(include) if include is not None else None
    cfg = InferConfig(
        holdout=holdout,
        rules_per_pair=rules_per_pair,
        candidates=candidates,
        keep=keep,
        min_agreement=min_agreement,
        method=method,
    )
    _, source = load_labeled(pairs, limit)  # a bad file fails here, before the model loads
    if source.get("skipped"):
        typer.echo(f"{pairs}: skipped {source['skipped']} records ({source['skip_reasons']})", err=True)
    work = work or out.with_suffix(".work")
    progress = Progress(
        TextColumn("[bold]{task.description:<8}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    bars: dict[str, int] = {}

    def update(event: dict) -> None:
        if event["stage"] not in bars:
            bars[event["stage"]] = progress.add_task(event["stage"], total=event["total"])
        progress.update(bars[event["stage"]], completed=event["done"])

    with library_output(work):
        with console.status("loading the model", spinner="dots"):
            b = load_backend(fb)
        try:
            with progress if not as_json else _Null():
                result = infer(
                    pairs,
                    b,
                    work,
                    out,
                    name=name,
                    config=cfg,
                    seed=seed,
                    limit=limit,
                    include=given,
                    cache_dir=cache_dir(cache, no_cache),
                    identity=fb.options,
                    on_progress=None if as_json else update,
                )
        finally:
            b.close()
    result["work"] = str(work)
    if result["written"]:
        _, warnings = lint_file(out)
        for w in warnings:
            typer.echo(f"warning: {w}", err=True)
    if as_json:
        typer.echo(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        console.print(infer_table(result))
        n = result["readings"]
        console.print(
            f"{result['pairs']} pairs ({result['proposal_pairs']} proposed from, {result['heldout_pairs']} held out): "
            f"{result['rules_proposed']} rules, {len(result['candidates'])} candidates tested; "
            f"{result['generated']} proposals generated, {n['read']} readings read, {n['cached']} from the cache; "
            f"{result['seconds']:.1f} s"
        )
    if not result["kept"]:
        typer.echo(
            f"no candidate's agreement is above {min_agreement}; nothing written (see {work}/candidates.json)", err=True
        )
        raise typer.Exit(1)
    if not as_json:
        console.print(f"wrote {out} ({len(result['kept'])} principles)")


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def register(app: typer.Typer) -> None:
    """Add these commands to `cai constitution`."""
    app.command("try")(constitution_try)
    app.command("compare")(constitution_compare)
    app.command("infer")(constitution_infer)
