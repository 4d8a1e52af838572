"""`cai review RUN`: a page that shows people a run's AI-ranked pairs one at a time and records
their verdicts, on the studio's server machinery (the same token guard, headers and errors).

The page is driven by the keyboard (a person reviews hundreds in a sitting) and holds no state of
its own: the server says which pair is up (the first of the sample this reviewer has no standing
verdict on), so a reload, a second tab or a restarted server all continue at the same place.
"""

from __future__ import annotations

import secrets
import threading
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from cai.constitution import load_constitution
from cai.core.errors import UserError
from cai.core.ids import derive_seed
from cai.critique.rank import ranking_principles
from cai.critique.records import Comparison
from cai.reader import RunReader
from cai.review import PairKey, Review, ReviewFile, draw_sample, now, standing

from .app import PAGE_HEADERS, STATIC, _validation_message
from .document import StudioError
from .guard import Guard, cookie_name

Choice = Literal["left", "right", "cant_tell"]


class ReviewSession:
    """One reviewer's pass over a run's sample: what the review page shows and records."""

    def __init__(self, run_dir: Path, reviewer: str, size: int = 200):
        self.run = RunReader(run_dir)
        self.reviewer = reviewer
        self.file = ReviewFile(self.run.root)
        self.seed = self.run.config.seed
        texts = self.run.texts()
        try:
            keys = [
                PairKey(c.id, tuple(c.principle_ids), c.p_chosen)
                for c in self.run.records("comparisons")
                if c.first_id in texts and c.second_id in texts
            ]
            if not keys:
                raise UserError(f"{self.run.root}: no ranked pairs to review (comparisons.jsonl is empty or missing)")
            self.sample = draw_sample(keys, self.seed, size)
            wanted = set(self.sample)
            self.pairs: dict[str, Comparison] = {c.id: c for c in self.run.records("comparisons") if c.id in wanted}
            self.texts = {t: texts[t] for c in self.pairs.values() for t in (c.first_id, c.second_id)}
        finally:
            texts.close()
        asked = {c.query_id for c in self.pairs.values()}
        self.queries = {
            q.id: q.messages for stage in ("queries", "turns") for q in self.run.records(stage) if q.id in asked
        }
        self.questions = _questions(self.run)
        self._lock = threading.Lock()
        mine = [r for r in self.file.read() if r.reviewer == reviewer]
        self.verdicts = {pid: r for (_, pid), r in standing(mine).items()}

    def shown(self, pair_id: str) -> tuple[str, str]:
        c = self.pairs[pair_id]
        flip = derive_seed(self.seed, "review-side", pair_id) % 2
        return (c.second_id, c.first_id) if flip else (c.first_id, c.second_id)

    def current(self) -> str | None:
        return next((pid for pid in self.sample if pid not in self.verdicts), None)

    def item(self, pair_id: str) -> dict:
        """A pair as the page shows it: the conversation, the questions it was ranked under, the two
        answers on their sides. Not its label, its p_chosen, its kind nor the answers' ids (whose
        prefixes tell a revision from a sample): nothing that leans."""
        c = self.pairs[pair_id]
        left, right = self.shown(pair_id)
        return {
            "index": self.sample.index(pair_id),
            "pair_id": pair_id,
            "conversation": self.queries.get(c.query_id, [{"role": "user", "content": f"(query {c.query_id})"}]),
            "principles": [{"id": p, "question": self.questions.get(p, "")} for p in c.principle_ids],
            "left": self.texts[left],
            "right": self.texts[right],
        }

    def state(self) -> dict:
        pid = self.current()
        done = [self.verdicts[p] for p in self.sample if p in self.verdicts]
        return {
            "run": str(self.run.root),
            "reviewer": self.reviewer,
            "size": len(self.sample),
            "done": len(done),
            "cant_tell": sum(r.verdict == "cant_tell" for r in done),
            "can_undo": bool(self.verdicts),
            "item": self.item(pid) if pid is not None else None,
        }

    def decide(self, pair_id: str, choice: Choice) -> dict:
        """Record a verdict on the pair now up. The page names the side; the record, the answer's id."""
        with self._lock:
            if pair_id != self.current():
                raise StudioError(409, "that pair is not the one up for review now (reviewed in another tab?)")
            shown = self.shown(pair_id)
            preferred_id = {"left": shown[0], "right": shown[1]}.get(choice)
            verdict = "cant_tell" if preferred_id is None else "preferred"
            review = Review(
                pair_id=pair_id,
                verdict=verdict,
                preferred_id=preferred_id,
                shown=shown,
                reviewer=self.reviewer,
                time=now(),
            )
            self.file.append(review)
            self.verdicts[pair_id] = review
            return self.state()

    def undo(self) -> dict:
        """Take back this reviewer's last standing verdict: its pair is up for review again."""
        with self._lock:
            if not self.verdicts:
                raise StudioError(409, "nothing to undo")
            pid, last = next(reversed(self.verdicts.items()))
            self.file.append(last.model_copy(update={"verdict": "undone", "preferred_id": None, "time": now()}))
            del self.verdicts[pid]
            return self.state()


def _questions(run: RunReader) -> dict[str, str]:
    """Principle and trait id → the question its pairs were ranked under (the run's frozen constitution)."""
    out: dict[str, str] = {}
    ranking = run.config.comparisons.constitution
    for c in (run.constitution, *_loaded(ranking)):
        out |= {p.id: p.comparison or "" for p in ranking_principles(c)}
    return out


def _loaded(path: str | None) -> list:
    """The ranking constitution where the run ranked under its own file, if it is still there to read."""
    if not path:
        return []
    try:
        return [load_constitution(path)]
    except (UserError, OSError, ValueError):
        return []


class VerdictBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pair_id: str = Field(max_length=200)
    choice: Choice


def create_review_app(session: ReviewSession, port: int, secret: str) -> FastAPI:
    app = FastAPI(title="cai review", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(StudioError)
    async def _refused(_: Request, e: StudioError):
        return JSONResponse({"error": e.message}, status_code=e.status)

    @app.exception_handler(UserError)
    async def _disk(_: Request, e: UserError):  # the review file cannot be written (disk full, read-only)
        return JSONResponse({"error": str(e)}, status_code=507)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_: Request, e: RequestValidationError):
        status, message = _validation_message(e)
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, e: HTTPException):
        return JSONResponse({"error": str(e.detail)}, status_code=e.status_code, headers=e.headers)

    @app.get("/", response_class=HTMLResponse)
    async def index(token: str | None = None):
        page = HTMLResponse((STATIC / "review.html").read_text(encoding="utf-8"))
        page.headers.update(PAGE_HEADERS)
        if token is not None and secrets.compare_digest(token.encode(), secret.encode()):  # as the studio's page
            page.set_cookie(cookie_name(port), token, httponly=True, samesite="strict", path="/")
        return page

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/review")
    def state():
        return session.state()

    @app.post("/api/review/verdict")
    def verdict(body: VerdictBody):
        return session.decide(body.pair_id, body.choice)

    @app.post("/api/review/undo")
    def undo():
        return session.undo()

    return app


def guarded_review(session: ReviewSession, host: str, port: int, token: str) -> Guard:
    """The review app behind the studio's token, host, content-type and size checks."""
    return Guard(create_review_app(session, port, token), host, port, token)
