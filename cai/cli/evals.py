"""`cai eval ...`: is the AI feedback right, and what did training change?"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console

from cai.core.errors import RunFailed, UserError
from cai.core.progress import progress
from cai.logs import library_output
from cai.tables import character_tables, frontier_tables, labeler_tables, policy_tables, reward_model_tables

from .options import (
    BenignOpt,
    FeedbackBackendOpt,
    FeedbackModelOpt,
    FeedbackOpt,
    FeedbackOptionOpt,
    JsonOpt,
    OutJsonOpt,
    PairsOpt,
    benign_prompts,
    emit,
    feedback_config,
)

app = typer.Typer(
    help="Evaluate the labeler, a reward model, a trained policy, a character or the harmless–helpful frontier.",
    no_args_is_help=True,
)


def _log_dir(out_json: Path | None) -> Path | None:
    return out_json.parent if out_json is not None else None


def _logged(out_json: Path | None, fn, *args):
    """Run an eval with library output sent to the log beside --out-json (or the user's cache)."""
    with library_output(_log_dir(out_json)):
        return fn(*args)


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


@app.command("labeler")
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
    feedback_backend: FeedbackBackendOpt = None,
    feedback_model: FeedbackModelOpt = None,
    feedback_option: FeedbackOptionOpt = None,
    policy: Annotated[
        Path | None,
        typer.Option(
            help="The policy whose answers the feedback model ranks (backend or run config), to warn when "
            "they are one model; a run config given as --feedback says it too."
        ),
    ] = None,
    padded_pairs: Annotated[
        int | None,
        typer.Option(
            "--padded-pairs", min=0, help="Padded twins for the first N pairs (default: every pair; 0: none)."
        ),
    ] = None,
    against: Annotated[
        str | None,
        typer.Option(
            "--against",
            help="Self-preference: this model and the feedback model both answer the pairs' prompts, and the "
            "feedback model reads its own answers against this one's.",
        ),
    ] = None,
    against_backend: Annotated[
        str | None, typer.Option("--against-backend", help="Backend of --against (default transformers).")
    ] = None,
    against_option: Annotated[
        list[str] | None, typer.Option("--against-option", help="--against backend option key=value (repeatable).")
    ] = None,
    answer_tokens: Annotated[
        int, typer.Option(min=1, help="Most new tokens of each answer written for --against.")
    ] = 128,
    max_failures: Annotated[
        float,
        typer.Option(
            min=0.0, max=1.0, help="Exit 1 when a larger share of the pairs (or of a bias check's pairs) fails to read."
        ),
    ] = 0.1,
    bins: Annotated[int, typer.Option(min=1, help="Calibration bins over the soft label 0.5-1.")] = 5,
    dump_pairs: Annotated[
        Path | None,
        typer.Option("--dump-pairs", help="Also write the pairs as read: TRL preference JSONL with each file:line."),
    ] = None,
    as_json: JsonOpt = False,
    out_json: OutJsonOpt = None,
) -> None:
    """Agreement of the feedback model's ranking with human labels, each rate with its 95% interval,
    and the judge's biases: position, length (slope and padded twins) and self-preference.

    With --pairs RUN_DIR: the run's own labels against people's verdicts from `cai review RUN_DIR`."""
    if pairs.is_dir():
        return _labeler_against_reviews(pairs, bins, seed, as_json, out_json)
    import time

    from cai.constitution import load_constitution
    from cai.critique.reading import ReadingConfig, reading_mode
    from cai.evaluation import labeler as lab
    from cai.generators import BackendConfig, backend_names, load_backend

    from .options import key_values, policy_config

    fb = feedback_config(feedback, feedback_backend, feedback_model, feedback_option)
    warnings = []
    if policy is not None or feedback is not None:
        pol = policy_config(policy, feedback, fb)
        if pol is not fb and lab.same_model(pol.model, fb.model):
            warnings.append(lab.same_model_note(f"{fb.backend}:{fb.model}"))
            typer.echo("warning: " + warnings[-1], err=True)
    other = None
    if against is not None:
        backend = against_backend or "transformers"
        if backend not in backend_names():
            raise UserError(
                f"--against-backend: unknown backend {backend!r}; choose one of {', '.join(backend_names())}"
            )
        if lab.same_model(against, fb.model):
            raise UserError(f"--against: {against} is the feedback model itself; name another model")
        other = BackendConfig(backend=backend, model=against, options=key_values(against_option, "--against-option"))
    c = load_constitution(constitution)
    data, skipped = _read_pairs(pairs, limit, dump_pairs)
    cfg = ReadingConfig(method=method, principles=principles)
    twins_of = data if padded_pairs is None else data[:padded_pairs]
    start = time.perf_counter()
    twins = own = None
    with library_output(_log_dir(out_json)):
        b = load_backend(fb)
        try:
            reading = reading_mode(b)
            labels = lab.read_labeled_pairs(b, c, data, cfg, seed)
            readings, errors = lab.readings_of(labels)
            first = f"{errors[0]['pair']}: {errors[0]['error']}" if errors else None
            _labeler_failures(pairs, "pairs", len(errors), len(data), first, max_failures)
            if twins_of:
                twins = lab.padded_twins(b, c, twins_of, cfg, seed)
                _labeler_failures(
                    pairs, "padded twins", twins["failures"], len(twins_of), twins["first_error"], max_failures
                )
            if other is not None:
                o = load_backend(other)
                try:
                    own = lab.self_preference(b, o, c, data, cfg, seed, answer_tokens)
                finally:
                    o.close()
                _labeler_failures(
                    pairs, "self-preference pairs", own["failures"], len(data), own["first_error"], max_failures
                )
        finally:
            b.close()
    if not readings:
        raise RunFailed(f"{pairs}: every pair failed to read; first: {first}")
    summary = lab.summarise(readings, bins)
    rates = lab.labeler_rates(readings, [e["principles"] for e in errors], seed)
    if "parsed" in summary:
        summary["parsed"]["rates"] = lab.labeler_rates([r for r in readings if r.kind == "parsed"], seed=seed)
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
        "first_error": first,
        "seconds": round(time.perf_counter() - start, 1),
        **summary,
        "rates": rates,
        "bias": {
            "position": {**rates["position_bias"], "flagged": lab.excludes(*rates["position_bias"]["ci95"], 0.5)},
            "length": lab.length_bias(labels, seed),
            "padded_twins": twins,
            "self_preference": own,
            "self_preference_labelled": lab.labelled_self_preference(labels, fb.model, seed),
        },
        "warnings": warnings,
        "per_reading": lab.readings_to_json(readings),
    }

    emit(result, as_json, out_json, labeler_tables)


