"""`cai review RUN`: people check a sample of a run's AI labels on a local page, keyboard first;
their verdicts go to RUN/reviews.jsonl and `cai eval labeler --pairs RUN` weighs the labels against them."""

from __future__ import annotations

import getpass
import secrets
import sys
import unicodedata
from pathlib import Path
from typing import Annotated

import typer

from cai.core.errors import UserError

MAX_NAME = 100
MAX_SAMPLE = 10_000  # more than a person reviews; each pair drawn costs a pass over the strata


def reviewer_name(name: str | None) -> str:
    """The name recorded with each verdict: given, or the user's login name."""
    if name is None:
        try:
            name = getpass.getuser()
        except (KeyError, OSError):
            raise UserError("--reviewer: no user name found for this process; give one") from None
    name = name.strip()
    if not name or len(name) > MAX_NAME or any(unicodedata.category(ch).startswith("C") for ch in name):
        raise UserError(f"--reviewer: expected a name of 1 to {MAX_NAME} printable characters, got {name!r}")
    return name


def review(
    run_dir: Annotated[Path, typer.Argument(help="A run directory with ranked pairs (comparisons.jsonl).")],
    reviewer: Annotated[
        str | None, typer.Option(help="Who is reviewing, recorded with each verdict (default: the user name).")
    ] = None,
    sample: Annotated[
        int,
        typer.Option(
            min=1,
            max=MAX_SAMPLE,
            help="Pairs to review, stratified by principle and p_chosen; a larger sample starts with the same pairs.",
        ),
    ] = 200,
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on; 0 picks a free one.")] = 8766,
    host: Annotated[
        str,
        typer.Option(help="Address to listen on (default: loopback only). Every request needs the URL's token."),
    ] = "127.0.0.1",
    open_browser: Annotated[bool, typer.Option("--open/--no-open", help="Open the page in a browser.")] = True,
) -> None:
    """A local page that shows a sample of the run's AI-ranked pairs one at a time, the two replies in
    a random order, and records which one you prefer (or that you can't tell) in RUN/reviews.jsonl.

    Keys: 1 or ← left is better, 2 or → right is better, 0 or space can't tell, u undo the last.
    Stop any time: the page continues where you stopped. Then: cai eval labeler --pairs RUN."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ModuleNotFoundError as e:
        raise UserError(f"cai review needs {e.name}: pip install 'cai[studio]'") from None

    from cai.studio.cli import bind, url_of
    from cai.studio.review import ReviewSession, guarded_review

    name = reviewer_name(reviewer)
    session = ReviewSession(run_dir, name, sample)
    sock = bind(host, port)
    port = sock.getsockname()[1]
    token = secrets.token_urlsafe(24)  # other users of this machine can reach loopback too
    url = url_of(host, port, token)
    s = session.state()
    typer.echo(f"cai review: {run_dir}, {s['done']} of {s['size']} pairs reviewed by {name}, at {url}  (Ctrl-C stops)")
    sys.stdout.flush()
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    app = guarded_review(session, host, port, token)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
