"""`cai constitution ...`: check, show, diff, list and import principle files, and see what an edit does.

`try`, `compare` and `infer` run a model: their work is done by `cai.workbench`; this module turns
options into backends and caches, shows progress, and prints results as tables or JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from cai.constitution.importers import Format as ImportFormat
from cai.core.errors import UserError
from cai.core.identity import identity
from cai.core.progress import progress
from cai.logs import library_output
from cai.tables import fmt

from .options import (
    CacheOpt,
    ConstitutionArg,
    FeedbackBackendOpt,
    FeedbackModelOpt,
    FeedbackOpt,
    FeedbackOptionOpt,
    JsonOpt,
    MethodOpt,
    NoCacheOpt,
    PairsOpt,
    cache_dir,
    console,
    feedback_config,
    policy_config,
)

app = typer.Typer(help="Check, show and convert principle files; see what an edit does.", no_args_is_help=True)


@app.command("lint")
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


@app.command("show")
def constitution_show(
    file: Annotated[str, typer.Argument(help="A principle file or a shipped name.")],
    effective: Annotated[
        bool,
        typer.Option(
            "--effective", help="Print the merged file (YAML) of a layered one, each principle's layer noted."
        ),
    ] = False,
) -> None:
    """Print a constitution's principles and traits as tables (of a file that extends others: merged)."""
    from cai.constitution.layers import dump_effective, load_layered

    layered = load_layered(file)
    if effective:
        typer.echo(dump_effective(layered), nl=False)
        return
    c = layered.constitution
    console.print(f"[bold]{c.name}[/bold] v{c.version}  hash {c.content_hash()}")
    for layer in layered.layers if layered.layered else []:
        console.print(f"  layer {escape(layer.label)} ({escape(layer.name)}) {layer.hash}")
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
    console.print(f"{len(c.few_shot)} few-shot example(s), {len(c.comparison_examples)} comparison example(s)")


@app.command("diff")
def constitution_diff(
    old: Annotated[str, typer.Argument(help="The earlier principle file, or a shipped name.")],
    new: Annotated[str, typer.Argument(help="The later principle file, or a shipped name.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the changes as JSON.")] = False,
) -> None:
    """What changed, principle by principle; exit 0 when equal, 1 when different (like diff).

    A file that extends others is compared as merged: what a run would read."""
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


@app.command("list")
def constitution_list() -> None:
    """List the constitutions that ship with cai."""
    from cai.constitution import library_names, load_constitution

    for name in library_names():
        c = load_constitution(name)
        console.print(f"{name:12} {c.name}: {c.description or ''}")