def _labeler_failures(pairs: Path, what: str, failed: int, total: int, first: str | None, most: float) -> None:
    """Past --max-failures, end the command (exit 1) naming the first error."""
    if total and failed / total > most:
        raise RunFailed(
            f"{pairs}: {failed} of {total} {what} failed to read (more than --max-failures {most:g}); first: {first}"
        )


def _labeler_against_reviews(run_dir: Path, bins: int, seed: int, as_json: bool, out_json: Path | None) -> None:
    """No model is asked: the labels are in the run's comparisons, the verdicts in its reviews.jsonl.
    The result is also written to RUN_DIR/review-agreement.json, which `cai report` shows."""
    from cai.review import agreement_result, agreement_tables

    emit(agreement_result(run_dir, bins, seed), as_json, out_json, agreement_tables)


@app.command("reward-model")
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

    emit(result, as_json, out_json, reward_model_tables)


ModelBackendOpt = Annotated[
    str | None,
    typer.Option(
        "--model-backend",
        help="Backend every policy answers on: transformers (default), vllm or openai. "
        "A model given as a backend-config YAML file keeps its own.",
    ),
]
ModelOptionOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--model-option", help="Policy backend option key=value (repeatable), for every policy given by name."
    ),
]
SamplesOpt = Annotated[
    int, typer.Option(min=1, help="Answers per prompt; rates are then bootstrapped over prompts (needs --temperature).")
]
TemperatureOpt = Annotated[float, typer.Option(min=0.0, help="Sampling temperature of the policies; 0 is greedy.")]
MaxFailuresOpt = Annotated[
    float,
    typer.Option(
        min=0.0, max=1.0, help="Exit 1 when a larger share of any rate's items fails (failed answers or readings)."
    ),
]


