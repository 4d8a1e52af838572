"""Queries: written by the model from the constitution, or read from a seed file.

Generation is one chat per item, with the constitution's examples as earlier turns: even a 135M
model copies the shape of a few worked turns far better than it follows a long instruction.
Each item yields at most one query; items that produce nothing usable are kept as records with
a `dropped` reason so that a resumed run does not retry them and the losses stay visible.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from cai.constitution import Constitution, weighted_sample
from cai.core import layouts
from cai.core.errors import UserError
from cai.core.identity import SELECTS, Source, identity
from cai.core.ids import digest, record_id
from cai.core.stage import StageOutput, Task

from .generation import run_generation
from .records import Query, QueryTarget
from .templates import render
from .types import Chat, Completion, SamplingParams

DEFAULT_INSTRUCTIONS = (
    "You write realistic messages that users send to an AI assistant, for testing how the assistant behaves."
)


class QueryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    per_principle: int = Field(4, ge=0, description="Queries to write for each principle (or trait); 0 = none.")
    seed_file: Annotated[str | None, Source()] = Field(
        None,
        description="Seed queries: .txt, .jsonl (text/messages/prompt) or HH-RLHF transcripts. Each seed query's "
        "id hashes its own text; generated queries do not read the file.",
    )
    few_shot: int = Field(3, ge=0, description="Example queries shown as earlier turns.")
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: int = Field(64, ge=8)
    min_chars: int = Field(12, ge=1)
    max_chars: int = Field(400, ge=20)
    near_duplicate: float = Field(
        0.8, gt=0, le=1, description="Word-set Jaccard at or above which a query is a near duplicate."
    )
    turns: Annotated[int, SELECTS] = Field(
        1,
        ge=1,
        description="User turns per conversation: past the first, the policy answers and then, prompted as the user, "
        "writes the next turn; answers, revisions and comparisons apply to the last one.",
    )


def plan_query_tasks(c: Constitution, cfg: QueryConfig, seed: int) -> Iterator[Task[QueryTarget]]:
    """One task per (principle or trait, index), lazily: a run with --limit plans only what it takes.
    Ids depend on the ids and settings only (a generated query reads no seed file)."""
    settings = identity(cfg)
    targets = [("principle", p.id) for p in c.critique_principles] + [("trait", t.id) for t in c.traits]
    for kind, ident in targets:
        reads = digest(constitution_read(c, kind, ident))  # once per target, not per task
        for i in range(cfg.per_principle):
            tid = record_id("query", kind, ident, i, settings, seed, reads)
            yield Task(tid, QueryTarget(kind, ident, i), [tid])


def constitution_read(c: Constitution, kind: str, ident: str) -> dict:
    """What of the constitution a query for one principle or trait reads (`query_chat`): its focus
    and examples, and the query-writing guide. Editing anything else leaves its id alone."""
    guide = c.query_generation.model_dump(mode="json") if c.query_generation else None
    if kind == "trait":
        t = c.trait(ident)
        return {"trait": [t.text, list(t.questions)], "guide": guide}
    p = c.principle(ident)
    return {"focus": p.comparison or p.critique, "guide": guide}


def query_chat(c: Constitution, target: QueryTarget, cfg: QueryConfig, seed_key: str) -> list[dict]:
    guide = c.query_generation
    if target.kind == "trait":
        trait = c.trait(target.id)
        focus = f"whether the assistant shows this trait, without naming it: {trait.text}"
        examples = list(trait.questions) + (list(guide.examples) if guide else [])
    else:
        p = c.principle(target.id)
        focus = p.comparison or p.critique
        examples = list(guide.examples) if guide else []
    topics = list(guide.topics) if guide else []
    topic = weighted_sample(topics, 1, f"{seed_key}/topic", weight=lambda _: 1.0)[0] if topics else None
    shots = weighted_sample(examples, cfg.few_shot, f"{seed_key}/shots", weight=lambda _: 1.0)
    instructions = (guide.instructions if guide and guide.instructions else None) or DEFAULT_INSTRUCTIONS
    chat = [{"role": "system", "content": render("cai.generators", "query_system.jinja", instructions=instructions)}]
    for ex in shots:
        chat += [
            {"role": "user", "content": render("cai.generators", "query_request.jinja", focus=None, topic=None)},
            {"role": "assistant", "content": ex},
        ]
    chat.append({"role": "user", "content": render("cai.generators", "query_request.jinja", focus=focus, topic=topic)})
    return chat


_LABEL = re.compile(r"^\s*(?:\d+[.)]\s*|[-*]\s+|(?:user(?:'s)? message|user|message|request|query)\s*:\s*)", re.I)


def clean_query(raw: str) -> str:
    """Keep the first paragraph; drop a leading label or list marker and wrapping quotes."""
    text = raw.strip()
    text = text.split("\n\n", 1)[0].strip()
    text = _LABEL.sub("", text, count=1).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'“”":
        text = text[1:-1].strip()
    return text.strip("“”").strip()


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9']+", text.lower()))


def jaccard(a: str, b: str) -> float:
    """Word-set overlap: cheap, and enough to tell a copy from a rewrite."""
    wa, wb = _words(a), _words(b)
    return len(wa & wb) / max(1, len(wa | wb))


def _normal(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


class Deduplicator:
    """Exact (normalized) and near-duplicate (word-set Jaccard ≥ threshold) filtering.

    Comparing each query with every earlier one that shares a word is quadratic: common words
    ("how", "i", "a") link almost every pair, and runs reach hundreds of thousands of queries.
    MinHash LSH (datasketch) finds the few earlier queries likely to be that similar in near-
    constant time; each candidate is then checked with the exact Jaccard, so nothing is dropped
    that is not a near duplicate (a rare pair just above the threshold may be missed).
    """

    NUM_PERM = 64

    def __init__(self, threshold: float):
        from datasketch import MinHashLSH

        self.threshold = threshold
        self.exact: dict[str, str] = {}
        self.sets: dict[str, frozenset[str]] = {}
        # the index looks wider than the threshold, so pairs just above it are found; exact Jaccard decides
        self.lsh = MinHashLSH(threshold=max(0.3, threshold - 0.3), num_perm=self.NUM_PERM)

    def _minhash(self, words: frozenset[str]):
        from datasketch import MinHash

        m = MinHash(num_perm=self.NUM_PERM, seed=1)
        m.update_batch([w.encode() for w in sorted(words)])
        return m

    def check(self, qid: str, text: str) -> str | None:
        """Return the id of an earlier duplicate, or None (and remember this query)."""
        norm = _normal(text)
        if norm in self.exact:
            return self.exact[norm]
        words = frozenset(_words(text))
        m = self._minhash(words) if words else None
        if m is not None:
            for other in self.lsh.query(m):
                o = self.sets[other]
                if len(words & o) / max(1, len(words | o)) >= self.threshold:
                    return other
        self.exact[norm] = qid
        if m is not None and qid not in self.sets:
            self.sets[qid] = words
            self.lsh.insert(qid, m)
        return None


@dataclass(frozen=True)
class QueryWriting:
    """The policy writing one user message per task; the driver drops near-duplicates afterwards,
    since it alone holds every query kept so far."""

    c: Constitution
    cfg: QueryConfig

    def params(self) -> SamplingParams:
        cfg = self.cfg
        return SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens)

    def format_input(self, task: Task[QueryTarget]) -> Chat:
        return query_chat(self.c, task.data, self.cfg, task.id)

    def format_output(self, task: Task[QueryTarget], completions: list[Completion]) -> list[Query]:
        (comp,) = completions
        cfg = self.cfg
        text = clean_query(comp.text)
        dropped = None
        if len(text) < cfg.min_chars:
            dropped = "too short"
        elif len(text) > cfg.max_chars or comp.finish_reason == "length" and len(text) > cfg.max_chars // 2:
            dropped = "too long"
        ids = {"principle_ids" if task.data.kind == "principle" else "trait_ids": [task.data.id]}
        query = Query(
            id=task.id,
            messages=[{"role": "user", "content": text}],
            origin="generated",
            raw=comp.text,
            dropped=dropped,
            tokens=comp.tokens,
            **ids,
        )
        return [query]


def run_query_tasks(
    backend, c: Constitution, tasks: list[Task[QueryTarget]], cfg: QueryConfig, seed: int
) -> StageOutput:
    return run_generation(backend, QueryWriting(c, cfg), tasks, seed)


def load_seed_queries(path: str | Path) -> list[Query]:
    """Read seed queries; a bad line stops with an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: seed query file not found")
    opener = gzip.open if path.suffix == ".gz" else open
    name = path.name.removesuffix(".gz")
    queries, seen = [], set()
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or (name.endswith(".txt") and line.startswith("#")):
                continue
            where = f"{path}:{lineno}"
            if name.endswith(".txt"):
                msgs = [{"role": "user", "content": line}]
            else:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{where}: invalid JSON: {e.msg}") from None
                try:
                    msgs = layouts.query(obj)
                except layouts.Malformed as e:
                    raise UserError(f"{where}: {e}") from None
            qid = record_id("query", "seed", msgs)
            if qid not in seen:
                seen.add(qid)
                queries.append(Query(id=qid, messages=msgs, origin="seed"))
    if not queries:
        raise UserError(f"{path}: no queries found")
    return queries