@app.command("import")
def constitution_import(
    files: Annotated[
        list[Path],
        typer.Argument(
            metavar="FILE...",
            help="The CAI paper's prompt files (critique/revision instructions, ranking principles, few-shot "
            "prompts, ranking few-shot prompts with or without reasoning), the open CAI recipe's JSON, or cai "
            "files; several become one constitution.",
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
        examples = f", {len(c.comparison_examples)} comparison examples" if c.comparison_examples else ""
        console.print(f"wrote {out} ({len(c.principles)} principles, {len(c.few_shot)} few-shot{examples})")


class _Steps:
    """A try's steps on the terminal: the answer, the critique and the revision as the model writes
    them, then what each step came to."""

    def __init__(self):
        self.open: str | None = None

    def text(self, step: str, piece: str) -> None:
        if self.open != step:
            self._close()
            console.print(f"[bold]{step}[/bold]: ", end="")
            self.open = step
        console.print(escape(piece), end="", soft_wrap=True, highlight=False)

    def _close(self) -> None:
        if self.open is not None:
            console.print()
            self.open = None

    def done(self, step: str, data: dict) -> None:
        streamed = self.open == step
        self._close()
        if step == "answer":
            note = f"({data['tokens']} tokens)" if streamed else f"({data['tokens']} tokens): {escape(data['text'])}"
            console.print(f"[dim]{note}[/dim]" if streamed else f"[bold]answer[/bold] {note}")
        elif step == "critique":
            body = "" if streamed else f": {escape(data['text'])}"
            console.print(
                f"[dim](under {data['principle_id']})[/dim]"
                if streamed
                else f"[bold]critique[/bold] under {data['principle_id']}{body}"
            )
        elif step == "revision":
            note = (
                ""
                if data["kept"]
                else " [yellow](not usable: empty, the same answer, or a copy of the critique)[/yellow]"
            )
            if streamed:
                if note:
                    console.print(note.strip())
            else:
                console.print(f"[bold]revision[/bold]{note}: {escape(data['text'])}")


@app.command("try")
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
    feedback_backend: FeedbackBackendOpt = None,
    feedback_model: FeedbackModelOpt = None,
    feedback_option: FeedbackOptionOpt = None,
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

    fb = feedback_config(feedback, feedback_backend, feedback_model, feedback_option)
    pol = policy_config(policy, feedback, fb)
    c = as_constitution(constitution)
    ids = [p.id for p in c.principles] + [t.id for t in c.traits]
    if principle is not None and principle not in ids:  # before the model loads
        raise UserError(f"--principle: {c.name} has no principle {principle!r} (it has {', '.join(ids)})")
    shown = _Steps()
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
                None if as_json else shown.done,
                answer=answer,
                temperature=temperature,
                on_text=None if as_json else shown.text,
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


def _progress() -> tuple[Progress, Callable[[dict], None]]:
    """One bar per constitution version, noting what came from the reading cache."""
    bar = progress("compare", console, remaining=False)
    bars: dict[str, int] = {}

    def update(event: dict) -> None:
        name = event["version"]
        if name not in bars:
            bars[name] = bar.add_task(name, total=event["total"], note=name)
        c = event.get("cache")
        note = f"{name}: {c['hits']} from the cache, {c['misses']} read" if c else name
        bar.update(bars[name], completed=event["done"], note=note)

    return bar, update


@app.command("compare")
def constitution_compare(
    old: ConstitutionArg,
    pairs: PairsOpt,
    new: Annotated[
        str | None, typer.Argument(help="The edited principle file or shipped name (not with --examples).")
    ] = None,
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
    examples: Annotated[
        bool,
        typer.Option("--examples", help="Compare OLD without its comparison examples (old) and with them (new)."),
    ] = False,
    few_shot: Annotated[
        int | None, typer.Option(min=0, help="Comparison examples shown before each pair (default: as a run does).")
    ] = None,
    feedback: FeedbackOpt = None,
    feedback_backend: FeedbackBackendOpt = None,
    feedback_model: FeedbackModelOpt = None,
    feedback_option: FeedbackOptionOpt = None,
    cache: CacheOpt = None,
    no_cache: NoCacheOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Rank the same pairs under OLD and NEW and show what the edit does to the labels.

    Label flips, mean |Δp|, order consistency, position bias and agreement with the file's labels,
    overall and per principle, and the pairs that moved most; --ablate leaves each principle out.
    With a layered file, each flip is put down to the layer whose principle moved it; with
    --examples, one constitution is measured with and without its comparison examples."""
    from cai.constitution.layers import load_layered
    from cai.generators import load_backend
    from cai.workbench import compare
    from cai.workbench.compare import load_labeled, without_examples
    from cai.workbench.tables import compare_tables

    fb = feedback_config(feedback, feedback_backend, feedback_model, feedback_option)
    if examples == (new is not None):
        raise UserError("give OLD and NEW, or one constitution with --examples (with and without its examples)")
    c_old = load_layered(old)
    c_new = c_old if examples else load_layered(new)
    if examples:
        if not c_old.constitution.comparison_examples:
            raise UserError(f"--examples: {old} has no comparison examples")
        c_old = without_examples(c_old.constitution)
    data, source = load_labeled(pairs, limit)
    if source.get("skipped"):
        typer.echo(f"{pairs}: skipped {source['skipped']} records ({source['skip_reasons']})", err=True)
    bar, update = _progress()
    with library_output(None):
        with console.status("loading the model", spinner="dots"):
            b = load_backend(fb)
        try:
            with bar if not as_json else nullcontext():
                result = compare(
                    c_old,
                    c_new,
                    data,
                    b,
                    ablate=ablate_version if ablate else False,
                    cache_dir=cache_dir(cache, no_cache),
                    identity=identity(fb, "stage")["options"],
                    method=method,
                    principles=principles,
                    seed=seed,
                    top=top,
                    on_progress=None if as_json else update,
                    few_shot=few_shot,
                )
        finally:
            b.close()
    result.update({**source, "backend": fb.backend, "model": fb.model})
    if as_json:
        typer.echo(json.dumps(result, indent=2, ensure_ascii=False))
        return
    for t in compare_tables(result):
        console.print(t)
    if result.get("by_layer"):
        t = Table("layer", "principles it changed", "flips it accounts for", "share", title="flips by layer")
        for row in result["by_layer"]:
            share = "-" if row["share"] is None else f"{row['share']:.0%}"
            t.add_row(escape(row["layer"]), escape(", ".join(row["principles"]) or "-"), str(row["flips"]), share)
        console.print(t)
    n = result["readings"]
    flips = "-" if result["flip_rate"] is None else f"{result['flips']} ({result['flip_rate']:.0%})"
    console.print(
        f"{result['pairs']} pairs: {flips} labels flipped, mean |Δp| {fmt(result['mean_abs_dp'])}; "
        f"{n['planned']} readings: {n['read']} read, {n['cached']} from the cache; {result['seconds']:.1f} s"
    )


@app.command("infer")
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
    feedback_backend: FeedbackBackendOpt = None,
    feedback_model: FeedbackModelOpt = None,
    feedback_option: FeedbackOptionOpt = None,
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

    fb = feedback_config(feedback, feedback_backend, feedback_model, feedback_option)
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
    bar = progress("infer", console, remaining=False)
    bars: dict[str, int] = {}

    def update(event: dict) -> None:
        if event["stage"] not in bars:
            bars[event["stage"]] = bar.add_task(event["stage"], total=event["total"], note=event["stage"])
        bar.update(bars[event["stage"]], completed=event["done"])

    with library_output(work):
        with console.status("loading the model", spinner="dots"):
            b = load_backend(fb)
        try:
            with bar if not as_json else nullcontext():
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
                    identity=identity(fb, "stage")["options"],
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


@app.command("test")
def constitution_test(
    constitution: ConstitutionArg,
    probe: Annotated[
        list[str] | None, typer.Option("--probe", help="Run only this probe (repeatable; default: all).")
    ] = None,
    junit: Annotated[
        Path | None, typer.Option("--junit", help="Also write the verdicts as JUnit XML here, for CI.")
    ] = None,
    feedback: FeedbackOpt = None,
    feedback_backend: FeedbackBackendOpt = None,
    feedback_model: FeedbackModelOpt = None,
    feedback_option: FeedbackOptionOpt = None,
    policy: Annotated[
        Path | None,
        typer.Option(help="Who critiques and revises, as a backend or run config; default: the feedback model."),
    ] = None,
    method: MethodOpt = "logprob",
    seed: int = 0,
    cache: CacheOpt = None,
    no_cache: NoCacheOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Run a constitution's probes: pinned cases its principles must get right. Exit 1 if any fails.

    Probes sit in the file (`probes:`) or beside it (NAME.probes.yaml). A ranking probe's chosen
    reply must win under its principle (or all of them), both orders, by its margin; a revision
    probe's revision and a critique probe's critique, written as in a run, must pass its check (a
    pattern gone or present, or a yes from the feedback model). Readings and texts are cached, so
    after an edit only the probes it touched reach the model."""
    from cai.constitution.loader import load_with_probes
    from cai.generators import load_backend
    from cai.tables import probes_table
    from cai.workbench.probes import run_probes, select, write_junit

    fb = feedback_config(feedback, feedback_backend, feedback_model, feedback_option)
    pol = policy_config(policy, feedback, fb)
    c = load_with_probes(constitution)
    if not c.probes:
        raise UserError(f"{constitution}: no probes to run (add `probes:` to it, or a sibling NAME.probes.yaml)")
    chosen = select(c, probe)  # an unknown id fails before the model loads
    bar = progress("test", console, remaining=False)
    bars: dict[str, int] = {}

    def update(event: dict) -> None:
        if event["phase"] not in bars:
            bars[event["phase"]] = bar.add_task(event["phase"], total=event["total"], note=event["phase"])
        bar.update(bars[event["phase"]], completed=event["done"])

    with library_output(None):
        with console.status("loading the model", spinner="dots"):
            b_feedback = load_backend(fb)
            b_policy = b_feedback if pol == fb or not any(p.kind != "ranking" for p in chosen) else load_backend(pol)
        try:
            with bar if not as_json else nullcontext():
                result = run_probes(
                    c,
                    b_feedback,
                    b_policy,
                    probes=probe,
                    cache_dir=cache_dir(cache, no_cache),
                    identity=identity(fb, "stage")["options"],
                    policy_identity=identity(pol, "stage")["options"],
                    method=method,
                    seed=seed,
                    on_progress=None if as_json else update,
                )
        finally:
            b_feedback.close()
            if b_policy is not b_feedback:
                b_policy.close()
    if junit is not None:
        write_junit(result, junit)
    if as_json:
        typer.echo(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        console.print(probes_table(result))
        n, t = result["readings"], result["texts"]
        console.print(
            f"{len(result['probes'])} probes: {result['passed']} passed, {result['failed']} failed"
            + (f", {result['errors']} could not be read" if result["errors"] else "")
            + f"; {n['read']} readings read, {n['cached']} from the cache; {t['written']} texts written, "
            f"{t['cached']} from the cache; {result['seconds']:.1f} s"
        )
        if junit is not None:
            console.print(f"wrote {junit}")
    if result["failed"] or result["errors"]:
        raise typer.Exit(1)