def _policies(names: list[str], flag: str, backend: str | None, options: list[str] | None) -> list:
    """Each model as a policy: a backend-config YAML file as written, a name on --model-backend
    (transformers by default) with the --model-option options."""
    from cai.evaluation.policy import Policy
    from cai.generators import BackendConfig, backend_names

    from .options import _backend_file, key_values

    if backend is not None and backend not in backend_names():
        raise UserError(f"--model-backend: unknown backend {backend!r}; choose one of {', '.join(backend_names())}")
    opts = key_values(options, "--model-option")
    out = []
    for name in names:
        if Path(name).suffix.lower() in (".yaml", ".yml", ".json"):
            cfg = _backend_file(Path(name), flag, "policy")
            if cfg.backend not in backend_names():
                raise UserError(
                    f"{name}: backend: unknown backend {cfg.backend!r}; choose one of {', '.join(backend_names())}"
                )
        else:
            cfg = BackendConfig(backend=backend or "transformers", model=name, options=opts)
        out.append(Policy(name, cfg))
    return out


@app.command("policy")
def eval_policy(
    model: Annotated[
        str, typer.Option("--model", help="The trained policy: path, hub id, served name or backend-config YAML.")
    ],
    baseline: Annotated[str, typer.Option("--baseline", help="The policy to compare against, e.g. `default`.")],
    prompts: Annotated[
        Path,
        typer.Option("--prompts", help="Prompts: .txt (one a line) or .jsonl (text/messages/prompt, HH transcripts)."),
    ],
    constitution: Annotated[str, typer.Option(help="Principle file or shipped name.")] = "harmless",
    model_backend: ModelBackendOpt = None,
    model_option: ModelOptionOpt = None,
    feedback: FeedbackOpt = None,
    feedback_backend: FeedbackBackendOpt = None,
    feedback_model: FeedbackModelOpt = None,
    feedback_option: FeedbackOptionOpt = None,
    benign: BenignOpt = None,
    principles: Annotated[int, typer.Option(min=1)] = 2,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N prompts.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
    samples: SamplesOpt = 1,
    temperature: TemperatureOpt = 0.0,
    max_failures: MaxFailuresOpt = 0.1,
    seed: int = 0,
    as_json: JsonOpt = False,
    out_json: OutJsonOpt = None,
) -> None:
    """Win rate of --model over --baseline under the constitution, and over-refusal on benign prompts,
    each with its 95% interval and a paired test."""
    from cai.constitution import load_constitution
    from cai.evaluation.policy import evaluate_policy
    from cai.generators.queries import load_seed_queries

    fb = feedback_config(feedback, feedback_backend, feedback_model, feedback_option)
    (m,) = _policies([model], "--model", model_backend, model_option)
    (b,) = _policies([baseline], "--baseline", model_backend, model_option)
    c = load_constitution(constitution)
    qs = load_seed_queries(prompts)[:limit]
    with library_output(_log_dir(out_json)):
        result = evaluate_policy(
            m, b, [q.messages for q in qs], c, fb, principles, max_new_tokens, seed, benign_prompts(benign),
            samples=samples, temperature=temperature, max_failures=max_failures,
        )  # fmt: skip
    emit(result, as_json, out_json, policy_tables)


@app.command("character")
def eval_character(
    model: Annotated[
        str, typer.Option("--model", help="The trained policy: path, hub id, served name or backend-config YAML.")
    ],
    baseline: Annotated[str, typer.Option("--baseline", help="The policy to compare against, e.g. `default`.")],
    constitution: Annotated[str, typer.Option(help="A character constitution (with traits).")] = "character",
    prompts: Annotated[
        Path | None,
        typer.Option(
            help="Held-out trait prompts: a run's datasets/ folder or a JSONL file; default: each trait's questions."
        ),
    ] = None,
    model_backend: ModelBackendOpt = None,
    model_option: ModelOptionOpt = None,
    feedback: FeedbackOpt = None,
    feedback_backend: FeedbackBackendOpt = None,
    feedback_model: FeedbackModelOpt = None,
    feedback_option: FeedbackOptionOpt = None,
    benign: BenignOpt = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N prompts.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
    samples: SamplesOpt = 1,
    temperature: TemperatureOpt = 0.0,
    max_failures: MaxFailuresOpt = 0.1,
    seed: int = 0,
    as_json: JsonOpt = False,
    out_json: OutJsonOpt = None,
) -> None:
    """Per-trait win rate of --model over --baseline, over-refusal on benign prompts, and leaks,
    each with its 95% interval and a paired test."""
    from cai.constitution import load_constitution
    from cai.evaluation.character import evaluate_character, trait_queries

    fb = feedback_config(feedback, feedback_backend, feedback_model, feedback_option)
    (m,) = _policies([model], "--model", model_backend, model_option)
    (b,) = _policies([baseline], "--baseline", model_backend, model_option)
    c = load_constitution(constitution)
    items = trait_queries(c, prompts, limit)
    with library_output(_log_dir(out_json)):
        result = evaluate_character(
            m, b, c, items, fb, max_new_tokens, seed, benign_prompts(benign),
            samples=samples, temperature=temperature, max_failures=max_failures,
        )  # fmt: skip
    emit(result, as_json, out_json, character_tables)


