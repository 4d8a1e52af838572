"""`cai eval ...` and `cai report`: is the AI feedback right, and what did a run produce?"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console

from cai.constitution.errors import UserError
from cai.logs import library_output

from .tables import character_tables, frontier_tables, labeler_tables, policy_tables, reward_model_tables

console = Console()

eval_app = typer.Typer(
    help="Evaluate the labeler, a reward model, a trained policy, a character or the harmless–helpful frontier.",
    no_args_is_help=True,
)

PairsOpt = Annotated[
    Path,
    typer.Option(
        "--pairs", help="Human-labelled pairs: HH-RLHF, TRL preference or CAI multiple-choice JSONL (.gz ok)."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
OutJsonOpt = Annotated[
    Path | None,
    typer.Option("--out-json", help="Also write the results here (e.g. RUN_DIR/eval-labeler.json for `cai report`)."),
]
FeedbackOpt = Annotated[
    Path | None,
    typer.Option(
        "--feedback",
        help="The feedback model as a backend config (YAML: backend, model, options) or a run config (its feedback).",
    ),
]


FeedbackBackendOpt = Annotated[
    str | None, typer.Option("--feedback-backend", help="Feedback backend: transformers (default), vllm or openai.")
]
FeedbackModelOpt = Annotated[
    str | None, typer.Option("--feedback-model", help="Feedback model (default `default`), over --feedback's.")
]
FeedbackOptionOpt = Annotated[
    list[str] | None, typer.Option("--feedback-option", help="Feedback backend option key=value (repeatable).")
]
FEEDBACK_FLAGS = ("--feedback-backend", "--feedback-model", "--feedback-option")
BenignOpt = Annotated[
    Path | None,
    typer.Option(help="Over-refusal prompts (.txt one a line, or .jsonl); default: the benign set shipped with cai."),
]


def _benign(path: Path | None) -> list[list[dict]] | None:
    from cai.generators.queries import load_seed_queries

    return None if path is None else [q.messages for q in load_seed_queries(path)]


def _log_dir(out_json: Path | None) -> Path | None:
    return out_json.parent if out_json is not None else None


def _logged(out_json: Path | None, fn, *args):
    """Run an eval with library output sent to the log beside --out-json (or the user's cache)."""
    with library_output(_log_dir(out_json)):
        return fn(*args)


def _options(items: list[str] | None, flag: str) -> dict:
    """`key=value` backend options; values read as JSON where they parse (8, true, [1, 2])."""
    import json

    out: dict = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UserError(f"{flag} {item!r}: expected key=value")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _feedback(
    config: Path | None,
    backend: str | None,
    model: str | None,
    options: list[str] | None,
    flags: tuple[str, str, str] = ("--backend", "--model", "--option"),
):
    """The feedback model's backend config: a YAML file, then the command-line fields over it."""
    from cai.constitution.loader import read_structured, validate_model
    from cai.generators import BackendConfig, backend_names

    fb = BackendConfig()
    if config is not None:
        if not config.is_file():
            raise UserError(f"--feedback: {config}: file not found")
        data, node = read_structured(config)
        if isinstance(data, dict) and "constitution" in data:  # a run config: rank with its feedback model
            from cai.config import RunConfig

            fb = validate_model(RunConfig, data, node, str(config)).feedback_backend
        else:
            fb = validate_model(BackendConfig, data, node, str(config))
    update: dict = {k: v for k, v in (("backend", backend), ("model", model)) if v is not None}
    if options:
        update["options"] = {**fb.options, **_options(options, flags[2])}
    fb = fb.model_copy(update=update)
    if fb.backend not in backend_names():
        where = flags[0] if backend is not None else f"{config}: backend"
        raise UserError(f"{where}: unknown backend {fb.backend!r}; choose one of {', '.join(backend_names())}")
    return fb


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


def _read_pairs(pairs: Path, limit: int | None, dump: Path | None = None):
    """Load the labelled pairs, say on stderr what was skipped and why, and write them if asked."""
    from cai.evaluation.pairs import read_pairs, write_pairs

    read = read_pairs(pairs, limit)
    if read.skipped:
        typer.echo(f"{pairs}: {read.summary()}", err=True)
    if dump is not None:
        write_pairs(read.pairs, dump)
        typer.echo(f"wrote {len(read.pairs)} pairs as read to {dump}", err=True)
    return read.pairs, len(read.skipped)


@eval_app.command("labeler")
def eval_labeler(
    pairs: PairsOpt,
    constitution: Annotated[str, typer.Option(help="Principle file or shipped name.")] = "harmless",
    method: Annotated[
        Literal["logprob", "cot"], typer.Option(help="Read letter log-probs, or argue first (CoT).")
    ] = "logprob",
    principles: Annotated[int, typer.Option(min=1, help="Principles sampled per pair (each read in both orders).")] = 4,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N pairs.")] = None,
    seed: int = 0,
    feedback: FeedbackOpt = None,
    backend: Annotated[
        str | None, typer.Option(help="Feedback backend: transformers (default), vllm or openai.")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Feedback model: `default`, a hub id, a local path or a served name.")
    ] = None,
    option: Annotated[
        list[str] | None, typer.Option("--option", help="Feedback backend option key=value (repeatable).")
    ] = None,
    bins: Annotated[int, typer.Option(min=1, help="Calibration bins over the soft label 0.5-1.")] = 5,
    dump_pairs: Annotated[
        Path | None,
        typer.Option("--dump-pairs", help="Also write the pairs as read: TRL preference JSONL with each file:line."),
    ] = None,
    as_json: JsonOpt = False,
    out_json: OutJsonOpt = None,
) -> None:
    """Agreement of the feedback model's ranking with human labels, and its failure modes."""
    import time

    from cai.constitution import load_constitution
    from cai.critique.reading import reading_mode
    from cai.evaluation.labeler import label_pairs, readings_to_json, summarise
    from cai.generators import load_backend

    fb = _feedback(feedback, backend, model, option)
    c = load_constitution(constitution)
    data, skipped = _read_pairs(pairs, limit, dump_pairs)
    start = time.perf_counter()
    with library_output(_log_dir(out_json)):
        b = load_backend(fb)
        try:
            reading = reading_mode(b)
            readings, errors = label_pairs(b, c, data, method=method, principles=principles, seed=seed)
        finally:
            b.close()
    if not readings:
        raise UserError(f"{pairs}: every pair failed ({errors[0]['error'] if errors else 'no pairs'})")
    result = {
        "kind": "labeler",
        "pairs_file": str(pairs),
        "constitution": c.name,
        "method": method,
        "principles": principles,
        "seed": seed,
        "model": fb.model,
        "backend": fb.backend,
        "reading": reading,
        "skipped": skipped,
        "errors": len(errors),
        "seconds": round(time.perf_counter() - start, 1),
        **summarise(readings, bins),
        "per_reading": readings_to_json(readings),
    }

    _emit(result, as_json, out_json, labeler_tables)


@eval_app.command("reward-model")
def eval_reward_model(
    model: Annotated[Path, typer.Option("--model", help="A trained reward-model directory.")],
    pairs: PairsOpt,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N pairs.")] = None,
    as_json: JsonOpt = False,
    out_json: OutJsonOpt = None,
) -> None:
    """Pairwise accuracy and mean margin of a reward model on human-labelled pairs."""
    from cai.evaluation.reward_model import evaluate_reward_model

    if not model.is_dir():
        raise UserError(f"--model: {model}: not a model directory")
    data, skipped = _read_pairs(pairs, limit)
    result = {
        "kind": "reward-model",
        "model": str(model),
        "pairs_file": str(pairs),
        "skipped": skipped,
        **_logged(out_json, evaluate_reward_model, str(model), data),
    }

    _emit(result, as_json, out_json, reward_model_tables)


@eval_app.command("policy")
def eval_policy(
    model: Annotated[str, typer.Option("--model", help="The trained policy (path or hub id).")],
    baseline: Annotated[str, typer.Option("--baseline", help="The policy to compare against, e.g. `default`.")],
    prompts: Annotated[
        Path,
        typer.Option("--prompts", help="Prompts: .txt (one a line) or .jsonl (text/messages/prompt, HH transcripts)."),
    ],
    constitution: Annotated[str, typer.Option(help="Principle file or shipped name.")] = "harmless",
    feedback: FeedbackOpt = None,
    feedback_backend: FeedbackBackendOpt = None,
    feedback_model: FeedbackModelOpt = None,
    feedback_option: FeedbackOptionOpt = None,
    benign: BenignOpt = None,
    principles: Annotated[int, typer.Option(min=1)] = 2,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N prompts.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
    seed: int = 0,
    as_json: JsonOpt = False,
    out_json: OutJsonOpt = None,
) -> None:
    """Win rate of --model over --baseline under the constitution, and over-refusal on benign prompts."""
    from cai.constitution import load_constitution
    from cai.evaluation.policy import evaluate_policy
    from cai.generators.queries import load_seed_queries

    fb = _feedback(feedback, feedback_backend, feedback_model, feedback_option, FEEDBACK_FLAGS)
    c = load_constitution(constitution)
    qs = load_seed_queries(prompts)[:limit]
    result = _logged(
        out_json,
        evaluate_policy,
        model,
        baseline,
        [q.messages for q in qs],
        c,
        fb,
        principles,
        max_new_tokens,
        seed,
        _benign(benign),
    )

    _emit(result, as_json, out_json, policy_tables)


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
    prompts: Annotated[
        Path | None,
        typer.Option(
            help="Held-out trait prompts: a run's datasets/ folder or a JSONL file; default: each trait's questions."
        ),
    ] = None,
    feedback: FeedbackOpt = None,
    feedback_backend: FeedbackBackendOpt = None,
    feedback_model: FeedbackModelOpt = None,
    feedback_option: FeedbackOptionOpt = None,
    benign: BenignOpt = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N prompts.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
    seed: int = 0,
    as_json: JsonOpt = False,
    out_json: OutJsonOpt = None,
) -> None:
    """Per-trait win rate of --model over --baseline, over-refusal on benign prompts, and leaks."""
    from cai.constitution import load_constitution
    from cai.evaluation.character import evaluate_character, trait_queries

    fb = _feedback(feedback, feedback_backend, feedback_model, feedback_option, FEEDBACK_FLAGS)
    c = load_constitution(constitution)
    items = trait_queries(c, prompts, limit)
    result = _logged(out_json, evaluate_character, model, baseline, c, items, fb, max_new_tokens, seed, _benign(benign))
    _emit(result, as_json, out_json, character_tables)


