"""The studio's HTTP side: the page, its static files and a small JSON API.

Every request names the file it is about by a path inside the edited file's folder (default:
the file `cai studio` was started on), so the server keeps no editing state of its own; the
page holds the text and the digest of what it loaded, and a save is refused when the file on
disk no longer has that digest. Errors are JSON bodies `{"error": "one line"}` with a 4xx code.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from . import document as doc
from .guard import Guard, cookie_name

STATIC = Path(str(resources.files("cai.studio") / "static"))
MAX_TEXT = 512 * 1024  # characters of principle file in one request
# Everything the page uses comes from this server: nothing is fetched from elsewhere, and no
# address (with a token in it) is passed on.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


@dataclass
class Studio:
    """What the server was started with. The token is made here unless given: there is no studio without one."""

    file: Path
    host: str = "127.0.0.1"
    port: int = 0
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    pairs: Path | None = None
    models: object | None = None  # cai.studio.models.Models; None: the page offers no model work
    jobs: dict = field(default_factory=dict)  # "try" / "compare" → callables building a job (see jobs.py)

    @property
    def folder(self) -> doc.Folder:
        return doc.Folder.of(self.file)

    def path(self, name: str | None) -> Path:
        return self.folder.resolve(name) if name else self.file.resolve()


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(None, max_length=1024, description="A file in the edited file's folder.")


class TextBody(_Body):
    text: str = Field(max_length=MAX_TEXT)


class SaveBody(TextBody):
    base: str = Field(max_length=64, description="The digest of the file as loaded; empty for a new file.")


class EditBody(TextBody):
    op: Literal["add", "remove", "weight", "up", "down"]
    id: str | None = Field(None, max_length=200)
    value: float | None = None


class TryBody(TextBody):
    message: str = Field(min_length=1, max_length=4000)
    principle: str | None = Field(None, max_length=200)


def _validation_message(err: RequestValidationError) -> tuple[int, str]:
    errors = err.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "request body is not valid JSON"
    parts = []
    for e in errors[:3]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    return 422, "; ".join(parts)


def create_app(studio: Studio) -> FastAPI:
    app = FastAPI(title="cai studio", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.studio = studio

    @app.exception_handler(doc.StudioError)
    async def _studio_error(_: Request, e: doc.StudioError):
        return JSONResponse({"error": e.message}, status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_: Request, e: RequestValidationError):
        status, message = _validation_message(e)
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, e: HTTPException):
        return JSONResponse({"error": str(e.detail)}, status_code=e.status_code, headers=e.headers)

    @app.get("/", response_class=HTMLResponse)
    async def index(token: str | None = None):
        page = HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))
        page.headers.update(PAGE_HEADERS)
        if token is not None and secrets.compare_digest(token.encode(), studio.token.encode()):
            # The page's files and calls then carry the token in a cookie its scripts cannot read and
            # no other site's request gets; its script takes the token out of the address bar. Served
            # here, not behind a redirect: a browser sent from elsewhere drops a strict cookie there.
            page.set_cookie(cookie_name(studio.port), token, httponly=True, samesite="strict", path="/")
        return page

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def name(path: Path) -> str:
        return studio.folder.name(path)

    @app.get("/api/info")
    def info():
        return {
            "file": name(studio.file.resolve()),
            "folder": str(studio.folder.root),
            "pairs": str(studio.pairs) if studio.pairs else None,
            "models": studio.models.describe() if studio.models is not None else None,
            "try": "try" in studio.jobs and studio.models is not None,
            "compare": "compare" in studio.jobs and studio.models is not None and studio.pairs is not None,
            "probes": "probes" in studio.jobs and studio.models is not None,
        }

    @app.get("/api/doc")
    def get_doc(path: str | None = None):
        p = studio.path(path)
        text, base = doc.load(p)
        return {
            "path": name(p),
            "exists": p.exists(),
            "text": text,
            "base": base,
            "json": doc.is_json(p),
            "check": doc.check(text, name(p), doc.is_json(p), p),
        }

    @app.post("/api/lint")
    def lint(body: TextBody):
        p = studio.path(body.path)
        return doc.check(body.text, name(p), doc.is_json(p), p)

    @app.post("/api/diff")
    def diff(body: TextBody):
        p = studio.path(body.path)
        return doc.diff(p, name(p), body.text)

    @app.post("/api/edit")
    def edit(body: EditBody):
        p = studio.path(body.path)
        text = doc.edit(body.text, name(p), doc.is_json(p), body.op, body.id, body.value)
        return {"text": text, "check": doc.check(text, name(p), doc.is_json(p), p)}

    @app.post("/api/save")
    def save(body: SaveBody):
        p = studio.path(body.path)
        return {"path": name(p), **doc.save(p, name(p), body.text, body.base)}

    def job_stream(kind: str, make) -> StreamingResponse:
        if studio.models is None or kind not in studio.jobs:
            raise doc.StudioError(503, f"{kind} is not available in this studio")
        stream = studio.models.stream(make)
        return StreamingResponse(stream, media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    @app.post("/api/try")
    def try_message(body: TryBody):
        p = studio.path(body.path)
        c = doc.validated(body.text, name(p), doc.is_json(p), path=p)
        if body.principle is not None and body.principle not in {x.id for x in c.principles}:
            raise doc.StudioError(422, f"principle: no principle has id {body.principle!r}")
        job = studio.jobs.get("try")
        return job_stream("try", job and (lambda emit: job(studio.models, c, body.message, body.principle, emit)))

    @app.post("/api/compare")
    def compare(body: TextBody):
        p = studio.path(body.path)
        if studio.pairs is None:
            raise doc.StudioError(409, "no pair file: start the studio with --pairs FILE to compare")
        if not p.exists():
            raise doc.StudioError(409, f"{name(p)} is not on disk yet: there is no saved version to compare with")
        new = doc.validated(body.text, name(p), doc.is_json(p), path=p)
        old = doc.validated(doc.load(p)[0], name(p), doc.is_json(p), "the saved file", p)
        job = studio.jobs.get("compare")
        return job_stream("compare", job and (lambda emit: job(studio.models, old, new, studio.pairs, emit)))

    @app.post("/api/probes")
    def probes(body: TextBody):
        p = studio.path(body.path)
        c = doc.with_probes(p, doc.validated(body.text, name(p), doc.is_json(p), path=p))
        if not c.probes:
            raise doc.StudioError(409, "no probes: add `probes:` to the file, or a sibling NAME.probes.yaml")
        job = studio.jobs.get("probes")
        return job_stream("probes", job and (lambda emit: job(studio.models, c, emit)))

    return app


def guarded(studio: Studio) -> Guard:
    """The app behind the token, host, content-type and size checks: what the server runs."""
    return Guard(create_app(studio), studio.host, studio.port, studio.token)
