"""A training progress bar of ours in place of the trainer's tqdm bar and printed log dicts.

transformers' `ProgressCallback` prints every log as a raw dict between our tables; this one
draws one rich bar with the step, the latest loss (or reward) and the time left, on stdout.
"""

from __future__ import annotations

from rich.progress import Progress
from transformers import TrainerCallback

from cai.core.progress import progress


class RichProgress(TrainerCallback):
    def __init__(self, label: str):
        self.label = label
        self.progress: Progress | None = None
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.progress = progress(self.label)
        self.progress.start()
        self.bar = self.progress.add_task(self.label, total=state.max_steps, note="")

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.bar, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress is None or not logs:
            return
        shown = [f"{k} {logs[k]:.4g}" for k in ("loss", "reward") if isinstance(logs.get(k), (int, float))]
        if shown:
            self.progress.update(self.bar, note=" ".join(shown))

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.bar, completed=state.global_step)
            self.progress.stop()
            self.progress = None


def use_rich_progress(trainer, label: str) -> None:
    """Swap the trainer's own progress/printer callbacks for ours."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(RichProgress(label))