@eval_app.command("frontier", context_settings={"allow_extra_args": True})
def eval_frontier(
    ctx: typer.Context,
    models: Annotated[
        list[str],
        typer.Option(
            "--models",
            help="Checkpoints in training order (paths or hub ids): --models A B C. The first is the reference.",
        ),
    ],
    red_team: Annotated[
        Path,
        typer.Option(
            "--red-team",
            help="Red-team prompts: a run (its test prompts), HH-RLHF transcripts (first Human turns), .txt or .jsonl.",
        ),
    ],
    benign: BenignOpt = None,
    constitution: Annotated[
        str | None,
        typer.Option(help="Judge harm under this principle file; default: the run's (--red-team RUN) or harmless."),
    ] = None,
    helpful_constitution: Annotated[
        str, typer.Option(help="Principles for the helpfulness win rate (principle file or shipped name).")
    ] = "hhh",
    helpful_tag: Annotated[
        str | None, typer.Option(help="Use only its principles with this tag (all when none has it).")
    ] = "helpful",
    feedback: FeedbackOpt = None,
    feedback_backend: FeedbackBackendOpt = None,
    feedback_model: FeedbackModelOpt = None,
    feedback_option: FeedbackOptionOpt = None,
    principles: Annotated[int, typer.Option(min=1, help="Principles per answer or pair.")] = 2,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N red-team and N benign prompts.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
    seed: int = 0,
    plot: Annotated[Path | None, typer.Option(help="Also write the frontier plot here (PNG).")] = None,
    as_json: JsonOpt = False,
    out_json: OutJsonOpt = None,
) -> None:
    """Per checkpoint: harmful compliance on red-team prompts, over-refusal and helpfulness on benign ones."""
    import base64

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from cai.constitution import load_constitution
    from cai.evaluation.frontier import evaluate_frontier, helpful_principles, red_team_prompts
    from cai.evaluation.policy import benign_chats

    extra = list(ctx.args)
    if any(a.startswith("-") for a in extra):
        raise UserError(f"{extra[0]}: unknown option")
    models = [*models, *extra]
    fb = _feedback(feedback, feedback_backend, feedback_model, feedback_option, FEEDBACK_FLAGS)
    if constitution is None:
        run_constitution = red_team / "constitution.yaml"
        constitution = str(run_constitution) if run_constitution.is_file() else "harmless"
    c = load_constitution(constitution)
    helpful = helpful_principles(load_constitution(helpful_constitution), helpful_tag)
    red = red_team_prompts(red_team, limit)
    kind_prompts = _benign(benign) or benign_chats()
    kind_prompts = kind_prompts[:limit]
    with Progress(
        TextColumn("[bold]frontier"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=as_json,
    ) as bar:
        task = bar.add_task("answering", total=2 * len(models))
        result = _logged(
            out_json,
            evaluate_frontier,
            models,
            red,
            kind_prompts,
            c,
            helpful,
            fb,
            principles,
            max_new_tokens,
            seed,
            lambda what: bar.update(task, advance=1, description=what),
        )
    result["red_team"] = str(red_team)
    result["benign"] = str(benign) if benign is not None else "shipped benign set"
    if plot is not None:
        from cai.report import frontier_plot

        plot.parent.mkdir(parents=True, exist_ok=True)
        plot.write_bytes(base64.b64decode(frontier_plot(result["models"], result["reference"])))
    _emit(result, as_json, out_json, frontier_tables)
