"""`cai eval ...` and `cai report`: is the AI feedback right, and what did a run produce?"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cai.constitution.errors import UserError

console = Console()

# -- evaluation and reports ----------------------------------------------------------------

eval_app = typer.Typer(
    help="Evaluate the labeler, a reward model, a trained policy or a character.", no_args_is_help=True
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

    from cai.constitution import load_constitution
    from cai.evaluation.labeler import label_pairs, readings_to_json, summarise
    from cai.evaluation.pairs import load_pairs
    from cai.generators import BackendConfig, load_backend

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
        for k in (
            "agreement",
            "order_consistency",
            "position_bias",
            "ece",
            "mean_p_chosen",
            "readings",
            "skipped",
            "errors",
            "seconds",
        ):
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
    from cai.evaluation.pairs import load_pairs
    from cai.evaluation.reward_model import evaluate_reward_model

    if not model.is_dir():
        raise UserError(f"--model: {model}: not a model directory")
    data, skipped = load_pairs(pairs, limit)
    result = {
        "kind": "reward-model",
        "model": str(model),
        "pairs_file": str(pairs),
        "skipped": skipped,
        **evaluate_reward_model(str(model), data),
    }

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
    prompts: Annotated[
        Path,
        typer.Option("--prompts", help="Prompts: .txt (one a line) or .jsonl (text/messages/prompt, HH transcripts)."),
    ],
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
    from cai.constitution import load_constitution
    from cai.evaluation.policy import evaluate_policy
    from cai.generators.queries import load_seed_queries

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
        typer.Option(help="Held-out trait prompts (a run's test_prompts.jsonl); default: the traits' seed questions."),
    ] = None,
    feedback: Annotated[str, typer.Option(help="Feedback model for win rates and the refusal check.")] = "default",
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N prompts.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
    seed: int = 0,
    as_json: JsonOpt = False,
    out_json: OutJsonOpt = None,
) -> None:
    """Per-trait win rate of --model over --baseline, over-refusal on benign prompts, and leaks."""
    from cai.constitution import load_constitution
    from cai.evaluation.character import evaluate_character, trait_queries

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
    u.add_row(
        "over-refusal on benign prompts",
        _fmt(r["over_refusal"]["model"]["refusal_rate"]),
        _fmt(r["over_refusal"]["baseline"]["refusal_rate"]),
    )
    u.add_row("answers that leak the character", _fmt(r["leak_rate"]["model"]), _fmt(r["leak_rate"]["baseline"]))
    yield u


# -- end of evaluation and reports ---------------------------------------------------------
