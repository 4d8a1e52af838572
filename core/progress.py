"""The one progress display of cai: a labelled bar with counts, a free text field, times.

Stages of a run, evals, the constitution workbench and trainers all show long work the same
way; building the layout in each place let five of them drift apart.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def progress(label: str, console: Console | None = None, disable: bool = False, remaining: bool = True) -> Progress:
    """A bar labelled `label`; each task's `note` field is shown beside the counts (tokens, loss, the step)."""
    columns = [TextColumn(f"[bold]{label:<12}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}")]
    columns.append(TimeElapsedColumn())
    if remaining:
        columns.append(TimeRemainingColumn())
    return Progress(*columns, console=console, disable=disable, transient=False)
