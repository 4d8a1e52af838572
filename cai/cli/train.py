"""`cai train sft|reward|rl|dpo`: thin commands over one config dataclass per trainer (TRL)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cai.logs import library_output

from .options import console

app = typer.Typer(help="Train on a run's datasets with TRL: sft, reward, rl, dpo.", no_args_is_help=True)

TrainConfigArg = Annotated[Path | None, typer.Argument(help="Training config (YAML); --set can replace it.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="key=value override, e.g. trl.learning_rate=2e-5.")]
ResumeOpt = Annotated[bool, typer.Option(help="Continue from the last checkpoint in output_dir.")]
OutDirOpt = Annotated[str | None, typer.Option(help="Shortcut for --set trl.output_dir=...")]
StepsOpt = Annotated[int | None, typer.Option(help="Shortcut for --set trl.max_steps=...")]


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
    app.command(_kind)(_train_command(_kind, _doc))
