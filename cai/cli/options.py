"""Options shared by several commands, and the helpers that turn them into configs.

One name means one thing everywhere: `--model` is the model a command answers with or
evaluates (a policy, a reward model); the model that ranks and judges is the feedback model,
`--feedback FILE` or `--feedback-backend/--feedback-model/--feedback-option`, in every command
that has one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console

from cai.core.errors import UserError

console = Console()

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
OutJsonOpt = Annotated[
    Path | None,
    typer.Option("--out-json", help="Also write the results here (e.g. RUN_DIR/eval-labeler.json for `cai report`)."),
]
SeedOpt = Annotated[int, typer.Option(help="Seeds every sampled choice.")]
MethodOpt = Annotated[Literal["logprob", "cot"], typer.Option(help="Read letter log-probs, or argue first (CoT).")]
PairsOpt = Annotated[
    Path,
    typer.Option("--pairs", help="Labelled pairs: HH-RLHF, TRL preference or CAI multiple-choice JSONL (.gz ok)."),
]
ConstitutionArg = Annotated[str, typer.Argument(help="A principle file, or a shipped name (harmless, hhh, character).")]
CacheOpt = Annotated[
    Path | None, typer.Option("--cache", help="Reading cache folder (default: the user's cache, cai/readings).")
]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Read every pair afresh and store nothing.")]
BenignOpt = Annotated[
    Path | None,
    typer.Option(help="Over-refusal prompts (.txt one a line, or .jsonl); default: the benign set shipped with cai."),
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
    str | None,
    typer.Option("--feedback-model", help="Feedback model: `default`, a hub id, a local path or a served name."),
]
FeedbackOptionOpt = Annotated[
    list[str] | None, typer.Option("--feedback-option", help="Feedback backend option key=value (repeatable).")
]


def key_values(items: list[str] | None, flag: str) -> dict:
    """`key=value` backend options; values read as JSON where they parse (8, true, [1, 2])."""
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


def _backend_file(path: Path, flag: str, role: str):
    """A backend config file, or a run config whose `role` model is meant."""
    from cai.core.files import read_structured, validate_model
    from cai.generators import BackendConfig

    if not path.is_file():
        raise UserError(f"{flag}: {path}: file not found")
    data, node = read_structured(path)
    if isinstance(data, dict) and "constitution" in data:
        from cai.config import RunConfig

        run = validate_model(RunConfig, data, node, str(path))
        return run.feedback_backend if role == "feedback" else run.policy
    return validate_model(BackendConfig, data, node, str(path))


def feedback_config(
    config: Path | None, backend: str | None = None, model: str | None = None, options: list[str] | None = None
):
    """The feedback model's backend config: `--feedback FILE`, then the `--feedback-*` fields over it."""
    from cai.generators import BackendConfig, backend_names

    fb = _backend_file(config, "--feedback", "feedback") if config is not None else BackendConfig()
    update: dict = {k: v for k, v in (("backend", backend), ("model", model)) if v is not None}
    if options:
        update["options"] = {**fb.options, **key_values(options, "--feedback-option")}
    fb = BackendConfig.model_validate({"backend": fb.backend, "model": fb.model, "options": fb.options} | update)
    if fb.backend not in backend_names():
        where = "--feedback-backend" if backend is not None else f"{config}: backend"
        raise UserError(f"{where}: unknown backend {fb.backend!r}; choose one of {', '.join(backend_names())}")
    return fb


def policy_config(policy: Path | None, feedback: Path | None, fb):
    """The policy's backend config: `--policy` (a backend or run config), a run config given as
    `--feedback` (its policy), or the feedback model itself."""
    if policy is not None:
        return _backend_file(policy, "--policy", "policy")
    if feedback is not None:
        from cai.core.files import read_structured

        data, _ = read_structured(feedback)
        if isinstance(data, dict) and "constitution" in data:
            return _backend_file(feedback, "--feedback", "policy")
    return fb


def shard(value: str | None) -> tuple[int, int]:
    if value is None:
        return (0, 1)
    try:
        i, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise UserError(f"--shard: expected i/N such as 0/4, got {value!r}") from None
    return i, n


def cache_dir(cache: Path | None, no_cache: bool) -> Path | None:
    from cai.generators.default_model import cache_root

    return None if no_cache else cache if cache is not None else cache_root() / "readings"


def benign_prompts(path: Path | None) -> list[list[dict]] | None:
    from cai.generators.queries import load_seed_queries

    return None if path is None else [q.messages for q in load_seed_queries(path)]


def emit(result: dict, as_json: bool, out_json: Path | None, tables) -> None:
    """Write the result to --out-json, then print it as JSON or as tables."""
    if out_json is not None:
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if as_json:
        typer.echo(json.dumps({k: v for k, v in result.items() if k != "per_reading"}, indent=2, ensure_ascii=False))
        return
    for t in tables(result):
        console.print(t)
