"""The `cai` command line: a module per command group, mounted here, options shared in `options.py`.

Every mistake a user can make surfaces as `UserError`; `main()` prints its lines to stderr and
exits 2, so no command needs its own try/except and no traceback reaches the user.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from cai.core.errors import UserError
from cai.lock import on_terminate
from cai.logs import VERBOSE
from cai.studio.cli import studio

from . import constitution, evals, model, runs, train
from .review import review

app = typer.Typer(
    help="Constitutional AI: principle files to SFT and preference data, reward models, RL and DPO.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _options(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show libraries' own messages instead of logging them.")
    ] = False,
) -> None:
    """Constitutional AI: principle files to SFT and preference data, reward models, RL and DPO."""
    VERBOSE["on"] = verbose


app.add_typer(runs.app)  # run, generate, status, export, demo, report
app.add_typer(constitution.app, name="constitution")
app.add_typer(model.app, name="model")
app.add_typer(train.app, name="train")
app.add_typer(evals.app, name="eval")
app.command("studio")(studio)
app.command("review")(review)


def main() -> None:
    sys.argv = runs.optional_ray_address(sys.argv)
    try:
        with on_terminate(lambda: typer.echo("terminated", err=True)):  # SIGTERM unwinds: locks released
            app()
    except UserError as e:
        for line in e.problems:
            typer.echo(line, err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
