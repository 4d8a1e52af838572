"""`cai studio FILE`: check the arguments, bind the socket, print the URL, serve until Ctrl-C."""

from __future__ import annotations

import ipaddress
import secrets
import socket
import sys
from pathlib import Path
from typing import Annotated

import typer

from cai.core.errors import UserError

from .document import SUFFIXES


def _file(file: Path) -> Path:
    if file.suffix.lower() not in SUFFIXES:
        from cai.constitution import library_path

        shipped = library_path(str(file))
        hint = f"; to edit the shipped one, copy {shipped} first" if shipped else ""
        raise UserError(f"{file}: expected a {', '.join(SUFFIXES)} file{hint}")
    if file.exists() and not file.is_file():
        raise UserError(f"{file}: not a file")
    if not file.parent.resolve().is_dir():
        raise UserError(f"{file}: folder {file.parent} does not exist")
    return file


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free one); UserError if that cannot be had."""
    try:
        family = socket.AF_INET6 if isinstance(ipaddress.ip_address(host.strip("[]")), ipaddress.IPv6Address) else 0
    except ValueError:
        family = 0
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, family or socket.AF_UNSPEC, socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UserError(f"--host {host}: cannot resolve it ({e.strerror})") from None
    fam, _, _, _, addr = infos[0]
    sock = socket.socket(fam, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        what = "is in use; pick another with --port" if e.errno == 98 else f"cannot be bound ({e.strerror})"
        raise UserError(f"{host}:{port} {what}") from None
    sock.listen(64)
    return sock


def url_of(host: str, port: int, token: str) -> str:
    shown = host
    if host in ("0.0.0.0", "::"):
        shown = socket.gethostname()
    elif ":" in host and not host.startswith("["):
        shown = f"[{host}]"
    return f"http://{shown}:{port}/?token={token}"


def studio(
    file: Annotated[Path, typer.Argument(help="The principle file to edit (YAML or JSON; it may not exist yet).")],
    feedback: Annotated[
        Path | None,
        typer.Option(help="The feedback model for ranking: a backend config YAML or a run config (default: embedded)."),
    ] = None,
    pairs: Annotated[Path | None, typer.Option(help="Answer pairs for 'compare with saved' (JSONL).")] = None,
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on; 0 picks a free one.")] = 8765,
    host: Annotated[
        str,
        typer.Option(help="Address to listen on (default: loopback only). Every request needs the URL's token."),
    ] = "127.0.0.1",
    open_browser: Annotated[bool, typer.Option("--open/--no-open", help="Open the page in a browser.")] = True,
    limit: Annotated[int | None, typer.Option(min=1, help="Compare on the first N pairs of --pairs.")] = 32,
    max_new_tokens: Annotated[int, typer.Option(min=8, help="Longest answer, critique or revision in a try.")] = 160,
) -> None:
    """A local web page to edit a principle file: live lint, principles, try, compare with saved, diff.

    It prints (and opens) a URL carrying a token; it refuses every request without that token."""
    try:
        import fastapi  # noqa: F401
        import ruamel.yaml  # noqa: F401
        import uvicorn
    except ModuleNotFoundError as e:
        raise UserError(f"cai studio needs {e.name}: pip install 'cai[studio]'") from None

    from cai.cli.options import feedback_config
    from cai.generators import BackendConfig

    from .app import Studio, guarded
    from .models import Models

    file = _file(file)
    if pairs is not None and not pairs.is_file():
        raise UserError(f"--pairs: {pairs}: file not found")
    fb = feedback_config(feedback) if feedback is not None else None
    sock = bind(host, port)
    port = sock.getsockname()[1]
    token = secrets.token_urlsafe(24)  # other users of this machine can reach loopback too
    models = Models(BackendConfig(), fb)
    jobs = _jobs(max_new_tokens, limit)
    s = Studio(file=file, host=host, port=port, token=token, pairs=pairs, models=models, jobs=jobs)
    url = url_of(host, port, token)
    typer.echo(f"cai studio: editing {file} at {url}  (Ctrl-C stops)")
    sys.stdout.flush()
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    server = uvicorn.Server(uvicorn.Config(guarded(s), log_level="warning", lifespan="off", access_log=False))
    try:
        server.run(sockets=[sock])
    finally:
        models.close()
        sock.close()


def _jobs(max_new_tokens: int, limit: int | None) -> dict:
    from . import jobs

    return jobs.available(max_new_tokens, limit)