@app.command("frontier", context_settings={"allow_extra_args": True})
def eval_frontier(
    ctx: typer.Context,
    models: Annotated[
        list[str],
        typer.Option(
            "--models",
            help="Checkpoints in training order (paths, hub ids, served names or backend-config YAML files): "
            "--models A B C. The first is the reference.",
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
    model_backend: ModelBackendOpt = None,
    model_option: ModelOptionOpt = None,
    feedback: FeedbackOpt = None,
    feedback_backend: FeedbackBackendOpt = None,
    feedback_model: FeedbackModelOpt = None,
    feedback_option: FeedbackOptionOpt = None,
    principles: Annotated[int, typer.Option(min=1, help="Principles per answer or pair.")] = 2,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N red-team and N benign prompts.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
    samples: SamplesOpt = 1,
    temperature: TemperatureOpt = 0.0,
    max_failures: MaxFailuresOpt = 0.1,
    seed: int = 0,
    plot: Annotated[Path | None, typer.Option(help="Also write the frontier plot here (PNG).")] = None,
    as_json: JsonOpt = False,
    out_json: OutJsonOpt = None,
) -> None:
    """Per checkpoint: harmful compliance on red-team prompts, over-refusal and helpfulness on benign
    ones, each with its 95% interval, and each checkpoint against the first by paired tests."""
    import base64

    from cai.constitution import load_constitution
    from cai.evaluation.frontier import evaluate_frontier, helpful_principles, red_team_prompts
    from cai.evaluation.policy import benign_chats

    extra = list(ctx.args)
    if any(a.startswith("-") for a in extra):
        raise UserError(f"{extra[0]}: unknown option")
    policies = _policies([*models, *extra], "--models", model_backend, model_option)
    fb = feedback_config(feedback, feedback_backend, feedback_model, feedback_option)
    if constitution is None:
        run_constitution = red_team / "constitution.yaml"
        constitution = str(run_constitution) if run_constitution.is_file() else "harmless"
    c = load_constitution(constitution)
    helpful = helpful_principles(load_constitution(helpful_constitution), helpful_tag)
    red = red_team_prompts(red_team, limit)
    kind_prompts = benign_prompts(benign) or benign_chats()
    kind_prompts = kind_prompts[:limit]
    with progress("frontier", Console(stderr=True), disable=as_json, remaining=False) as bar:
        task = bar.add_task("frontier", total=2 * len(policies), note="answering")
        with library_output(_log_dir(out_json)):
            result = evaluate_frontier(
                policies, red, kind_prompts, c, helpful, fb, principles, max_new_tokens, seed,
                lambda what: bar.update(task, advance=1, note=what),
                samples=samples, temperature=temperature, max_failures=max_failures,
            )  # fmt: skip
    result["red_team"] = str(red_team)
    result["benign"] = str(benign) if benign is not None else "shipped benign set"
    if plot is not None:
        from cai.report import frontier_plot

        plot.parent.mkdir(parents=True, exist_ok=True)
        plot.write_bytes(base64.b64decode(frontier_plot(result["models"], result["reference"])))
    emit(result, as_json, out_json, frontier_tables)


@app.command("judge")
def eval_judge(
    items: Annotated[
        Path,
        typer.Option(
            "--items",
            help="Multiple-choice items: the CAI paper's classification JSONL (HarmfulVsEthical, "
            "HarmfulnessClassification) or {messages|prompt, question, options, answer} rows (.gz ok).",
        ),
    ],
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N usable items.")] = None,
    orders: Annotated[
        int | None,
        typer.Option(
            min=1, help="Option orders (rotations) per item; default: every rotation up to 4, evenly spaced past it."
        ),
    ] = None,
    feedback: FeedbackOpt = None,
    feedback_backend: FeedbackBackendOpt = None,
    feedback_model: FeedbackModelOpt = None,
    feedback_option: FeedbackOptionOpt = None,
    max_failures: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Exit 1 when a larger share of the items fails to read.")
    ] = 0.1,
    seed: Annotated[int, typer.Option(help="Seeds the rotations' start (past 4 options) and tie-breaks.")] = 0,
    as_json: JsonOpt = False,
    out_json: OutJsonOpt = None,
) -> None:
    """Accuracy of the feedback model as a judge of conversations, on multiple-choice items."""
    import sys
    import time

    from cai.core.errors import RunFailed
    from cai.critique.reading import reading_mode
    from cai.evaluation.judgement import item_to_json, judge_items, read_items, summarise
    from cai.generators import load_backend
    from cai.tables import judge_tables

    fb = feedback_config(feedback, feedback_backend, feedback_model, feedback_option)
    read = read_items(items, limit)
    if read.skipped:
        typer.echo(f"{items}: {read.summary()}", err=True)
    start = time.perf_counter()
    results = []
    console = Console(file=sys.stderr)  # the terminal's, before library output is sent to the log
    with progress("judge", console, disable=as_json) as bar, library_output(_log_dir(out_json)):
        task = bar.add_task("judge", total=len(read.items), note="")
        b = load_backend(fb)
        try:
            reading = reading_mode(b)
            for i in range(0, len(read.items), 16):
                batch = read.items[i : i + 16]
                results += judge_items(b, batch, orders, seed, reading)
                bar.update(task, advance=len(batch), note=f"{sum(r.error is not None for r in results)} failed")
        finally:
            b.close()
    summary = summarise(results)
    total = summary["items"]
    if summary["failures"] / total > max_failures:
        raise RunFailed(
            f"{items}: {summary['failures']} of {total} items failed to read (more than --max-failures "
            f"{max_failures:g}); first: {summary['first_error']}"
        )
    result = {
        "kind": "judge",
        "items_file": str(items),
        "orders": orders,  # None: every rotation up to DEFAULT_ORDERS
        "orders_used": sorted({len(r.readings) for r in results}),
        "seed": seed,
        "feedback": {"backend": fb.backend, "model": fb.model, "reading": reading},
        "skipped": len(read.skipped),
        "skipped_reasons": read.reasons(),
        "seconds": round(time.perf_counter() - start, 1),
        **summary,
        "per_item": [item_to_json(r) for r in results],
    }
    emit(result, as_json, out_json, judge_tables)


def _models(ctx: typer.Context, models: list[str], backend: str | None, options: list[str] | None) -> list:
    """`--models A B C`: the first name is the option's, the rest arrive as extra arguments."""
    extra = list(ctx.args)
    if any(a.startswith("-") for a in extra):
        raise UserError(f"{extra[0]}: unknown option")
    return _policies([*models, *extra], "--models", backend, options)


ModelsOpt = Annotated[
    list[str],
    typer.Option(
        "--models",
        help="The models to evaluate (paths, hub ids, served names or backend-config YAML files): --models A B. "
        "Every model after the first is compared with it.",
    ),
]


@app.command("behaviour", context_settings={"allow_extra_args": True})
def eval_behaviour(
    ctx: typer.Context,
    models: ModelsOpt,
    suite: Annotated[
        str | None,
        typer.Option(
            help="A shipped suite (sycophancy, even-handedness, evasiveness) or a suite file (.yaml) of the same shape."
        ),
    ] = None,
    prompts: Annotated[
        Path | None,
        typer.Option(help="Your own prompts (.txt one a line, or .jsonl), scored with --pattern or --question."),
    ] = None,
    pattern: Annotated[
        str | None, typer.Option(help="With --prompts: the share of answers this regex matches (searched anywhere).")
    ] = None,
    question: Annotated[
        str | None,
        typer.Option(help="With --prompts: the share of answers the feedback model says yes to this question about."),
    ] = None,
    model_backend: ModelBackendOpt = None,
    model_option: ModelOptionOpt = None,
    feedback: FeedbackOpt = None,
    feedback_backend: FeedbackBackendOpt = None,
    feedback_model: FeedbackModelOpt = None,
    feedback_option: FeedbackOptionOpt = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N items.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
    samples: SamplesOpt = 1,
    temperature: TemperatureOpt = 0.0,
    max_failures: MaxFailuresOpt = 0.1,
    seed: int = 0,
    as_json: JsonOpt = False,
    out_json: OutJsonOpt = None,
) -> None:
    """Sycophancy, even-handedness, evasiveness, or your own check: each rate per model with its 95%
    interval and n, every model after the first compared with it by paired tests."""
    from cai.evaluation.behaviour import compile_pattern, evaluate_behaviour, load_suite
    from cai.tables import behaviour_tables

    if suite is not None and prompts is not None:
        raise UserError("--suite and --prompts: give one of them")
    if suite is None and prompts is None:
        raise UserError("give --suite NAME (or a suite file), or --prompts FILE with --pattern or --question")
    if prompts is not None and (pattern is None) == (question is None):
        raise UserError("--prompts: give --pattern REGEX or --question TEXT (one of them)")
    if prompts is None and (pattern is not None or question is not None):
        raise UserError(f"{'--pattern' if pattern is not None else '--question'}: only with --prompts")
    if pattern is not None:
        compile_pattern(pattern)
    policies = _models(ctx, models, model_backend, model_option)
    fb = feedback_config(feedback, feedback_backend, feedback_model, feedback_option)
    loaded, source, chats = None, None, None
    if suite is not None:
        loaded, source = load_suite(suite)
    else:
        chats = benign_prompts(prompts)
    with progress("behaviour", Console(stderr=True), disable=as_json, remaining=False) as bar:
        task = bar.add_task("behaviour", total=None, note="answering")
        with library_output(_log_dir(out_json)):
            result = evaluate_behaviour(
                policies, loaded, chats, pattern, question, fb, max_new_tokens, seed, samples, temperature,
                max_failures, limit, lambda what: bar.update(task, note=what),
            )  # fmt: skip
    result["suite_file"] = source if source is not None else str(prompts)
    emit(result, as_json, out_json, behaviour_tables)


@app.command("critiques", context_settings={"allow_extra_args": True})
def eval_critiques(
    ctx: typer.Context,
    models: ModelsOpt,
    items: Annotated[
        Path | None,
        typer.Option(
            "--items",
            help="Planted-flaw items (YAML: prompt or messages, clean, flawed, principle); default: the shipped set.",
        ),
    ] = None,
    constitution: Annotated[
        str | None,
        typer.Option(help="Principle file or shipped name whose critique requests are asked; default: the set's."),
    ] = None,
    plant: Annotated[
        bool,
        typer.Option(
            help="Also have the feedback model plant a flaw in each clean answer, under the item's principle."
        ),
    ] = True,
    judge: Annotated[
        Literal["self", "feedback"],
        typer.Option(
            help="Who the pointwise judge is: each critic itself (the gap is what it knows but does not say) "
            "or the feedback model."
        ),
    ] = "self",
    few_shot: Annotated[
        int, typer.Option(min=0, help="Worked examples before each critique request, as in a run.")
    ] = 2,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Most new tokens of a critique, as in a run.")] = 96,
    model_backend: ModelBackendOpt = None,
    model_option: ModelOptionOpt = None,
    feedback: FeedbackOpt = None,
    feedback_backend: FeedbackBackendOpt = None,
    feedback_model: FeedbackModelOpt = None,
    feedback_option: FeedbackOptionOpt = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N items.")] = None,
    samples: SamplesOpt = 1,
    temperature: TemperatureOpt = 0.0,
    max_failures: MaxFailuresOpt = 0.1,
    seed: int = 0,
    as_json: JsonOpt = False,
    out_json: OutJsonOpt = None,
) -> None:
    """Critiques of answers with a planted flaw and of the same answers without it: detection, nitpick
    rate and the gap to the pointwise judge, per principle, each with its 95% interval and n."""
    from cai.constitution import load_constitution
    from cai.evaluation.critiques import evaluate_critiques, load_flaws
    from cai.tables import critique_tables

    policies = _models(ctx, models, model_backend, model_option)
    fb = feedback_config(feedback, feedback_backend, feedback_model, feedback_option)
    loaded = load_flaws(items)
    c = load_constitution(constitution or loaded.flaws.constitution or "harmless")
    loaded.principles(c)
    with progress("critiques", Console(stderr=True), disable=as_json, remaining=False) as bar:
        task = bar.add_task("critiques", total=None, note="planting" if plant else "critiquing")
        with library_output(_log_dir(out_json)):
            result = evaluate_critiques(
                policies, loaded, c, fb, plant, judge, few_shot, max_new_tokens, seed, samples, temperature,
                max_failures, limit, lambda what: bar.update(task, note=what),
            )  # fmt: skip
    emit(result, as_json, out_json, critique_tables)
